"""Kernels for a class axis that is not last (``K > 1``), without a transposed copy.

For ``(N, C, H, W)`` logits the row of position ``(b, k)`` is strided by
``K``, but the positions themselves are contiguous. A tile holds ``width``
consecutive positions of one ``b``; every loop runs over classes outside and
positions inside, so the inner loops are contiguous, elementwise and
vectorised (per-position maxima need no reduction, so no integer trick).
Tiles are sized to stay in cache for the second sweep, and are the unit of
parallel work. Per-position values mirror those of :mod:`._rows`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._launch import variants
from ._rows import FAST, cap_slope, capped
from ._simd import fast_exp, log1p_f64, typed

#: Bytes of logits per tile: a tile is swept twice, the second time from L1/L2.
TILE_BYTES = 32 * 1024

#: Classes summed in the logits' precision before adding into a float64 total.
CLASS_BLOCK = 256


def tile_width(n_classes: int, n_positions: int, itemsize: int) -> int:
    """Positions per tile: a multiple of 16 between 16 and 1024 fitting ``TILE_BYTES``."""
    width = TILE_BYTES // max(1, n_classes * itemsize)
    width = max(16, min(1024, width - width % 16))
    return max(1, min(width, n_positions))


@njit(fastmath=FAST, cache=True, inline="always")
def _column_rest(x, b, k, cap, shift):  # type: ignore[no-untyped-def]
    """S' of position ``k`` exactly: the exps of every class but the first maximum, in float64."""
    if shift == np.inf:
        return np.nan
    others = 0.0
    seen = False
    for c in range(x.shape[1]):
        value = capped(x[b, c, k], cap) if cap != 0 else x[b, c, k]
        if not seen and value == shift:
            seen = True
        else:
            others += np.float64(fast_exp(value - shift))
    return others if seen else others - 1.0


@njit(fastmath=FAST, cache=True, inline="always")
def tile_shift_and_sum(x, b, k0, width, cap, shift, rest):  # type: ignore[no-untyped-def]
    """Fill ``shift[:width]`` and the float64 ``rest[:width]`` (M and S' of each position; see :mod:`._rows`).

    Sums run in the logits' precision over blocks of ``CLASS_BLOCK`` classes
    (vectorised) and are added up in float64, so float32 totals stay accurate
    for a million classes (a float32 sum over all of them drifted by 5e-5).
    S is summed with the maximum's exp (1) in it: from S >= 2, S' = S - 1 is
    relatively accurate; a position whose maximum dominates (S < 2), or that
    is not finite, gets the exact scalar pass of :func:`_column_rest`.
    """
    total = rest
    neg_inf = typed(x, -np.inf)
    for k in range(width):
        shift[k] = neg_inf
    for c in range(x.shape[1]):
        column = x[b, c, k0 : k0 + width]
        for k in range(width):
            value = column[k]
            shift[k] = value if value > shift[k] else shift[k]
    for k in range(width):
        best = capped(shift[k], cap) if cap != 0 else shift[k]
        shift[k] = best if best != neg_inf else typed(x, 0.0)
        total[k] = 0.0
    partial = np.empty(width, dtype=x.dtype)
    for c0 in range(0, x.shape[1], CLASS_BLOCK):
        for k in range(width):
            partial[k] = 0
        for c in range(c0, min(c0 + CLASS_BLOCK, x.shape[1])):
            column = x[b, c, k0 : k0 + width]
            if cap == 0:
                for k in range(width):
                    partial[k] += fast_exp(column[k] - shift[k])
            else:
                for k in range(width):
                    partial[k] += fast_exp(capped(column[k], cap) - shift[k])
        for k in range(width):
            total[k] += partial[k]
    for k in range(width):
        rest[k] = total[k] - 1.0 if total[k] >= 2.0 else _column_rest(x, b, k0 + k, cap, shift[k])


@njit(fastmath=FAST, cache=True, inline="always")
def _log1p_rests(total, out, w):  # type: ignore[no-untyped-def]
    """``out[:w] = log1p`` of each position's S', in one vectorised loop (libm's, position by position, took a
    fifth of a tile's time: 8x21x256x256 float32); returns ``out``."""
    for k in range(w):
        out[k] = log1p_f64(total[k])
    return out


@njit(cache=True, inline="always")
def _units(x, width):  # type: ignore[no-untyped-def]
    tiles = (x.shape[2] + width - 1) // width
    return tiles, x.shape[0] * tiles


@njit(fastmath=FAST, cache=True, inline="always")
def _scratch(x, width):  # type: ignore[no-untyped-def]
    return np.empty(width, dtype=x.dtype), np.empty(width, dtype=x.dtype)


@njit(fastmath=FAST, cache=True, inline="always")
def _stats_buffers(x, width):  # type: ignore[no-untyped-def]
    """Per-position shifts (logits' dtype) and totals (float64)."""
    return np.empty(width, dtype=x.dtype), np.empty(width)


@variants(FAST)
def logsumexp_tiles(x, out, width):  # type: ignore[no-untyped-def]
    tiles, units = _units(x, width)
    for unit in prange(units):
        b, k0 = unit // tiles, (unit % tiles) * width
        w = min(width, x.shape[2] - k0)
        shift, total = _stats_buffers(x, w)
        tile_shift_and_sum(x, b, k0, w, 0.0, shift, total)
        logs = _log1p_rests(total, np.empty(w), w)
        for k in range(w):
            if shift[k] == np.inf:
                value = shift[k]
                for c in range(x.shape[1]):
                    if np.isnan(x[b, c, k0 + k]):
                        value = x[b, c, k0 + k]
                out[b, k0 + k] = value
            else:
                out[b, k0 + k] = shift[k] + logs[k]


@variants(FAST)
def softmax_tiles(x, out, log, width):  # type: ignore[no-untyped-def]
    tiles, units = _units(x, width)
    for unit in prange(units):
        b, k0 = unit // tiles, (unit % tiles) * width
        w = min(width, x.shape[2] - k0)
        shift, total = _stats_buffers(x, w)
        scale, _ = _scratch(x, w)
        tile_shift_and_sum(x, b, k0, w, 0.0, shift, total)
        if log:
            _log1p_rests(total, scale, w)
        else:
            for k in range(w):
                scale[k] = 1 / (1.0 + total[k])
        for c in range(x.shape[1]):
            column = x[b, c, k0 : k0 + w]
            target = out[b, c, k0 : k0 + w]
            if log:
                for k in range(w):
                    target[k] = (column[k] - shift[k]) - scale[k]
            else:
                for k in range(w):
                    target[k] = fast_exp(column[k] - shift[k]) * scale[k]


@njit(fastmath=FAST, cache=True, inline="always")
def _tile_grad(x, grad, b, k0, w, shift, scale, smooth, weight, cap):  # type: ignore[no-untyped-def]
    """``grad = scale * exp(x - M) - smooth * w_c`` (times the softcap slope) over the tile."""
    for c in range(x.shape[1]):
        column = x[b, c, k0 : k0 + w]
        out = grad[b, c, k0 : k0 + w]
        w_c = weight[c]
        if cap == 0:
            for k in range(w):
                out[k] = fast_exp(column[k] - shift[k]) * scale[k] - smooth[k] * w_c
        else:
            for k in range(w):
                value = column[k]
                out[k] = (fast_exp(capped(value, cap) - shift[k]) * scale[k] - smooth[k] * w_c) * cap_slope(value, cap)


@njit(fastmath=FAST, cache=True, inline="always")
def xent_index_tile(
    x, target, weight, ignore_index, eps, cap, z_coef, loss, lse, grad, gscale, with_grad, b, k0, w, weight_sum
):  # type: ignore[no-untyped-def]
    """Loss (and gradient) of positions ``k0 .. k0 + w`` of ``x[b]``; see :mod:`._rows` for the values."""
    n_classes = x.shape[1]
    smooth_coef = eps / n_classes if n_classes else 0.0
    shift, total = _stats_buffers(x, w)
    scale, smooth = _scratch(x, w)
    weighted = np.zeros(w)
    top = np.full(w, np.nan)  # the gradient of a target that is the maximum (NaN: it is not)
    tile_shift_and_sum(x, b, k0, w, cap, shift, total)
    logs = _log1p_rests(total, np.empty(w), w)
    if eps > 0:
        for c in range(n_classes):
            w_c = np.float64(weight[c])
            column = x[b, c, k0 : k0 + w]
            for k in range(w):
                weighted[k] += w_c * np.float64(capped(column[k], cap))
    for k in range(w):
        y = target[b, k0 + k]
        if y == ignore_index or y < 0 or y >= n_classes:
            loss[b, k0 + k] = 0
            lse[b, k0 + k] = 0
            scale[k] = 0
            smooth[k] = 0
            continue
        raw_y = x[b, y, k0 + k]
        x_y = capped(raw_y, cap)
        w_y = np.float64(weight[y])
        log_total = logs[k]
        row_lse = np.float64(shift[k]) + log_total
        value = (1.0 - eps) * w_y * (np.float64(shift[k] - x_y) + log_total)
        if eps > 0:
            value += smooth_coef * (weight_sum * row_lse - weighted[k])
        loss[b, k0 + k] = value
        lse[b, k0 + k] = row_lse
        g = gscale[b, k0 + k] if with_grad else 0.0
        a = g * ((1.0 - eps) * w_y + smooth_coef * weight_sum)
        if z_coef != 0:
            a += g * 2.0 * z_coef * row_lse
        scale[k] = a / (1.0 + total[k])
        smooth[k] = g * smooth_coef
        # Kept for the target correction below, after x may have been overwritten.
        slope = cap_slope(raw_y, cap) if cap != 0 else 1.0
        c_y = g * (1.0 - eps) * w_y
        weighted[k] = c_y * slope
        if x_y == shift[k]:
            # exp(x_y - M) = 1: a / S - c = ((a - c) - c S') / S, with no cancellation.
            top[k] = (((a - c_y) - c_y * total[k]) / (1.0 + total[k]) - smooth[k] * w_y) * slope
    if not with_grad:
        return
    _tile_grad(x, grad, b, k0, w, shift, scale, smooth, weight, cap)
    for k in range(w):
        y = target[b, k0 + k]
        if y == ignore_index or y < 0 or y >= n_classes:
            for c in range(n_classes):
                grad[b, c, k0 + k] = 0
        elif not np.isnan(top[k]):
            grad[b, y, k0 + k] = top[k]
        else:
            grad[b, y, k0 + k] -= weighted[k]


@njit(cache=True, inline="always")
def weight_total(weight):  # type: ignore[no-untyped-def]
    total = 0.0
    for c in range(weight.size):
        total += np.float64(weight[c])
    return total


@variants(FAST)
def xent_index_tiles(x, target, weight, ignore_index, eps, cap, z_coef, loss, lse, grad, gscale, with_grad, width):  # type: ignore[no-untyped-def]
    weight_sum = weight_total(weight)
    tiles, units = _units(x, width)
    for unit in prange(units):
        b, k0 = unit // tiles, (unit % tiles) * width
        w = min(width, x.shape[2] - k0)
        xent_index_tile(
            x, target, weight, ignore_index, eps, cap, z_coef, loss, lse, grad, gscale, with_grad, b, k0, w, weight_sum
        )


@variants(FAST)
def xent_probs_tiles(x, target, weight, eps, cap, z_coef, loss, lse, grad, gscale, with_grad, width):  # type: ignore[no-untyped-def]
    n_classes = x.shape[1]
    uniform = eps / n_classes if n_classes else 0.0
    keep = 1.0 - eps
    tiles, units = _units(x, width)
    for unit in prange(units):
        b, k0 = unit // tiles, (unit % tiles) * width
        w = min(width, x.shape[2] - k0)
        shift, total = _stats_buffers(x, w)
        scale, _ = _scratch(x, w)
        mass = np.zeros(w)
        moment = np.zeros(w)
        top = np.full(w, -1)  # the class of a dominant maximum, whose gradient is written apart
        top_grad = np.zeros(w)
        tile_shift_and_sum(x, b, k0, w, cap, shift, total)
        for c in range(n_classes):
            w_c = np.float64(weight[c])
            column = x[b, c, k0 : k0 + w]
            probs = target[b, c, k0 : k0 + w]
            for k in range(w):
                wt = w_c * (np.float64(probs[k]) * keep + uniform)
                mass[k] += wt
                # The moment about the maximum: a target on it keeps its tiny loss.
                moment[k] += wt * (np.float64(capped(column[k], cap)) - np.float64(shift[k]))
        logs = _log1p_rests(total, np.empty(w), w)
        for k in range(w):
            log_total = logs[k]
            row_lse = np.float64(shift[k]) + log_total
            loss[b, k0 + k] = mass[k] * log_total - moment[k]
            lse[b, k0 + k] = row_lse
            g = gscale[b, k0 + k] if with_grad else 0.0
            a = g * mass[k]
            if z_coef != 0:
                a += g * 2.0 * z_coef * row_lse
            scale[k] = a / (1.0 + total[k])
            if with_grad and total[k] < 1.0:
                # The maximum dominates: its p - t' as in the rows, found before x may be overwritten.
                for m in range(n_classes):
                    raw = x[b, m, k0 + k]
                    if capped(raw, cap) == shift[k]:
                        mass_m = g * np.float64(weight[m]) * (np.float64(target[b, m, k0 + k]) * keep + uniform)
                        top_grad[k] = ((a - mass_m) - mass_m * total[k]) / (1.0 + total[k])
                        top_grad[k] *= cap_slope(raw, cap) if cap != 0 else 1.0
                        top[k] = m
                        break
        if not with_grad:
            continue
        t_keep = typed(x, keep)
        t_uniform = typed(x, uniform)
        upstream = gscale[b, k0 : k0 + w]
        for c in range(n_classes):
            w_c = weight[c]
            column = x[b, c, k0 : k0 + w]
            probs = target[b, c, k0 : k0 + w]
            out = grad[b, c, k0 : k0 + w]
            for k in range(w):
                raw = column[k]
                value = fast_exp(capped(raw, cap) - shift[k]) * scale[k] - typed(x, upstream[k]) * w_c * (
                    probs[k] * t_keep + t_uniform
                )
                if cap != 0:
                    value *= cap_slope(raw, cap)
                out[k] = value
        for k in range(w):
            if top[k] >= 0:
                grad[b, top[k], k0 + k] = top_grad[k]
