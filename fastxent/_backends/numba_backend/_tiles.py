"""Kernels for a class axis that is not last (``K > 1``), without a transposed copy.

For ``(N, C, H, W)`` logits the row of position ``(b, k)`` is strided by
``K``, but the positions themselves are contiguous. A tile holds ``width``
consecutive positions of one ``b``; every loop runs over classes outside and
positions inside, so the inner loops are contiguous, elementwise and
vectorised (per-position maxima need no reduction, so no integer trick).
Tiles are long runs of positions (see :func:`tile_width`) and the unit of
parallel work. Per-position values mirror those of :mod:`._rows`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._launch import variants
from ._rows import FAST, cap_slope, capped
from ._simd import fast_exp, log1p_f64, nan_max, typed

#: Positions per tile at most: a float32 class run of 4 KB, one page.
TILE_MAX = 1024

#: Positions per tile at least, when tiles are narrowed to give every thread one.
TILE_MIN = 64

#: Classes summed in the logits' precision before adding into a float64 total.
CLASS_BLOCK = 256


def tile_width(n_rows: int, n_positions: int, n_threads: int) -> int:
    """Positions per tile: ``TILE_MAX``, halved down to ``TILE_MIN`` while there are fewer tiles than threads.

    Long runs per class measured fastest, even though the tile no longer fits
    in cache for the gradient's second sweep: 2 threads, float32, times
    ``np.sum`` (two runs): 2x1000x32x32 loss 0.06-0.17 at 16 positions (a
    32 KB tile), 0.43-0.50 at 256, 0.59-0.67 at 1024, loss+grad 0.07 ->
    0.22 -> 0.32; 8x21x256x256 the same within noise at 384 and 1024. A
    class of a narrow tile is one cache line a page or more from the last,
    which neither the hardware prefetchers nor a short vector loop hide.
    Software prefetch of the classes ahead gained nothing at 1024 positions
    (two alternated bench runs), so there is none.
    """
    width = TILE_MAX
    while width > TILE_MIN and n_rows * -(-n_positions // width) < n_threads:
        width //= 2
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
def _column_stats(x, b, k, cap):  # type: ignore[no-untyped-def]
    """M and S' of position ``k`` by two exact scalar sweeps (the maximum, then the sum): the rules for
    non-finite logits (all -inf, +inf, NaN) that the online sweep leaves to this pass."""
    best = typed(x, -np.inf)
    for c in range(x.shape[1]):
        value = x[b, c, k]
        best = value if value > best else best
    best = capped(best, cap) if cap != 0 else best
    best = best if best != -np.inf else typed(x, 0.0)
    return best, _column_rest(x, b, k, cap, best)


@njit(fastmath=FAST, cache=True, inline="always")
def _online_step(value, m, s):  # type: ignore[no-untyped-def]
    """The running maximum ``m`` and S' ``s`` of a position after one more class's ``value``.

    With d = value - M and e = exp(-|d|): a new maximum (d > 0) gives
    S' = (S' + 1) e and M = value; otherwise S' = S' + e. One exp per logit,
    each logit read once; a tie adds exp(0) = 1, as the two-sweep sums count it.
    A NaN makes M and S' NaN, and the position goes to the exact pass.
    Scalars in and out: with the arrays passed in, their reference counting
    stayed in the caller's loop as calls, and LLVM did not vectorise it.
    """
    d = value - m
    e = fast_exp(-abs(d))
    return nan_max(value, m), (s * e + e if d > 0 else s + e)


@njit(fastmath=FAST, cache=True, inline="always")
def _online_classes(x, b, k0, width, c0, c1, cap, run, part):  # type: ignore[no-untyped-def]
    """Classes ``c0 .. c1`` of the tile through :func:`_online_step`, class by class (contiguous runs)."""
    for c in range(c0, c1):
        column = x[b, c, k0 : k0 + width]
        if cap == 0:
            for k in range(width):
                run[k], part[k] = _online_step(column[k], run[k], part[k])
        else:
            for k in range(width):
                run[k], part[k] = _online_step(capped(column[k], cap), run[k], part[k])


@njit(fastmath=FAST, cache=True, inline="always")
def tile_shift_and_sum(x, b, k0, width, cap, shift, rest):  # type: ignore[no-untyped-def]
    """Fill ``shift[:width]`` and the float64 ``rest[:width]`` (M and S' of each position; see :mod:`._rows`).

    One online sweep (:func:`_online_step`) over blocks of ``CLASS_BLOCK``
    classes, each block in the logits' precision from S' = 0 (vectorised),
    the blocks added in float64 with the total so far scaled by
    exp(M before the block - M after it): float32 totals stay accurate for a
    million classes (a float32 sum over all of them drifted by 5e-5). S' is
    summed directly, so it stays relatively accurate where the maximum
    dominates. A position whose M or S' is not finite gets the exact scalar
    pass of :func:`_column_stats`, whose rules it then follows. The Cython
    backend's ``fx_tile_stats`` is the same sweep.
    """
    n_classes = x.shape[1]
    if n_classes == 0:  # nothing to start the sweep from: M = 0, S' = -1 (log-sum-exp -inf)
        for k in range(width):
            shift[k] = 0
            rest[k] = -1.0
        return
    run = shift
    start = np.empty(width, dtype=x.dtype)
    part = np.empty(width, dtype=x.dtype)
    first = x[b, 0, k0 : k0 + width]
    for k in range(width):
        run[k] = capped(first[k], cap) if cap != 0 else first[k]
    for c0 in range(0, n_classes, CLASS_BLOCK):
        for k in range(width):
            start[k] = run[k]
            part[k] = 0
        _online_classes(x, b, k0, width, max(c0, 1), min(c0 + CLASS_BLOCK, n_classes), cap, run, part)
        if c0 == 0:
            for k in range(width):
                rest[k] = part[k]
        else:
            for k in range(width):
                before = rest[k]
                if before != 0 and start[k] != run[k]:
                    before *= np.float64(fast_exp(start[k] - run[k]))
                rest[k] = before + np.float64(part[k])
    # v - v is NaN exactly where v is not finite: one vectorised scan, then the rare positions one by one.
    bad = 0.0
    for k in range(width):
        bad += np.float64(shift[k] - shift[k]) + (rest[k] - rest[k])
    if bad == bad:
        return
    for k in range(width):
        if not (np.isfinite(shift[k]) and np.isfinite(rest[k])):
            shift[k], rest[k] = _column_stats(x, b, k0 + k, cap)


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
    if n_classes == 0:  # every target is out of range; nothing to read
        for k in range(w):
            loss[b, k0 + k] = 0
            lse[b, k0 + k] = 0
        return
    # Branch-free per position (selects, not ifs): the target being the maximum is a coin toss with two
    # classes, and its mispredicted branches cost more than the sweep (16x2x256x256).
    for k in range(w):
        y = target[b, k0 + k]
        valid = (y != ignore_index) & (y >= 0) & (y < n_classes)
        row = y if valid else 0
        raw_y = x[b, row, k0 + k]
        x_y = capped(raw_y, cap)
        w_y = np.float64(weight[row])
        log_total = logs[k]
        row_lse = np.float64(shift[k]) + log_total
        value = (1.0 - eps) * w_y * (np.float64(shift[k] - x_y) + log_total)
        if eps > 0:
            value += smooth_coef * (weight_sum * row_lse - weighted[k])
        loss[b, k0 + k] = value if valid else 0.0
        lse[b, k0 + k] = row_lse if valid else 0.0
        g = gscale[b, k0 + k] if with_grad else 0.0
        g = g if valid else 0.0
        a = g * ((1.0 - eps) * w_y + smooth_coef * weight_sum)
        if z_coef != 0:
            a += g * 2.0 * z_coef * row_lse
        scale[k] = a / (1.0 + total[k]) if valid else 0.0
        smooth[k] = g * smooth_coef
        # Kept for the target correction below, after x may have been overwritten.
        slope = cap_slope(raw_y, cap) if cap != 0 else 1.0
        c_y = g * (1.0 - eps) * w_y
        weighted[k] = c_y * slope
        # A target on the maximum: exp(x_y - M) = 1, so a / S - c = ((a - c) - c S') / S, with no cancellation.
        on_top = (((a - c_y) - c_y * total[k]) / (1.0 + total[k]) - smooth[k] * w_y) * slope
        top[k] = on_top if valid & (x_y == shift[k]) else np.nan
    if not with_grad:
        return
    _tile_grad(x, grad, b, k0, w, shift, scale, smooth, weight, cap)
    for k in range(w):
        y = target[b, k0 + k]
        if y == ignore_index or y < 0 or y >= n_classes:
            for c in range(n_classes):
                grad[b, c, k0 + k] = 0
        else:
            current = grad[b, y, k0 + k]
            grad[b, y, k0 + k] = current - weighted[k] if np.isnan(top[k]) else top[k]


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
