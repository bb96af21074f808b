"""Class blocks: the class axis in chunks, a two-pass online log-sum-exp per row.

One task per (row block, class block) reduces its block to statistics;
one task per row block combines them; the gradient is a second pass over
the class blocks with each row's statistics broadcast.

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

import numpy as np

from .. import _normalize
from .._reduction import Partials
from .._validate import check_index_range
from ._blocks import (
    F64,
    Options,
    compute_dtype,
    compute_weight,
    grad_scale,
    index_totals,
    object_block,
    softcapped,
)

N_STATS = 3
_LSE, _A, _B = range(N_STATS)


def _rows(x: np.ndarray) -> np.ndarray:
    """Logits (or probabilities) ``(B, C, ...)`` / ``(C,)`` as ``(B, C, K)``."""
    if x.ndim == 1:
        return x.reshape(1, x.shape[0], 1)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _class_weight_rows(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, start: int, opts: Options, n_classes: int
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray, float]:
    """For class indices: ``(w_block, hit, local, w_hit, eps / C)`` of a class block.

    ``hit`` marks rows whose (non-ignored) target falls in the block, ``local``
    is that target's column in the block, ``w_hit = (1 - eps) * w_t`` on hit rows.
    """
    b, width, k = x.shape
    w = compute_weight(weight, x.dtype)
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
    rows = softcapped(_rows(x.astype(compute_dtype(x.dtype), copy=False)), opts.softcap)
    b, width, k = rows.shape
    lo = int(start.reshape(-1)[0])
    out = np.empty((b, k, N_STATS))
    out[..., _LSE] = _normalize.logsumexp(rows, axis=1)
    eps = opts.label_smoothing
    with np.errstate(all="ignore"):
        if probabilities:
            w = compute_weight(weight, rows.dtype)
            q = _rows(target).astype(rows.dtype, copy=False)
            if eps:
                q = q * (1 - eps) + eps / n_classes
            if w is not None:
                q = q * w.astype(rows.dtype)[None, :, None]
            out[..., _A] = np.sum(q, axis=1, dtype=F64)
            out[..., _B] = np.sum(q * rows, axis=1, dtype=F64)
        else:
            w, hit, local, w_hit, smooth = _class_weight_rows(rows, target, weight, lo, opts, n_classes)
            x_t = np.take_along_axis(rows, local[:, None, :], axis=1)[:, 0, :] if width else np.zeros((b, k))
            out[..., _A] = w_hit
            out[..., _B] = np.where(hit, w_hit * x_t, 0.0)
            if eps:
                w_sum = float(width) if w is None else float(np.sum(w))
                weighted = np.sum(rows, axis=1, dtype=F64) if w is None else np.einsum("bck,c->bk", rows, w)
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
        divisor, valid_rows = index_totals(target, weight, opts.ignore_index, dtype)
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
    scale, z_coef = grad_scale(opts, None if totals is None else totals.item(), upstream)
    compute = compute_dtype(x.dtype)
    raw = _rows(x.astype(compute, copy=False))
    rows = softcapped(raw, opts.softcap)
    b, width, k = rows.shape
    lse = stats[..., _LSE].reshape(b, k)
    coef = stats[..., _A].reshape(b, k)
    if z_coef:
        coef = coef + 2 * z_coef * lse
    lse_block = block_stats[..., _LSE].reshape(b, k)
    row_scale = np.broadcast_to(np.asarray(scale, F64), stats.shape[:-1]).reshape(b, k)
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
            w = compute_weight(weight, compute)
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
            grad = grad * (1 - np.tanh(raw.astype(F64) / opts.softcap) ** 2)
    return grad.astype(dtype, copy=False).reshape(x.shape)
