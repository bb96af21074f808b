"""The graph of :func:`fastxent.dask.linear_cross_entropy`: one in-memory call per block of ``hidden``'s rows.

``weight`` (and ``bias``, ``class_weight``) is a single key of the graph, so
each worker receives it once and every task there reuses it.
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np

from .. import _linear
from ._graph import OBJECT, as_dask, blockwise, indices, meta, one_key, options, probe, reduce_partials, zeros
from ._row_blocks import linear_rows


def loss(
    hidden: object,
    weight: object,
    target: object,
    bias: object,
    class_weight: object,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    chunk_rows: int | None,
) -> da.Array:
    """The lazy loss, the arguments checked by an in-memory call on zero rows."""
    if not isinstance(hidden, da.Array):
        array = np.asarray(hidden)
        hidden = da.from_array(array, chunks=tuple(-1 if i == array.ndim - 1 else "auto" for i in range(array.ndim)))
    rows = as_dask(hidden)
    if rows.ndim and rows.numblocks[-1] > 1:
        rows = rows.rechunk({rows.ndim - 1: -1})
    loss_shape = rows.shape[:-1]
    target_array = target if isinstance(target, da.Array) else np.asarray(target)
    if rows.ndim and target_array.dtype.kind in "iu" and target_array.shape != loss_shape:
        raise ValueError(
            f"target must have shape {loss_shape} (hidden's shape {rows.shape} without its last axis); "
            f"got {target_array.shape}"
        )
    n_hidden = rows.shape[-1] if rows.ndim else 0
    checked = _linear.linear_cross_entropy(
        zeros((0, n_hidden) if rows.ndim else (), rows.dtype), probe(weight),  # type: ignore[arg-type]
        zeros((0,), target_array.dtype), probe(bias), class_weight=probe(class_weight),
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,  # type: ignore[arg-type]
        z_loss=z_loss, softcap=softcap, chunk_rows=chunk_rows,  # type: ignore[arg-type]
    )  # fmt: skip
    dtype = np.asarray(checked).dtype
    opts = options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    ind = indices(rows.ndim)
    t_ind = ind[:-1]
    row_chunks = rows.chunks[:-1]
    labels = as_dask(target_array, chunks=row_chunks).rechunk(row_chunks)
    small = [(None, None) if a is None else (a, ("class",)) for a in (one_key(bias), one_key(class_weight))]
    arrays = (rows, ind, one_key(weight), ("class", ind[-1]), labels, t_ind, *small[0], *small[1])
    block = partial(linear_rows, opts=opts, chunk_rows=chunk_rows)
    if opts.reduction == "none" or rows.npartitions == 1:
        out = t_ind if opts.reduction == "none" else ()
        return blockwise(partial(block, partials=False), out, *arrays, meta=meta(len(out), dtype))
    partials = blockwise(
        partial(block, partials=True), t_ind, *arrays,
        adjust_chunks=dict.fromkeys(t_ind, 1), meta=meta(len(t_ind), OBJECT),
    )  # fmt: skip
    return reduce_partials(partials, opts, dtype)
