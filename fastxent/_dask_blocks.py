"""What one Dask task computes: NumPy blocks in, NumPy blocks (or partial sums) out.

:mod:`fastxent.dask` builds graphs whose tasks are these functions; they
import nothing from Dask, so they run (and are tested) on plain arrays.
Blocks keep the user's layout: logits ``(B, C, d1, ..., dK)`` (or ``(C,)``),
class-index targets without the class axis. Functions on row blocks call the
public in-memory API once; functions on class blocks (the class axis split
into chunks) carry per-row statistics between the two passes.

Per-row statistics of a class block, along a trailing axis of length 3
(:data:`N_STATS`), for a row with (softcapped) logits ``x``:

``lse``
    ``log(sum(exp(x)))`` over the block's classes; blocks combine by a log-sum-exp.
``a``
    the row's total target weight in the block: ``sum_c w_c * q_c``, where ``q``
    is the smoothed target distribution (for a class index ``t``:
    ``(1 - eps) * [c == t] + eps / C``); blocks combine by adding.
``b``
    ``sum_c w_c * q_c * x_c``; blocks combine by adding.

The row's loss is then ``a * lse - b`` (plus ``z_loss * lse**2``), and its
gradient ``softmax(x) * (a + 2 * z * lse) - w * q``, both exactly the
in-memory definitions regrouped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce
from typing import Any, NamedTuple

import numpy as np

from . import _linear, _normalize, _xent
from ._dispatch import backend_choice, use_backend
from ._reduction import Partials, gradient_scale
from ._validate import check_index_range
from ._xent import Reduction

N_STATS = 3
_LSE, _A, _B = range(N_STATS)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


class Options(NamedTuple):
    """The scalar options of a cross-entropy, already checked by an in-memory call."""

    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    reduction: Reduction


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype fastxent computes ``dtype`` in: float32 / float64 as they are, 16-bit floats in float32."""
    return dtype if dtype in (_F32, _F64) else _F32


def _rows(x: np.ndarray) -> np.ndarray:
    """Logits (or probabilities) ``(B, C, ...)`` / ``(C,)`` as ``(B, C, K)``."""
    if x.ndim == 1:
        return x.reshape(1, x.shape[0], 1)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _softcapped(x: np.ndarray, softcap: float | None) -> np.ndarray:
    """``softcap * tanh(x / softcap)`` in float64, rounded once to ``x``'s dtype (as the reference backend)."""
    if softcap is None:
        return x
    return (softcap * np.tanh(x.astype(_F64) / softcap)).astype(x.dtype)


def object_block(value: object, ndim: int) -> np.ndarray:
    """A ``(1,) * ndim`` object array holding ``value`` (a tuple stays one element)."""
    out = np.empty((1,) * ndim, dtype=object)
    out[(0,) * ndim] = value
    return out


def _compute_weight(weight: np.ndarray | None, dtype: np.dtype) -> np.ndarray | None:
    """Class weights as the kernels see them (rounded to the compute dtype), in float64."""
    return None if weight is None else np.asarray(weight, dtype=dtype).astype(_F64)


def _index_totals(
    target: np.ndarray, weight: np.ndarray | None, ignore_index: int, dtype: np.dtype
) -> tuple[float, float]:
    """``(divisor, valid rows)`` of a block of class indices whose range has been checked."""
    valid = target != ignore_index
    count = int(np.count_nonzero(valid))
    w = _compute_weight(weight, dtype)
    divisor = float(count) if w is None else float(np.sum(w[target[valid]]))
    return divisor, float(count)


class Unwrap:
    """``func`` called with each list argument replaced by the one block it holds.

    ``dask.array.blockwise`` passes the blocks along a contracted axis as a
    list (``concatenate=False``); every contracted axis here has one block.
    ``concatenate=True`` would pass ``np.concatenate([block])`` instead: a
    copy of the block, which halves the speed of a memory-bound kernel.
    """

    __slots__ = ("__name__", "func")

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        # Dask names a graph's layers after the function.
        self.__name__ = getattr(func, "func", func).__name__

    def __call__(self, *args: object, **kwargs: object) -> Any:
        return self.func(*map(_single, args), **kwargs)

    def __dask_tokenize__(self) -> tuple[str, object]:
        return ("fastxent.Unwrap", _token(self.func))


def _token(func: Callable[..., Any]) -> object:
    """Dask's token of a wrapped function: a token is hashed from its ``repr``, and a wrapper's holds its address."""
    from dask.base import normalize_token  # only Dask calls this, so only Dask needs importing

    return normalize_token(func)


def _single(value: object) -> object:
    while isinstance(value, list):
        (value,) = value
    return value


class InBackend:
    """``func`` run inside ``use_backend(backend)``, in whatever thread or process runs the task.

    The caller's :func:`fastxent.use_backend` (a context variable of its
    thread) and :func:`fastxent.set_backend` (its process) do not reach Dask's
    workers; the name travels in the task instead, and is part of its token,
    so graphs built for different backends do not share keys.
    ``__wrapped__`` lets Dask read ``func``'s signature (``computing_meta``).
    """

    __slots__ = ("__name__", "__wrapped__", "backend")

    def __init__(self, func: Callable[..., Any], backend: str) -> None:
        self.__wrapped__ = func
        self.backend = backend
        self.__name__ = getattr(func, "func", func).__name__

    def __call__(self, *args: object, **kwargs: object) -> Any:
        with use_backend(self.backend):
            return self.__wrapped__(*args, **kwargs)

    def __dask_tokenize__(self) -> tuple[str, object, str]:
        return ("fastxent.InBackend", _token(self.__wrapped__), self.backend)


def in_backend(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` as a task that runs with the backend chosen where the graph is built.

    With ``"auto"`` it is ``func`` itself: each worker resolves its own
    ``auto`` (its ``set_backend``, ``FASTXENT_BACKEND``, the size of the block).
    """
    choice = backend_choice()
    return func if choice == "auto" else InBackend(func, choice)


# ---------------------------------------------------------------------------
# Partial sums across blocks (dask.array.reduction's chunk / combine / aggregate)


def keep(x: np.ndarray, axis: object = None, keepdims: bool = True, computing_meta: bool = False) -> np.ndarray:
    """The ``chunk`` step of a reduction over blocks that already hold one :class:`Partials` each."""
    return x


def combine_partials(
    x: np.ndarray, axis: object = None, keepdims: bool = True, computing_meta: bool = False
) -> np.ndarray:
    """Add the :class:`Partials` of a group of blocks into one (a ``(1, ..., 1)`` object array)."""
    if computing_meta:
        return x
    return object_block(reduce(Partials.combine, x.flat), x.ndim if keepdims else 0)


def finish_partials(
    x: np.ndarray,
    axis: object = None,
    keepdims: bool = False,
    computing_meta: bool = False,
    *,
    reduction: str,
    z_loss: float,
    dtype: np.dtype,
) -> np.ndarray:
    """The ``"mean"`` or ``"sum"`` from the last group of :class:`Partials`, as a 0-d ``dtype`` array."""
    if computing_meta:
        return np.empty((), dtype)
    total = reduce(Partials.combine, x.flat)
    return np.asarray(total.finish(reduction, z_loss), dtype=dtype)


# ---------------------------------------------------------------------------
# The class axis in one chunk: one in-memory call per block of rows


def row_losses(x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, *, opts: Options) -> np.ndarray:
    """Per-row losses of a block: :func:`fastxent.cross_entropy` with ``reduction="none"``."""
    return _xent.cross_entropy(  # type: ignore[return-value]
        x, target, weight, opts.ignore_index, "none", opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap
    )


def whole(x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, *, opts: Options) -> np.ndarray:
    """The in-memory loss of the only block there is, reduced as asked, as an array."""
    loss = _xent.cross_entropy(
        x, target, weight, opts.ignore_index, opts.reduction, opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap,
    )  # fmt: skip
    return np.asarray(loss)


def row_partials(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, *, opts: Options, probabilities: bool, ndim: int
) -> np.ndarray:
    """The :class:`Partials` of a block of rows, in a ``(1,) * ndim`` object array.

    The cross-entropy comes from one in-memory ``reduction="none"`` call (in
    float32 for 16-bit inputs), summed in float64; with a z-loss the rows'
    log-sum-exp comes from :func:`fastxent.logsumexp` of the softcapped logits.
    """
    compute = compute_dtype(x.dtype)
    x = x.astype(compute, copy=False)
    losses = _xent.cross_entropy(
        x, target, weight, opts.ignore_index, "none", opts.label_smoothing, softcap=opts.softcap
    )  # fmt: skip
    loss_sum = float(np.sum(losses, dtype=_F64))
    if probabilities:
        rows = float(losses.size)
        divisor, valid_rows, valid = rows, rows, None
    else:
        divisor, valid_rows = _index_totals(target, weight, opts.ignore_index, compute)
        valid = target != opts.ignore_index
    square_sum = 0.0
    if opts.z_loss:
        lse = np.asarray(_normalize.logsumexp(_softcapped(x, opts.softcap), axis=0 if x.ndim == 1 else 1), _F64)
        if valid is not None:
            lse = np.where(valid, lse, 0.0)
        square_sum = float(np.sum(np.square(lse)))
    return object_block(Partials(loss_sum, divisor, square_sum, valid_rows), ndim)


def target_partials(
    target: np.ndarray, weight: np.ndarray | None, *, ignore_index: int, dtype: np.dtype, n_classes: int
) -> np.ndarray:
    """``Partials(0, divisor, 0, valid rows)`` of a block of class indices: what a gradient's scale needs."""
    check_index_range(target, n_classes, "target", ignore_index)
    divisor, valid_rows = _index_totals(target, weight, ignore_index, dtype)
    return object_block(Partials(0.0, divisor, 0.0, valid_rows), target.ndim)


def _scale(opts: Options, totals: Partials | None, upstream: object) -> tuple[np.ndarray | float, float]:
    """``(per-row scale, z coefficient)`` of the gradient, as :func:`fastxent.cross_entropy_and_grad` forms them."""
    if upstream is None:
        upstream = 1.0
    elif isinstance(upstream, np.ndarray):
        upstream = float(upstream) if upstream.ndim == 0 else upstream.astype(_F64)
    if totals is None:  # reduction="none"
        return upstream, opts.z_loss  # type: ignore[return-value]
    return gradient_scale(opts.reduction, float(upstream), totals.divisor, totals.valid_rows, opts.z_loss)  # type: ignore[arg-type]


def row_loss_and_grad(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    upstream: object,
    totals: np.ndarray | None,
    *,
    opts: Options,
    probabilities: bool,
    ndim: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(per-row losses or Partials, gradient)`` of a block of rows, from one in-memory call.

    ``reduction="none"``: the in-memory call itself, with the block's
    ``grad_output``. ``"mean"`` / ``"sum"``: the scale of the whole loss
    (from ``totals``, the divisor over every block) goes in as a scalar
    ``grad_output`` of a ``"none"`` call, which gives the in-memory gradient;
    the losses become the block's :class:`Partials`.
    """
    total = None if totals is None else totals.item()
    scale, z_coef = _scale(opts, total, upstream)
    loss, grad = _xent.cross_entropy_and_grad(
        x, target, weight, opts.ignore_index, "none", opts.label_smoothing,
        z_loss=z_coef, softcap=opts.softcap, grad_output=scale,  # type: ignore[arg-type]
    )  # fmt: skip
    if total is None:
        return loss, grad  # type: ignore[return-value]
    if opts.z_loss:
        return row_partials(x, target, weight, opts=opts, probabilities=probabilities, ndim=ndim), grad
    if probabilities:
        divisor = valid_rows = float(np.size(loss))
    else:
        divisor, valid_rows = _index_totals(target, weight, opts.ignore_index, compute_dtype(x.dtype))
    partials = Partials(float(np.sum(loss, dtype=_F64)), divisor, 0.0, valid_rows)
    return object_block(partials, ndim), grad


def whole_loss_and_grad(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, upstream: object, *, opts: Options
) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory loss and gradient of the only block there is."""
    loss, grad = _xent.cross_entropy_and_grad(
        x, target, weight, opts.ignore_index, opts.reduction, opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap, grad_output=upstream,  # type: ignore[arg-type]
    )  # fmt: skip
    return np.asarray(loss), grad


# ---------------------------------------------------------------------------
# The class axis in several chunks: statistics per (row block, class block)


def _class_weight_rows(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, start: int, opts: Options, n_classes: int
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray, float]:
    """For class indices: ``(w_block, hit, local, w_hit, eps / C)`` of a class block.

    ``hit`` marks rows whose (non-ignored) target falls in the block, ``local``
    is that target's column in the block, ``w_hit = (1 - eps) * w_t`` on hit rows.
    """
    b, width, k = x.shape
    w = _compute_weight(weight, x.dtype)
    t = target.reshape(b, k)
    hit = (t >= start) & (t < start + width) & (t != opts.ignore_index)
    local = np.where(hit, t - start, 0)
    w_t = np.ones(t.shape) if w is None or width == 0 else w[local]
    w_hit = np.where(hit, (1 - opts.label_smoothing) * w_t, 0.0)
    return w, hit, local, w_hit, opts.label_smoothing / n_classes if n_classes else 0.0


def class_stats(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    start: np.ndarray,
    *,
    opts: Options,
    n_classes: int,
    probabilities: bool,
) -> np.ndarray:
    """``(lse, a, b)`` of each row of one class block (see the module docstring).

    Returns
    -------
    ndarray of float64
        ``x``'s shape with the class axis of length 1, plus a trailing axis of 3.
    """
    shape = x.shape
    rows = _softcapped(_rows(x.astype(compute_dtype(x.dtype), copy=False)), opts.softcap)
    b, width, k = rows.shape
    lo = int(start.reshape(-1)[0])
    out = np.empty((b, k, N_STATS))
    out[..., _LSE] = _normalize.logsumexp(rows, axis=1)
    eps = opts.label_smoothing
    with np.errstate(all="ignore"):
        if probabilities:
            w = _compute_weight(weight, rows.dtype)
            q = _rows(target).astype(rows.dtype, copy=False)
            if eps:
                q = q * (1 - eps) + eps / n_classes
            if w is not None:
                q = q * w.astype(rows.dtype)[None, :, None]
            out[..., _A] = np.sum(q, axis=1, dtype=_F64)
            out[..., _B] = np.sum(q * rows, axis=1, dtype=_F64)
        else:
            w, hit, local, w_hit, smooth = _class_weight_rows(rows, target, weight, lo, opts, n_classes)
            x_t = np.take_along_axis(rows, local[:, None, :], axis=1)[:, 0, :] if width else np.zeros((b, k))
            out[..., _A] = w_hit
            out[..., _B] = np.where(hit, w_hit * x_t, 0.0)
            if eps:
                w_sum = float(width) if w is None else float(np.sum(w))
                weighted = np.sum(rows, axis=1, dtype=_F64) if w is None else np.einsum("bck,c->bk", rows, w)
                out[..., _A] += smooth * w_sum
                out[..., _B] += smooth * weighted
    if len(shape) == 1:
        return out.reshape(1, N_STATS)
    return out.reshape((shape[0], 1, *shape[2:], N_STATS))


def combine_stats(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Merge class blocks' ``(lse, a, b)`` along ``axis``: a log-sum-exp of the ``lse``, sums of the rest."""
    lse = np.asarray(_normalize.logsumexp(x[..., _LSE], axis=axis, keepdims=keepdims))
    sums = np.sum(x[..., _A:], axis=axis, keepdims=keepdims)
    return np.concatenate([lse[..., None], sums], axis=-1)


def _stats_loss(stats: np.ndarray, target: np.ndarray | None, opts: Options) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``(loss, lse)`` in float64 from combined stats, zero on ignored rows (loss without the z-loss)."""
    lse, a, b = stats[..., _LSE], stats[..., _A], stats[..., _B]
    with np.errstate(all="ignore"):
        loss = a * lse - b
    if target is not None:
        valid = target != opts.ignore_index
        loss = np.where(valid, loss, 0.0)
        lse = np.where(valid, lse, 0.0)
    return loss, lse


def stats_losses(
    stats: np.ndarray, target: np.ndarray | None, *, opts: Options, n_classes: int, dtype: np.dtype
) -> np.ndarray:
    """Per-row losses (``reduction="none"``) of a block of rows from its combined stats."""
    if target is not None:
        check_index_range(target, n_classes, "target", opts.ignore_index)
    loss, lse = _stats_loss(stats, target, opts)
    if opts.z_loss:
        with np.errstate(all="ignore"):
            loss = loss + opts.z_loss * np.square(lse)
    return loss.astype(dtype)


def stats_partials(
    stats: np.ndarray, target: np.ndarray | None, weight: np.ndarray | None, *, opts: Options, n_classes: int,
    dtype: np.dtype,
) -> np.ndarray:  # fmt: skip
    """The :class:`Partials` of a block of rows from its combined stats, in a ``(1, ..., 1)`` object array."""
    ndim = stats.ndim - 1
    loss, lse = _stats_loss(stats, target, opts)
    if target is None:
        divisor = valid_rows = float(loss.size)
    else:
        check_index_range(target, n_classes, "target", opts.ignore_index)
        divisor, valid_rows = _index_totals(target, weight, opts.ignore_index, dtype)
    square_sum = float(np.sum(np.square(lse))) if opts.z_loss else 0.0
    return object_block(Partials(float(np.sum(loss)), divisor, square_sum, valid_rows), ndim)


def class_grad(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    start: np.ndarray,
    block_stats: np.ndarray,
    stats: np.ndarray,
    upstream: object,
    totals: np.ndarray | None,
    *,
    opts: Options,
    n_classes: int,
    probabilities: bool,
    dtype: np.dtype,
) -> np.ndarray:
    """The gradient of one class block, given this block's stats and its rows' combined ``(lse, a, b)``.

    The row's softmax over all classes is the block's own softmax (one fused
    :func:`fastxent.softmax`) times ``exp(lse_block - lse)``; the rest is the
    in-memory formula with the block's columns of the target and weights.
    """
    scale, z_coef = _scale(opts, None if totals is None else totals.item(), upstream)
    compute = compute_dtype(x.dtype)
    raw = _rows(x.astype(compute, copy=False))
    rows = _softcapped(raw, opts.softcap)
    b, width, k = rows.shape
    lse = stats[..., _LSE].reshape(b, k)
    coef = stats[..., _A].reshape(b, k)
    if z_coef:
        coef = coef + 2 * z_coef * lse
    lse_block = block_stats[..., _LSE].reshape(b, k)
    row_scale = np.broadcast_to(np.asarray(scale, _F64), stats.shape[:-1]).reshape(b, k)
    with np.errstate(all="ignore"):
        grad = _normalize.softmax(rows, axis=1)
        grad *= (np.exp(lse_block - lse) * coef * row_scale).astype(compute)[:, None, :]
        # A block of -inf logits has a NaN softmax of its own but no share of the row's.
        nothing_b, nothing_k = np.nonzero((lse_block == -np.inf) & (lse != -np.inf))
        grad[nothing_b, :, nothing_k] = 0
        if probabilities:
            q = _rows(target).astype(compute, copy=False)
            if opts.label_smoothing:
                q = q * (1 - opts.label_smoothing) + opts.label_smoothing / n_classes
            w = _compute_weight(weight, compute)
            if w is not None:
                q = q * w.astype(compute)[None, :, None]
            grad -= q * row_scale.astype(compute)[:, None, :]
        else:
            lo = int(start.reshape(-1)[0])
            w, hit, local, w_hit, smooth = _class_weight_rows(rows, target, weight, lo, opts, n_classes)
            rows_hit, cols_hit = np.nonzero(hit)
            grad[rows_hit, local[rows_hit, cols_hit], cols_hit] -= (w_hit * row_scale)[rows_hit, cols_hit]
            if opts.label_smoothing:
                w_col = np.ones(width) if w is None else w
                grad -= (smooth * w_col).astype(compute)[None, :, None] * row_scale.astype(compute)[:, None, :]
            ignored_b, ignored_k = np.nonzero((target != opts.ignore_index).reshape(b, k) == 0)
            grad[ignored_b, :, ignored_k] = 0
        if opts.softcap is not None:
            grad = grad * (1 - np.tanh(raw.astype(_F64) / opts.softcap) ** 2)
    return grad.astype(dtype, copy=False).reshape(x.shape)


# ---------------------------------------------------------------------------
# The softmax family


def lse_block(x: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> np.ndarray:
    """:func:`fastxent.logsumexp` of a block as an array, in the compute dtype (the reduction's every step)."""
    if computing_meta:
        return x
    return np.asarray(_normalize.logsumexp(x.astype(compute_dtype(x.dtype), copy=False), axis=axis, keepdims=keepdims))


def lse_whole(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """:func:`fastxent.logsumexp` of a block that holds the reduced axes whole, as an array."""
    return np.asarray(_normalize.logsumexp(x, axis=axis, keepdims=keepdims))


def lse_final(
    x: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False, *, dtype: np.dtype
) -> np.ndarray:
    """The last step of a chunked log-sum-exp: combine, then round to the result dtype."""
    if computing_meta:
        return x
    return lse_block(x, axis, keepdims).astype(dtype, copy=False)


def from_lse(x: np.ndarray, lse: np.ndarray, *, log: bool, dtype: np.dtype) -> np.ndarray:
    """``x - lse`` (``log``) or ``exp(x - lse)`` with ``lse`` broadcast over the reduced axes."""
    compute = compute_dtype(x.dtype)
    with np.errstate(all="ignore"):
        shifted = x.astype(compute, copy=False) - lse.astype(compute, copy=False)
        return (shifted if log else np.exp(shifted)).astype(dtype, copy=False)


# ---------------------------------------------------------------------------
# Linear cross-entropy: one in-memory call per block of hidden rows


class LinearOptions(NamedTuple):
    """:class:`Options` plus the linear layer's own."""

    opts: Options
    chunk_rows: int | None


def _linear_call(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    bias: np.ndarray | None,
    class_weight: np.ndarray | None,
    lin: LinearOptions,
    reduction: Reduction,
    z_loss: float,
) -> np.ndarray:
    opts = lin.opts
    loss = _linear.linear_cross_entropy(
        hidden, weight, target, bias, class_weight=class_weight, ignore_index=opts.ignore_index,
        reduction=reduction, label_smoothing=opts.label_smoothing, z_loss=z_loss,
        softcap=opts.softcap, chunk_rows=lin.chunk_rows,
    )  # fmt: skip
    return np.asarray(loss)


def linear_losses(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    bias: np.ndarray | None,
    class_weight: np.ndarray | None,
    *,
    lin: LinearOptions,
) -> np.ndarray:
    """The in-memory linear cross-entropy of a block of rows, reduced as ``lin.opts.reduction`` says."""
    return _linear_call(hidden, weight, target, bias, class_weight, lin, lin.opts.reduction, lin.opts.z_loss)


def linear_partials(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    bias: np.ndarray | None,
    class_weight: np.ndarray | None,
    *,
    lin: LinearOptions,
) -> np.ndarray:
    """The :class:`Partials` of a block of rows of a linear cross-entropy.

    The z-loss part is the difference of two ``"none"`` calls, with and
    without it: the linear layer never holds its logits, so there is no
    log-sum-exp to take apart; the difference is exact up to the rounding of
    each row's loss.
    """
    opts = lin.opts
    losses = _linear_call(hidden, weight, target, bias, class_weight, lin, "none", 0.0).astype(_F64)
    square_sum = 0.0
    if opts.z_loss:
        with_z = _linear_call(hidden, weight, target, bias, class_weight, lin, "none", opts.z_loss).astype(_F64)
        square_sum = float(np.sum(with_z - losses)) / opts.z_loss
    divisor, valid_rows = _index_totals(target, class_weight, opts.ignore_index, compute_dtype(hidden.dtype))
    return object_block(Partials(float(np.sum(losses)), divisor, square_sum, valid_rows), target.ndim)
