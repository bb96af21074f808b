"""Dask front-end: fastxent's losses and softmax family on Dask arrays, lazily.

Import it explicitly (``import fastxent.dask``; the ``dask`` extra installs
``dask[array]`` and ``distributed``); ``import fastxent`` never imports Dask.
Every function takes Dask arrays (NumPy arrays are wrapped, small operands
such as ``weight`` become one key of the graph) and returns lazy Dask
arrays: a 0-d array for ``reduction="mean"`` / ``"sum"``.

How the work splits (see ``docs/scaling.md``):

* **Rows in chunks, the class axis in one chunk**: one in-memory fastxent
  call per block of rows, no rechunking of the logits. ``"none"`` and
  ``softmax`` / ``log_softmax`` / ``logsumexp`` are then bitwise the in-memory
  results. ``"mean"`` / ``"sum"`` turn each block into partial sums
  (:class:`fastxent._reduction.Partials`: loss, divisor, squared log-sum-exp,
  valid rows), added up by a tree reduction and finished as the in-memory
  call finishes (the weighted mean, NaN when every target is ignored, the
  z-loss over the valid rows): equal within float rounding, as the blocks'
  sums are added in another order.
* **The class axis in chunks too** (a 128,256-word vocabulary in blocks of
  16,384): a two-stage online log-sum-exp. Each (row block, class block) task
  reduces its block to three float64 numbers per row (the block's
  log-sum-exp, its part of the target weight and of the weighted target
  logit, label smoothing included); a tree reduction over the class blocks
  combines them; the rows' losses follow. The gradient is a second pass over
  the class blocks with each row's log-sum-exp broadcast. Equal to the
  in-memory result within float tolerance (tested: 1e-6 relative for a
  float32 loss, 1e-7 absolute for its gradient).
* ``linear_cross_entropy``: ``hidden`` in blocks of rows, one in-memory
  :func:`fastxent._linear.linear_cross_entropy` call per block; ``weight``
  (and ``bias``, ``class_weight``) is a single key of the graph, so each
  worker receives it once and every task there reuses it.

Backends: the backend chosen where a graph is built (:func:`fastxent.use_backend`,
which holds for its thread only, :func:`fastxent.set_backend` or
``FASTXENT_BACKEND``) goes with every task of the graph, so that Dask's
threads and a cluster's worker processes run it too; a worker that cannot
load it raises :class:`fastxent.BackendUnavailableError`. With ``"auto"``
each worker resolves its own (its ``set_backend``, its ``FASTXENT_BACKEND``,
else ``auto`` by the size of the block). The name is part of the graph's
keys: results computed with different backends never stand in for each other.

Threads: on a ``distributed`` cluster each task's kernel runs one thread per
worker thread. Dask's nanny starts worker processes with
``OMP_NUM_THREADS=1`` (the ``distributed.nanny.pre-spawn-environ`` setting),
which :func:`fastxent.get_num_threads` honours, so a worker with ``t``
threads runs ``t`` tasks of one kernel thread each (no ``t * cores``
oversubscription). In one process (Dask's threaded scheduler, or
``LocalCluster(processes=False)``) fastxent's setting is the process's: call
``fastxent.set_num_threads(1)`` there when Dask runs several tasks at once,
or give Dask one thread and fastxent all of them. Note that the nanny sets
``OMP_NUM_THREADS=1`` in the process that starts a ``LocalCluster`` too, so
fastxent's default there becomes 1 unless it was resolved before (call
``fastxent.set_num_threads(n)`` to be explicit).

Errors in the arguments (dtypes, shapes, options) raise when the graph is
built, with the in-memory functions' messages; out-of-range class indices
raise when the block that holds them is computed, with the position inside
that block.
"""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:  # pragma: no cover - exercised in an environment without Dask
    raise ImportError("fastxent.dask needs Dask: pip install 'fastxent[dask]' (dask[array] and distributed)") from exc

from . import _dask_blocks as blocks
from . import _linear, _normalize, _xent
from ._reduction import Partials
from ._validate import normalize_axes

__all__ = ["cross_entropy", "cross_entropy_and_grad", "linear_cross_entropy", "log_softmax", "logsumexp", "softmax"]

_F64 = np.dtype(np.float64)
_OBJECT = np.dtype(object)
_STATS = "stats"


def _indices(ndim: int) -> tuple[str, ...]:
    return tuple(f"a{axis}" for axis in range(ndim))


def _meta(ndim: int, dtype: npt.DTypeLike) -> np.ndarray:
    return np.empty((0,) * ndim, dtype=dtype)


def _zeros(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """A read-only array of zeros that takes no memory: what argument checks run on."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def _dask(value: object, chunks: Any = "auto") -> da.Array:
    """A Dask array of ``value``: itself when it is one, else a NumPy array wrapped with ``chunks``."""
    array = value if isinstance(value, da.Array) else da.from_array(np.asarray(value), chunks=chunks)
    if any(math.isnan(size) for size in array.shape):
        raise ValueError(f"arrays of unknown shape {array.shape} are not supported: call compute_chunk_sizes() first")
    return array


def _one_key(value: object) -> da.Array | None:
    """A small operand (weights, bias) as a Dask array of one block: one key of the graph, sent once per worker."""
    if value is None:
        return None
    array = _dask(value, chunks=-1)
    return array if array.npartitions == 1 else array.rechunk(-1)


def _probe(value: object) -> np.ndarray | None:
    """What argument checks see of a small operand: the array itself, or zeros of a Dask array's shape."""
    if value is None:
        return None
    if isinstance(value, da.Array):
        return _zeros(value.shape, value.dtype)
    return np.asarray(value)


def _options(
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


def _blockwise(func: Any, out_ind: tuple[str, ...], *args: Any, **kwargs: Any) -> da.Array:
    """:func:`dask.array.blockwise` of a block function that gets each contracted axis's single block as is."""
    return da.blockwise(blocks.Unwrap(blocks.in_backend(func)), out_ind, *args, concatenate=False, **kwargs)


def _reduce_partials(partials: da.Array, opts: blocks.Options, dtype: np.dtype) -> da.Array:
    """The 0-d ``"mean"`` / ``"sum"`` of blocks' :class:`~fastxent._reduction.Partials`, by a tree reduction."""
    if partials.ndim == 0:
        partials = partials[None]
    return da.reduction(
        partials,
        chunk=blocks.in_backend(blocks.keep),
        combine=blocks.in_backend(blocks.combine_partials),
        aggregate=blocks.in_backend(
            partial(blocks.finish_partials, reduction=opts.reduction, z_loss=opts.z_loss, dtype=dtype)
        ),
        axis=tuple(range(partials.ndim)),
        keepdims=False,
        dtype=dtype,
        concatenate=True,
        meta=_meta(0, dtype),
    )


def _split(
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


# ---------------------------------------------------------------------------
# Cross-entropy


class _Xent:
    """A checked cross-entropy call laid out as Dask arrays with matching blocks."""

    def __init__(
        self,
        input: object,
        target: object,
        weight: object,
        ignore_index: object,
        reduction: object,
        label_smoothing: object,
        z_loss: object,
        softcap: object,
    ) -> None:
        if not isinstance(input, da.Array):
            array = np.asarray(input)
            axis = 0 if array.ndim <= 1 else 1
            input = da.from_array(array, chunks=tuple(-1 if i == axis else "auto" for i in range(array.ndim)))
        logits = _dask(input)
        shape = logits.shape
        if logits.ndim == 0:
            raise ValueError("input must have at least 1 dimension (the class axis); got a 0-d array")
        self.ca = ca = 0 if logits.ndim == 1 else 1
        self.n_classes = n_classes = shape[ca]
        index_shape = shape[:1] + shape[2:] if logits.ndim > 1 else ()
        row_chunks = tuple(c for i, c in enumerate(logits.chunks) if i != ca)
        target_array = target if isinstance(target, da.Array) else np.asarray(target)
        kind = target_array.dtype.kind
        self.probabilities = kind == "f" or target_array.dtype.name == "bfloat16"
        expected_shape = shape if self.probabilities else index_shape
        if (kind in "iu" or self.probabilities) and target_array.shape != expected_shape:
            if self.probabilities and target_array.shape == index_shape:
                raise TypeError(
                    f"target of dtype {target_array.dtype} is read as class probabilities, which "
                    f"need the input's shape {shape}; class indices need an integer dtype"
                )
            raise ValueError(
                f"target must have shape {index_shape} (class indices) or {shape} "
                f"(class probabilities) for input of shape {shape}; got {target_array.shape}"
            )
        # An in-memory call on zero rows checks every dtype and option with the usual messages.
        probe_shape = (0, n_classes, *shape[2:])
        probe_target = _zeros(probe_shape if self.probabilities else (0, *shape[2:]), target_array.dtype)
        probe = _xent.cross_entropy(
            _zeros(probe_shape, logits.dtype), probe_target, _probe(weight), ignore_index, reduction,  # type: ignore[arg-type]
            label_smoothing, z_loss=z_loss, softcap=softcap,  # type: ignore[arg-type]
        )  # fmt: skip
        self.dtype = np.asarray(probe).dtype
        self.compute = blocks.compute_dtype(self.dtype)
        self.opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
        self.logits = logits
        self.l_ind = _indices(logits.ndim)
        self.t_ind = tuple(i for axis, i in enumerate(self.l_ind) if axis != ca)
        if self.probabilities:
            self.target = _dask(target_array, chunks=logits.chunks).rechunk(logits.chunks)
            self.target_ind = self.l_ind
        else:
            self.target = _dask(target_array, chunks=row_chunks).rechunk(row_chunks)
            self.target_ind = self.t_ind
        self.weight = _one_key(weight)
        self.class_chunked = logits.numblocks[ca] > 1
        self.loss_shape = index_shape
        self.rows = math.prod(index_shape)

    @property
    def class_index(self) -> str:
        return self.l_ind[self.ca]

    def weight_arg(self) -> tuple[da.Array | None, tuple[str, ...] | None]:
        return (None, None) if self.weight is None else (self.weight, (self.class_index,))

    def block_weight_arg(self) -> tuple[da.Array | None, tuple[str, ...] | None]:
        """The class weights in the class axis's chunks."""
        if self.weight is None:
            return None, None
        return self.weight.rechunk((self.logits.chunks[self.ca],)), (self.class_index,)

    def starts_arg(self) -> tuple[da.Array, tuple[str, ...]]:
        """The first class of each class block, one block each."""
        starts = np.cumsum((0, *self.logits.chunks[self.ca][:-1]))
        return da.from_array(starts, chunks=1), (self.class_index,)

    def single_block(self) -> bool:
        return self.logits.npartitions == 1 and self.target.npartitions == 1

    def partials_chunks(self) -> dict[str, int]:
        return dict.fromkeys(self.t_ind, 1)

    def stats(self) -> tuple[da.Array, da.Array]:
        """Each class block's ``(lse, a, b)`` per row, and each row's over all class blocks.

        The first is the logits' shape with the class axis of one per block,
        the second target-shaped; both with a trailing axis of 3. A task per
        (row block, class block) computes a block's stats; one task per row
        block combines those of all its class blocks.
        """
        per_block = _blockwise(
            partial(blocks.class_stats, opts=self.opts, n_classes=self.n_classes, probabilities=self.probabilities),
            (*self.l_ind, _STATS),
            self.logits, self.l_ind, self.target, self.target_ind, *self.block_weight_arg(), *self.starts_arg(),
            new_axes={_STATS: blocks.N_STATS}, adjust_chunks={self.class_index: 1},
            align_arrays=False, meta=_meta(self.logits.ndim + 1, _F64),
        )  # fmt: skip
        # All class blocks of a row block in one task (their stats are 24 bytes a row): measured
        # faster than dask.array.reduction's tree (split_every 4 or 32), most with many class blocks.
        combined = da.blockwise(
            blocks.in_backend(partial(blocks.combine_stats, axis=(self.ca,), keepdims=False)),
            (*self.t_ind, _STATS), per_block, (*self.l_ind, _STATS),
            concatenate=True, meta=_meta(len(self.t_ind) + 1, _F64),
        )  # fmt: skip
        return per_block, combined

    def row_target(self) -> tuple[da.Array | None, tuple[str, ...] | None]:
        """The class indices by rows (None for probabilities: the stats hold all a row's loss needs)."""
        return (None, None) if self.probabilities else (self.target, self.t_ind)

    def totals(self) -> tuple[object, tuple[str, ...] | None]:
        """The divisor and valid rows of the whole target (what a reduced gradient's scale needs)."""
        if self.probabilities:
            return blocks.object_block(Partials(0.0, float(self.rows), 0.0, float(self.rows)), 0), None
        per_block = _blockwise(
            partial(
                blocks.target_partials, ignore_index=self.opts.ignore_index, dtype=self.compute,
                n_classes=self.n_classes,
            ),
            self.t_ind, self.target, self.t_ind, *self.weight_arg(),
            adjust_chunks=self.partials_chunks(), meta=_meta(len(self.t_ind), _OBJECT),
        )  # fmt: skip
        if per_block.ndim == 0:
            per_block = per_block[None]
        total = da.reduction(
            per_block,
            chunk=blocks.in_backend(blocks.keep),
            combine=blocks.in_backend(blocks.combine_partials),
            aggregate=blocks.in_backend(blocks.combine_partials),
            axis=tuple(range(per_block.ndim)),
            keepdims=False,
            dtype=_OBJECT,
            concatenate=True,
            meta=_meta(0, _OBJECT),
        )
        return total, ()

    def upstream(self, grad_output: object) -> tuple[object, tuple[str, ...] | None]:
        """``grad_output`` as a blockwise argument: a float, a 0-d Dask array, or target-shaped blocks."""
        if grad_output is None:
            return None, None
        dtype = grad_output.dtype if isinstance(grad_output, da.Array) else np.asarray(grad_output).dtype
        if dtype.kind not in "fiu":
            raise TypeError(f"grad_output must hold real numbers; got dtype {dtype}")
        shape = np.shape(grad_output)  # type: ignore[call-overload]
        if self.opts.reduction != "none":
            if shape:
                raise ValueError(
                    f"grad_output must be a scalar for reduction={self.opts.reduction!r}; got shape {shape}"
                )
            return (grad_output, ()) if isinstance(grad_output, da.Array) else (float(grad_output), None)  # type: ignore[arg-type]
        if not shape and not isinstance(grad_output, da.Array):
            return float(grad_output), None  # type: ignore[arg-type]
        loss_shape = self.loss_shape
        try:
            np.broadcast_shapes(shape, loss_shape)
            if np.broadcast_shapes(shape, loss_shape) != loss_shape:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"grad_output must be a scalar or have the loss's shape {loss_shape}; got shape {shape}"
            ) from None
        row_chunks = tuple(c for i, c in enumerate(self.logits.chunks) if i != self.ca)
        rows = da.broadcast_to(_dask(grad_output), loss_shape).astype(_F64).rechunk(row_chunks)
        return rows, self.t_ind


def cross_entropy(
    input: da.Array | npt.ArrayLike,
    target: da.Array | npt.ArrayLike,
    weight: da.Array | npt.ArrayLike | None = None,
    ignore_index: int = _xent.DEFAULT_IGNORE_INDEX,
    reduction: _xent.Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> da.Array:
    """:func:`fastxent.cross_entropy` of Dask arrays, as a lazy Dask array.

    Parameters
    ----------
    input : dask.array.Array of float16, bfloat16, float32 or float64
        Logits of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``, in any
        chunks; the class axis (1, or 0 for 1-D input) may be chunked too.
        A NumPy array is wrapped with the class axis in one chunk.
    target : dask.array.Array or array_like
        Class indices (an integer dtype, ``input``'s shape without the class
        axis) or class probabilities (a float dtype, ``input``'s shape);
        rechunked to match ``input``'s blocks.
    weight : array_like of shape (C,), optional
        A weight per class: a NumPy array (or a Dask array), one key of the graph.
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As :func:`fastxent.cross_entropy`.

    Returns
    -------
    dask.array.Array
        ``input``'s dtype; the target's shape (by rows) for ``"none"``, else
        0-d. Bitwise the in-memory result for ``"none"`` when the class axis
        is one chunk, and equal within float rounding otherwise.

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask
    >>> logits = da.from_array(np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32), chunks=(1, 3))
    >>> loss = fastxent.dask.cross_entropy(logits, np.array([0, 2]), reduction="none")
    >>> loss.compute(scheduler="sync").round(5)
    array([0.23954, 1.09861], dtype=float32)
    >>> round(float(fastxent.dask.cross_entropy(logits, np.array([0, -100])).compute(scheduler="sync")), 5)
    0.23954
    """
    call = _Xent(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    opts, t_ind, l_ind = call.opts, call.t_ind, call.l_ind
    if call.class_chunked:
        stats = call.stats()[1]
        if opts.reduction == "none":
            return _blockwise(
                partial(blocks.stats_losses, opts=opts, n_classes=call.n_classes, dtype=call.dtype),
                t_ind, stats, (*t_ind, _STATS), *call.row_target(),
                meta=_meta(len(t_ind), call.dtype),
            )  # fmt: skip
        partials = _blockwise(
            partial(blocks.stats_partials, opts=opts, n_classes=call.n_classes, dtype=call.compute),
            t_ind, stats, (*t_ind, _STATS), *call.row_target(), *call.weight_arg(),
            adjust_chunks=call.partials_chunks(), meta=_meta(len(t_ind), _OBJECT),
        )  # fmt: skip
        return _reduce_partials(partials, opts, call.dtype)
    arrays = (call.logits, l_ind, call.target, call.target_ind, *call.weight_arg())
    if opts.reduction == "none":
        return _blockwise(partial(blocks.row_losses, opts=opts), t_ind, *arrays, meta=_meta(len(t_ind), call.dtype))
    if call.single_block():
        return _blockwise(partial(blocks.whole, opts=opts), (), *arrays, meta=_meta(0, call.dtype))
    partials = _blockwise(
        partial(blocks.row_partials, opts=opts, probabilities=call.probabilities, ndim=len(t_ind)),
        t_ind, *arrays, adjust_chunks=call.partials_chunks(), meta=_meta(len(t_ind), _OBJECT),
    )  # fmt: skip
    return _reduce_partials(partials, opts, call.dtype)


def cross_entropy_and_grad(
    input: da.Array | npt.ArrayLike,
    target: da.Array | npt.ArrayLike,
    weight: da.Array | npt.ArrayLike | None = None,
    ignore_index: int = _xent.DEFAULT_IGNORE_INDEX,
    reduction: _xent.Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: da.Array | npt.ArrayLike | float | None = None,
) -> tuple[da.Array, da.Array]:
    """:func:`fastxent.cross_entropy_and_grad` of Dask arrays: the lazy loss and gradient.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As :func:`cross_entropy`.
    grad_output : float, array_like or dask.array.Array, optional
        The upstream gradient: a scalar (a 0-d Dask array included), or for
        ``reduction="none"`` an array broadcastable to the loss's shape.
        There is no ``grad_out`` / ``inplace``: Dask arrays are not written to.

    Returns
    -------
    loss : dask.array.Array
        As :func:`cross_entropy`.
    grad : dask.array.Array
        ``d(loss) / d(input)``, ``input``'s shape, dtype and chunks. With the
        class axis in one chunk each block of rows is one in-memory
        ``cross_entropy_and_grad`` call that also gives the block's loss; the
        scale of a ``"mean"`` comes from the whole target first (a reduction
        over the targets alone). With the class axis in chunks the gradient is
        a second pass over the logits.

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask
    >>> loss, grad = fastxent.dask.cross_entropy_and_grad(da.zeros((2, 2), chunks=1), np.array([0, 1]))
    >>> float(loss.compute(scheduler="sync"))
    0.6931471805599453
    >>> grad.compute(scheduler="sync")
    array([[-0.25,  0.25],
           [ 0.25, -0.25]])
    """
    call = _Xent(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    opts, t_ind, l_ind = call.opts, call.t_ind, call.l_ind
    upstream = call.upstream(grad_output)
    totals: tuple[object, tuple[str, ...] | None] = (None, None) if opts.reduction == "none" else call.totals()
    grad_meta = _meta(call.logits.ndim, call.dtype)
    if call.class_chunked:
        block_stats, stats = call.stats()
        grad = _blockwise(
            partial(
                blocks.class_grad, opts=opts, n_classes=call.n_classes, probabilities=call.probabilities,
                dtype=call.dtype,
            ),
            l_ind, call.logits, l_ind, call.target, call.target_ind, *call.block_weight_arg(), *call.starts_arg(),
            block_stats, (*l_ind, _STATS), stats, (*t_ind, _STATS), *upstream, *totals,
            align_arrays=False, meta=grad_meta,
        )  # fmt: skip
        if opts.reduction == "none":
            loss = _blockwise(
                partial(blocks.stats_losses, opts=opts, n_classes=call.n_classes, dtype=call.dtype),
                t_ind, stats, (*t_ind, _STATS), *call.row_target(),
                meta=_meta(len(t_ind), call.dtype),
            )  # fmt: skip
            return loss, grad
        partials = _blockwise(
            partial(blocks.stats_partials, opts=opts, n_classes=call.n_classes, dtype=call.compute),
            t_ind, stats, (*t_ind, _STATS), *call.row_target(), *call.weight_arg(),
            adjust_chunks=call.partials_chunks(), meta=_meta(len(t_ind), _OBJECT),
        )  # fmt: skip
        return _reduce_partials(partials, opts, call.dtype), grad
    arrays = (call.logits, l_ind, call.target, call.target_ind, *call.weight_arg())
    if call.single_block():
        pair = _blockwise(
            partial(blocks.whole_loss_and_grad, opts=opts), l_ind, *arrays, *upstream,
            meta=_meta(call.logits.ndim, _OBJECT),
        )  # fmt: skip
        return _split(pair, (), _meta(0, call.dtype), (), grad_meta)
    pair = _blockwise(
        partial(blocks.row_loss_and_grad, opts=opts, probabilities=call.probabilities, ndim=len(t_ind)),
        l_ind, *arrays, *upstream, *totals, meta=_meta(call.logits.ndim, _OBJECT),
    )  # fmt: skip
    rows = tuple(axis for axis in range(call.logits.ndim) if axis != call.ca)
    row_chunks = tuple(call.logits.chunks[axis] for axis in rows)
    if opts.reduction == "none":
        return _split(pair, rows, _meta(len(t_ind), call.dtype), row_chunks, grad_meta)
    partials_chunks = tuple((1,) * len(c) for c in row_chunks)
    partials, grad = _split(pair, rows, _meta(len(t_ind), _OBJECT), partials_chunks, grad_meta)
    return _reduce_partials(partials, opts, call.dtype), grad


# ---------------------------------------------------------------------------
# The softmax family


def _normalize_input(x: object, axis: object, function: Any) -> tuple[da.Array, tuple[int, ...], np.dtype]:
    """``x`` as a Dask array, ``axis`` as a tuple, and the result dtype, checked by an in-memory call on a probe."""
    array = _dask(x)
    result = function(_zeros((1,) * array.ndim, array.dtype), axis=axis)
    return array, normalize_axes(axis, array.ndim), np.asarray(result).dtype


def _in_one_chunk(x: da.Array, axes: tuple[int, ...]) -> bool:
    return all(x.numblocks[axis] == 1 for axis in axes)


def _lse(x: da.Array, axes: tuple[int, ...], keepdims: bool, dtype: np.dtype) -> da.Array:
    """The log-sum-exp over ``axes`` split in chunks: a tree reduction of blocks' log-sum-exps."""
    return da.reduction(
        x,
        chunk=blocks.in_backend(blocks.lse_block),
        combine=blocks.in_backend(blocks.lse_block),
        aggregate=blocks.in_backend(partial(blocks.lse_final, dtype=dtype)),
        axis=axes,
        keepdims=keepdims,
        dtype=dtype,
        concatenate=True,
        meta=_meta(x.ndim if keepdims else x.ndim - len(axes), dtype),
    )


def _normalized(x: object, axis: object, function: Any, log: bool) -> da.Array:
    array, axes, dtype = _normalize_input(x, axis, function)
    if _in_one_chunk(array, axes):
        return da.map_blocks(
            blocks.in_backend(partial(function, axis=axis)), array, dtype=dtype, meta=_meta(array.ndim, dtype)
        )
    lse = _lse(array, axes, True, blocks.compute_dtype(dtype))
    return da.map_blocks(
        blocks.in_backend(partial(blocks.from_lse, log=log, dtype=dtype)),
        array,
        lse,
        dtype=dtype,
        meta=_meta(array.ndim, dtype),
    )


def softmax(x: da.Array | npt.ArrayLike, axis: int | tuple[int, ...] | None = -1) -> da.Array:
    """:func:`fastxent.softmax` of a Dask array along ``axis``, lazily.

    With ``axis`` in one chunk each block is one in-memory call (bitwise the
    in-memory result); across chunks, a log-sum-exp reduction first, then
    ``exp(x - lse)`` per block (equal within float rounding).

    Examples
    --------
    >>> import dask.array as da, fastxent.dask
    >>> fastxent.dask.softmax(da.zeros((2, 4), chunks=(1, 2))).compute(scheduler="sync")
    array([[0.25, 0.25, 0.25, 0.25],
           [0.25, 0.25, 0.25, 0.25]])
    """
    return _normalized(x, axis, _normalize.softmax, log=False)


def log_softmax(x: da.Array | npt.ArrayLike, axis: int | tuple[int, ...] | None = -1) -> da.Array:
    """:func:`fastxent.log_softmax` of a Dask array along ``axis``, lazily (see :func:`softmax`).

    Examples
    --------
    >>> import dask.array as da, fastxent.dask
    >>> fastxent.dask.log_softmax(da.zeros((1, 2), chunks=1)).compute(scheduler="sync")
    array([[-0.69314718, -0.69314718]])
    """
    return _normalized(x, axis, _normalize.log_softmax, log=True)


def logsumexp(
    x: da.Array | npt.ArrayLike, axis: int | tuple[int, ...] | None = -1, *, keepdims: bool = False
) -> da.Array:
    """:func:`fastxent.logsumexp` of a Dask array over ``axis``, lazily.

    Axes in one chunk: one in-memory call per block (bitwise). Axes in
    chunks: each block's log-sum-exp, combined by a tree reduction that is
    itself a log-sum-exp (in float32 for 16-bit inputs).

    Examples
    --------
    >>> import dask.array as da, fastxent.dask
    >>> round(float(fastxent.dask.logsumexp(da.full(4, 1e4, chunks=2)).compute(scheduler="sync")), 6)
    10001.386294
    """
    array, axes, dtype = _normalize_input(x, axis, _normalize.logsumexp)
    keep = bool(keepdims)
    if not _in_one_chunk(array, axes):
        return _lse(array, axes, keep, dtype)
    ind = _indices(array.ndim)
    out = tuple(i for axis_, i in enumerate(ind) if keep or axis_ not in axes)
    return _blockwise(
        partial(blocks.lse_whole, axis=axes, keepdims=keep), out, array, ind,
        adjust_chunks={ind[a]: 1 for a in axes} if keep else None, meta=_meta(len(out), dtype),
    )  # fmt: skip


# ---------------------------------------------------------------------------
# Linear cross-entropy


def linear_cross_entropy(
    hidden: da.Array | npt.ArrayLike,
    weight: da.Array | npt.ArrayLike,
    target: da.Array | npt.ArrayLike,
    bias: da.Array | npt.ArrayLike | None = None,
    *,
    class_weight: da.Array | npt.ArrayLike | None = None,
    ignore_index: int = _xent.DEFAULT_IGNORE_INDEX,
    reduction: _xent.Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int | None = None,
) -> da.Array:
    """Linear cross-entropy (``cross_entropy(hidden @ weight.T + bias, target)``) of Dask rows, lazily.

    Parameters
    ----------
    hidden : dask.array.Array of shape (..., H)
        Chunked by rows (the leading axes); the feature axis is merged into
        one chunk if it is split.
    weight : array_like of shape (V, H)
        ``hidden``'s dtype. A NumPy array (or a Dask array) that becomes a
        single key of the graph, as do ``bias`` and ``class_weight``: a worker
        receives it once and all its tasks share it.
    target : dask.array.Array or array_like of integers
        ``hidden``'s shape without its last axis; rechunked to match ``hidden``.
    bias, class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_rows
        As the in-memory ``linear_cross_entropy``; ``chunk_rows`` is the block
        size inside each task.

    Returns
    -------
    dask.array.Array
        ``hidden``'s dtype; ``target``'s shape for ``"none"``, else 0-d. Each
        block is one in-memory call, so ``"none"`` equals the in-memory
        result for the same ``chunk_rows`` blocks; ``"mean"`` / ``"sum"`` are
        equal within float rounding.

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastxent.dask
    >>> hidden = da.from_array(np.array([[1.0, 0.0], [0.0, 1.0]]), chunks=(1, 2))
    >>> weight = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    >>> loss = fastxent.dask.linear_cross_entropy(hidden, weight, np.array([0, 2]))
    >>> round(float(loss.compute(scheduler="sync")), 5)
    0.66908
    """
    if not isinstance(hidden, da.Array):
        array = np.asarray(hidden)
        hidden = da.from_array(array, chunks=tuple(-1 if i == array.ndim - 1 else "auto" for i in range(array.ndim)))
    rows = _dask(hidden)
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
    probe = _linear.linear_cross_entropy(
        _zeros((0, n_hidden) if rows.ndim else (), rows.dtype), _probe(weight),  # type: ignore[arg-type]
        _zeros((0,), target_array.dtype), _probe(bias), class_weight=_probe(class_weight),
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, chunk_rows=chunk_rows,
    )  # fmt: skip
    dtype = np.asarray(probe).dtype
    lin = blocks.LinearOptions(_options(ignore_index, label_smoothing, z_loss, softcap, reduction), chunk_rows)
    ind = _indices(rows.ndim)
    t_ind = ind[:-1]
    row_chunks = rows.chunks[:-1]
    labels = _dask(target_array, chunks=row_chunks).rechunk(row_chunks)
    layer = _one_key(weight)
    small = [(None, None) if a is None else (a, ("class",)) for a in (_one_key(bias), _one_key(class_weight))]
    arrays = (rows, ind, layer, ("class", ind[-1]), labels, t_ind, *small[0], *small[1])
    if lin.opts.reduction == "none" or rows.npartitions == 1:
        return _blockwise(
            partial(blocks.linear_losses, lin=lin), t_ind if lin.opts.reduction == "none" else (), *arrays,
            meta=_meta(len(t_ind) if lin.opts.reduction == "none" else 0, dtype),
        )  # fmt: skip
    partials = _blockwise(
        partial(blocks.linear_partials, lin=lin), t_ind, *arrays,
        adjust_chunks=dict.fromkeys(t_ind, 1), meta=_meta(len(t_ind), _OBJECT),
    )  # fmt: skip
    return _reduce_partials(partials, lin.opts, dtype)
