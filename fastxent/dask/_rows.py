"""Cross-entropy graphs with the class axis in one chunk: one in-memory call per block of rows.

The logits are never rechunked. ``"none"`` blocks are bitwise the in-memory
result; ``"mean"`` / ``"sum"`` blocks become Partials added by a tree
reduction; a single block is the in-memory call itself.
"""

from __future__ import annotations

from functools import partial

import dask.array as da

from . import _row_blocks as row_blocks
from ._graph import OBJECT, Arg, blockwise, meta, reduce_partials, split_pair
from ._xent_args import XentArgs


def loss(call: XentArgs) -> da.Array:
    """The lazy loss of :func:`fastxent.dask.cross_entropy`."""
    opts, t_ind = call.opts, call.t_ind
    arrays = (call.logits, call.l_ind, call.target, call.target_ind, *call.weight_arg())
    if opts.reduction == "none":
        return blockwise(partial(row_blocks.row_losses, opts=opts), t_ind, *arrays, meta=meta(len(t_ind), call.dtype))
    if call.single_block():
        return blockwise(partial(row_blocks.whole, opts=opts), (), *arrays, meta=meta(0, call.dtype))
    partials = blockwise(
        partial(row_blocks.row_partials, opts=opts, probabilities=call.probabilities, ndim=len(t_ind)),
        t_ind, *arrays, adjust_chunks=call.partials_chunks(), meta=meta(len(t_ind), OBJECT),
    )  # fmt: skip
    return reduce_partials(partials, opts, call.dtype)


def loss_and_grad(call: XentArgs, upstream: Arg, totals: Arg) -> tuple[da.Array, da.Array]:
    """The lazy loss and gradient of :func:`fastxent.dask.cross_entropy_and_grad`: one task per block gives both.

    ``upstream`` and ``totals`` are :meth:`XentArgs.upstream` and :meth:`XentArgs.totals`.
    """
    opts, t_ind, l_ind = call.opts, call.t_ind, call.l_ind
    arrays = (call.logits, l_ind, call.target, call.target_ind, *call.weight_arg())
    grad_meta = meta(call.logits.ndim, call.dtype)
    if call.single_block():
        pair = blockwise(
            partial(row_blocks.whole_loss_and_grad, opts=opts), l_ind, *arrays, *upstream,
            meta=meta(call.logits.ndim, OBJECT),
        )  # fmt: skip
        return split_pair(pair, (), meta(0, call.dtype), (), grad_meta)
    pair = blockwise(
        partial(row_blocks.row_loss_and_grad, opts=opts, probabilities=call.probabilities, ndim=len(t_ind)),
        l_ind, *arrays, *upstream, *totals, meta=meta(call.logits.ndim, OBJECT),
    )  # fmt: skip
    rows = tuple(axis for axis in range(call.logits.ndim) if axis != call.ca)
    row_chunks = tuple(call.logits.chunks[axis] for axis in rows)
    if opts.reduction == "none":
        return split_pair(pair, rows, meta(len(t_ind), call.dtype), row_chunks, grad_meta)
    partials_chunks = tuple((1,) * len(c) for c in row_chunks)
    partials, grad = split_pair(pair, rows, meta(len(t_ind), OBJECT), partials_chunks, grad_meta)
    return reduce_partials(partials, opts, call.dtype), grad
