"""Graph-building pieces that every path of :mod:`fastxent.dask` shares.

Operands as Dask arrays (small ones as one key of the graph), probes that
let an in-memory call check the arguments, block functions as tasks, and
the tree reductions of blocks' :class:`~fastxent._reduction.Partials`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import _blocks as blocks
from ._tasks import Unwrap, in_backend

F64 = np.dtype(np.float64)
OBJECT = np.dtype(object)

#: A blockwise argument: a Dask array and its index names, or a plain value (or None) and None.
Arg = tuple[object, tuple[str, ...] | None]


def indices(ndim: int) -> tuple[str, ...]:
    """``blockwise`` index names of an ``ndim``-dimensional array."""
    return tuple(f"a{axis}" for axis in range(ndim))


def meta(ndim: int, dtype: npt.DTypeLike) -> np.ndarray:
    """An empty array of ``ndim`` dimensions: what Dask needs to know of a block's type."""
    return np.empty((0,) * ndim, dtype=dtype)


def zeros(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """A read-only array of zeros that takes no memory: what argument checks run on."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def as_dask(value: object, chunks: Any = "auto") -> da.Array:
    """A Dask array of ``value``: itself when it is one, else a NumPy array wrapped with ``chunks``."""
    array = value if isinstance(value, da.Array) else da.from_array(np.asarray(value), chunks=chunks)
    if any(math.isnan(size) for size in array.shape):
        raise ValueError(f"arrays of unknown shape {array.shape} are not supported: call compute_chunk_sizes() first")
    return array


def one_key(value: object) -> da.Array | None:
    """A small operand (weights, bias) as a Dask array of one block: one key of the graph, sent once per worker."""
    if value is None:
        return None
    array = as_dask(value, chunks=-1)
    return array if array.npartitions == 1 else array.rechunk(-1)


def probe(value: object) -> np.ndarray | None:
    """What argument checks see of a small operand: the array itself, or zeros of a Dask array's shape."""
    if value is None:
        return None
    if isinstance(value, da.Array):
        return zeros(value.shape, value.dtype)
    return np.asarray(value)


def options(
    ignore_index: object, label_smoothing: object, z_loss: object, softcap: object, reduction: object
) -> blocks.Options:
    """The options, once an in-memory call on a zero-row probe has accepted them."""
    return blocks.Options(
        ignore_index=int(ignore_index),  # type: ignore[call-overload]
        label_smoothing=float(label_smoothing),  # type: ignore[arg-type]
        z_loss=float(z_loss),  # type: ignore[arg-type]
        softcap=None if softcap is None else float(softcap),  # type: ignore[arg-type]
        reduction=reduction,  # type: ignore[arg-type]
    )


def blockwise(func: Any, out_ind: tuple[str, ...], *args: Any, **kwargs: Any) -> da.Array:
    """:func:`dask.array.blockwise` of a block function that gets each contracted axis's single block as is."""
    return da.blockwise(Unwrap(in_backend(func)), out_ind, *args, concatenate=False, **kwargs)


def _tree(partials: da.Array, aggregate: Callable[..., np.ndarray], dtype: np.dtype) -> da.Array:
    """A tree reduction of blocks that hold one :class:`~fastxent._reduction.Partials` each, to a 0-d array."""
    if partials.ndim == 0:
        partials = partials[None]
    return da.reduction(
        partials,
        chunk=in_backend(blocks.keep),
        combine=in_backend(blocks.combine_partials),
        aggregate=in_backend(aggregate),
        axis=tuple(range(partials.ndim)),
        keepdims=False,
        dtype=dtype,
        concatenate=True,
        meta=meta(0, dtype),
    )


def reduce_partials(partials: da.Array, opts: blocks.Options, dtype: np.dtype) -> da.Array:
    """The 0-d ``"mean"`` / ``"sum"`` (``opts.reduction``) of blocks' Partials, finished as the in-memory call."""
    finish = partial(blocks.finish_partials, reduction=opts.reduction, z_loss=opts.z_loss, dtype=dtype)
    return _tree(partials, finish, dtype)


def sum_partials(partials: da.Array) -> da.Array:
    """Blocks' Partials added up into one, held by a 0-d object array."""
    return _tree(partials, blocks.combine_partials, OBJECT)


def split_pair(
    pair: da.Array, kept: tuple[int, ...], first_meta: np.ndarray, first_chunks: Any, second_meta: np.ndarray
) -> tuple[da.Array, da.Array]:
    """Two arrays from blocks that are ``(first, second)`` tuples, so that one task computes both.

    ``second`` has ``pair``'s blocks; ``first``'s are indexed by ``pair``'s
    block index along the axes ``kept`` (the others have a single block).
    """
    token = tokenize(pair.name)
    names = (f"fastxent-loss-{token}", f"fastxent-grad-{token}")
    graphs: tuple[dict[tuple[Any, ...], Any], dict[tuple[Any, ...], Any]] = ({}, {})
    for index in np.ndindex(*pair.numblocks):
        source = (pair.name, *index)
        graphs[0][(names[0], *(index[axis] for axis in kept))] = (operator.getitem, source, 0)
        graphs[1][(names[1], *index)] = (operator.getitem, source, 1)
    first, second = (
        da.Array(
            HighLevelGraph.from_collections(name, graph, dependencies=[pair]),  # type: ignore[arg-type, list-item]
            name,
            chunks,
            meta=meta,
        )
        for name, graph, chunks, meta in zip(names, graphs, (first_chunks, pair.chunks), (first_meta, second_meta))
    )
    return first, second
