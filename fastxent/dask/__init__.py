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

The modules: ``_xent_args`` (a cross-entropy's arguments checked and laid
out as Dask arrays), ``_graph`` (what every graph shares), the graphs
``_rows`` (the class axis in one chunk), ``_classes`` (in chunks),
``_softmax`` and ``_linear``; the functions their tasks run, NumPy in and
NumPy out, ``_row_blocks``, ``_class_blocks`` and ``_blocks`` (shared
helpers, reduction steps, the softmax family), each made a task by
``_tasks``.

Errors in the arguments (dtypes, shapes, options) raise when the graph is
built, with the in-memory functions' messages; out-of-range class indices
raise when the block that holds them is computed, with the position inside
that block.
"""

from __future__ import annotations

import numpy.typing as npt

try:
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised in an environment without Dask
    raise ImportError("fastxent.dask needs Dask: pip install 'fastxent[dask]' (dask[array] and distributed)") from exc

from .. import _xent
from . import _classes, _linear, _rows, _softmax
from ._xent_args import XentArgs

__all__ = ["cross_entropy", "cross_entropy_and_grad", "linear_cross_entropy", "log_softmax", "logsumexp", "softmax"]


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
    call = XentArgs(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    return (_classes if call.class_chunked else _rows).loss(call)


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
    call = XentArgs(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    path = _classes if call.class_chunked else _rows
    return path.loss_and_grad(call, call.upstream(grad_output), call.totals())


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
    return _softmax.normalized(x, axis, log=False)


def log_softmax(x: da.Array | npt.ArrayLike, axis: int | tuple[int, ...] | None = -1) -> da.Array:
    """:func:`fastxent.log_softmax` of a Dask array along ``axis``, lazily (see :func:`softmax`).

    Examples
    --------
    >>> import dask.array as da, fastxent.dask
    >>> fastxent.dask.log_softmax(da.zeros((1, 2), chunks=1)).compute(scheduler="sync")
    array([[-0.69314718, -0.69314718]])
    """
    return _softmax.normalized(x, axis, log=True)


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
    return _softmax.logsumexp(x, axis, bool(keepdims))


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
    return _linear.loss(
        hidden, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        chunk_rows,
    )  # fmt: skip
