"""Graphs of the softmax family (softmax, log_softmax, logsumexp) on Dask arrays.

Reduced axes in one chunk: one in-memory call per block, bitwise the
in-memory result. Reduced axes in chunks: a tree reduction of the blocks'
log-sum-exps (in float32 for 16-bit inputs), then ``x - lse`` or
``exp(x - lse)`` per block.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import dask.array as da
import numpy as np

from .. import _normalize
from .._validate import normalize_axes
from . import _blocks as blocks
from ._graph import as_dask, blockwise, indices, meta, zeros
from ._tasks import in_backend

Axis = int | tuple[int, ...] | None


def _checked(x: object, axis: Axis, function: Callable[..., Any]) -> tuple[da.Array, tuple[int, ...], np.dtype]:
    """``x`` as a Dask array, ``axis`` as a tuple, and the result dtype, checked by an in-memory call on a probe."""
    array = as_dask(x)
    result = function(zeros((1,) * array.ndim, array.dtype), axis=axis)
    return array, normalize_axes(axis, array.ndim), np.asarray(result).dtype


def _in_one_chunk(x: da.Array, axes: tuple[int, ...]) -> bool:
    return all(x.numblocks[axis] == 1 for axis in axes)


def _lse(x: da.Array, axes: tuple[int, ...], keepdims: bool, dtype: np.dtype) -> da.Array:
    """The log-sum-exp over ``axes`` split in chunks: a tree reduction of blocks' log-sum-exps."""
    return da.reduction(
        x,
        chunk=in_backend(blocks.lse_block),
        combine=in_backend(blocks.lse_block),
        aggregate=in_backend(partial(blocks.lse_final, dtype=dtype)),
        axis=axes,
        keepdims=keepdims,
        dtype=dtype,
        concatenate=True,
        meta=meta(x.ndim if keepdims else x.ndim - len(axes), dtype),
    )


def normalized(x: object, axis: Axis, log: bool) -> da.Array:
    """The lazy :func:`fastxent.log_softmax` (``log``) or :func:`fastxent.softmax` of ``x`` along ``axis``."""
    function = _normalize.log_softmax if log else _normalize.softmax
    array, axes, dtype = _checked(x, axis, function)
    if _in_one_chunk(array, axes):
        return da.map_blocks(in_backend(partial(function, axis=axis)), array, dtype=dtype, meta=meta(array.ndim, dtype))
    lse = _lse(array, axes, True, blocks.compute_dtype(dtype))
    return da.map_blocks(
        in_backend(partial(blocks.from_lse, log=log, dtype=dtype)),
        array,
        lse,
        dtype=dtype,
        meta=meta(array.ndim, dtype),
    )


def logsumexp(x: object, axis: Axis, keepdims: bool) -> da.Array:
    """The lazy :func:`fastxent.logsumexp` of ``x`` over ``axis``."""
    array, axes, dtype = _checked(x, axis, _normalize.logsumexp)
    if not _in_one_chunk(array, axes):
        return _lse(array, axes, keepdims, dtype)
    ind = indices(array.ndim)
    out = tuple(i for axis_, i in enumerate(ind) if keepdims or axis_ not in axes)
    return blockwise(
        partial(blocks.lse_whole, axis=axes, keepdims=keepdims), out, array, ind,
        adjust_chunks={ind[a]: 1 for a in axes} if keepdims else None, meta=meta(len(out), dtype),
    )  # fmt: skip
