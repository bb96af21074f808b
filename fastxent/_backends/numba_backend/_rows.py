"""Kernels for rows that are contiguous (class axis last: ``K == 1``).

Each row is swept in L1-sized chunks: the chunk's maximum is found with a
vectorised integer max, then its ``exp`` sum is taken from L1 relative to
the running maximum, rescaling the running sum when the maximum grows (the
online normaliser of Milakov & Gimelshein, at chunk granularity). Memory is
therefore read once for a loss; a gradient reads the row a second time
(from cache for rows up to a few hundred KB) and writes it once.

The shift ``M`` is the row maximum, or 0 for a row with no value above
``-inf``; ``S = sum(exp(x - M)) = 1 + S'``, where ``S'`` (``rest``) sums every
class but the first maximum. ``log(S) = log1p(S')`` and the maximum's
``p - 1 = -S' / S`` stay relatively accurate when one class dominates
(``S'`` below one ulp of 1); a row of ``-inf`` has ``S' = -1`` and a ``+inf``
maximum makes ``S'`` NaN. ``log_softmax = (x - M) - log1p(S')`` keeps full
precision for logits of magnitude 1e4 in float32, where forming
``lse = M + log(S)`` first would lose ~1e-3.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._launch import variants
from ._simd import fast_exp, typed, vector_max

#: Reassociation lets LLVM vectorise sums; no nnan/ninf (they would break -inf masks).
FAST = {"reassoc", "contract"}

#: Elements per chunk: 8 KB of float32, 16 KB of float64, well inside L1.
CHUNK = 2048


@njit(fastmath=FAST, cache=True, inline="always")
def capped(value, cap):  # type: ignore[no-untyped-def]
    """``cap * tanh(value / cap)`` (in float64, rounded once), or ``value`` when ``cap`` is 0."""
    if cap == 0:
        return value
    return typed(value, cap * math.tanh(np.float64(value) / cap))


@njit(fastmath=FAST, cache=True, inline="always")
def cap_slope(value, cap):  # type: ignore[no-untyped-def]
    """``1 - tanh(value / cap)**2`` in float64: from a float32 tanh it would cancel for large ``|value|``."""
    t = math.tanh(np.float64(value) / cap)
    return 1.0 - t * t


# Loops index from 0 over a slice: with ``range(start, stop)`` Numba cannot
# prove ``i >= 0`` and adds a negative-index wraparound select to every load
# (measured: 1.32 instead of 0.88 ns per element for the exp sum).


@njit(fastmath=FAST, cache=True, inline="always")
def _sumexp(chunk, shift):  # type: ignore[no-untyped-def]
    """``(sum of exp(x - shift) over x != shift, count of x == shift)``: the maxima stay out of the sum."""
    # Both sums in the chunk's float type (ties: exact below 2**24, a chunk is 2048): a second,
    # integer accumulator kept LLVM from vectorising the loop (8192x1000 loss 15.5 -> 6.9 GB/s).
    total = typed(chunk, 0.0)
    ties = typed(chunk, 0.0)
    for i in range(chunk.size):
        e = fast_exp(chunk[i] - shift)
        tie = chunk[i] == shift
        total += typed(chunk, 0.0) if tie else e
        ties += typed(chunk, 1.0) if tie else typed(chunk, 0.0)
    return total, int(ties)


@njit(fastmath=FAST, cache=True, inline="always")
def _sumexp_whole(chunk, shift):  # type: ignore[no-untyped-def]
    """``sum of exp(x - shift)``, the maxima included: S, from which S' = S - 1 once S >= 2."""
    total = typed(chunk, 0.0)
    for i in range(chunk.size):
        total += fast_exp(chunk[i] - shift)
    return total


@njit(fastmath=FAST, cache=True, inline="always")
def _sumexp_whole_capped(chunk, shift, cap):  # type: ignore[no-untyped-def]
    total = typed(chunk, 0.0)
    for i in range(chunk.size):
        total += fast_exp(capped(chunk[i], cap) - shift)
    return total


@njit(fastmath=FAST, cache=True, inline="always")
def _sumexp_capped(chunk, shift, cap):  # type: ignore[no-untyped-def]
    total = typed(chunk, 0.0)
    ties = typed(chunk, 0.0)
    for i in range(chunk.size):
        z = capped(chunk[i], cap)
        e = fast_exp(z - shift)
        tie = z == shift
        total += typed(chunk, 0.0) if tie else e
        ties += typed(chunk, 1.0) if tie else typed(chunk, 0.0)
    return total, int(ties)


@njit(fastmath=FAST, cache=True, inline="always")
def _rest(below, ties, shift):  # type: ignore[no-untyped-def]
    """S' from the sum over the elements below the maximum and the count of those equal to it."""
    if shift == np.inf:
        return np.nan
    return below + np.float64(ties - 1)


@njit(fastmath=FAST, cache=True, inline="always")
def _exact_rest(row, shift, cap):  # type: ignore[no-untyped-def]
    """S' of a row whose maximum ``shift`` dominates (S < 2) or is not finite: the maxima left out of the sum."""
    below = 0.0
    ties = 0
    for start in range(0, row.size, CHUNK):
        chunk = row[start : start + CHUNK]
        part, count = _sumexp(chunk, shift) if cap == 0 else _sumexp_capped(chunk, shift, cap)
        below += np.float64(part)
        ties += count
    return _rest(below, ties, shift)


@njit(fastmath=FAST, cache=True, inline="always")
def row_shift_and_sum(row, cap):  # type: ignore[no-untyped-def]
    """Return ``(M, S')`` of the (soft-capped) row, S' in float64; see the module docstring.

    Each chunk is summed in the row's precision (vectorised) and the chunk
    sums are added in float64, so a float32 row of 2**30 classes stays
    accurate (float32 chunk-to-chunk sums drifted by 1e-3 there).
    """
    neg_inf = typed(row, -np.inf)
    if row.size <= CHUNK and cap == 0:
        # One chunk: skip the merging loop, which costs ~90 ns per row (C = 10: 118 -> 30 ns).
        best = vector_max(row)
        shift = best if best != neg_inf else typed(row, 0.0)
        # S >= 2: S' = S - 1 is relatively accurate, and the sum needs no mask for the maxima.
        total = np.float64(_sumexp_whole(row, shift))
        if total >= 2.0:
            return shift, total - 1.0
        return shift, _exact_rest(row, shift, 0.0)
    best = neg_inf
    total = 0.0
    for start in range(0, row.size, CHUNK):
        chunk = row[start : start + CHUNK]
        chunk_max = vector_max(chunk)
        if cap != 0:
            # tanh is monotonic: the capped maximum is the cap of the maximum.
            chunk_max = capped(chunk_max, cap)
        if chunk_max > best:
            total = total * np.float64(fast_exp(best - chunk_max))
            best = chunk_max
        shift = best if best != neg_inf else typed(row, 0.0)
        total += np.float64(_sumexp_whole(chunk, shift) if cap == 0 else _sumexp_whole_capped(chunk, shift, cap))
    shift = best if best != neg_inf else typed(row, 0.0)
    if total >= 2.0:
        return shift, total - 1.0
    return shift, _exact_rest(row, shift, cap)


@njit(fastmath=FAST, cache=True, inline="always")
def row_store_exp(row, out, scratch):  # type: ignore[no-untyped-def]
    """Write ``exp(row - M)`` into ``out`` (which may be ``row``); return ``(M, S')``, S' in float64.

    Used when every ``exp`` is needed again (softmax, gradients): one max
    sweep, then one sweep that stores and sums, so the later scaling sweep
    needs no second ``exp`` (half the arithmetic of recomputing it).
    ``scratch`` is a CHUNK-long buffer when ``out`` is ``row`` (in place),
    else empty: each chunk is copied there first, because LLVM's run-time
    alias check sends a loop whose input and output overlap to its scalar
    version (2x slower, and other roundings than the allocating call). The
    drivers give each part of their prange its own buffer: numba.get_thread_id
    would bake a process-specific address into the on-disk cache (a second
    process loading it crashed).
    """
    best = vector_max(row)
    shift = best if best != typed(row, -np.inf) else typed(row, 0.0)
    total = 0.0
    for start in range(0, row.size, CHUNK):
        chunk = row[start : start + CHUNK]
        if scratch.size:
            copy = scratch[: chunk.size]
            copy[:] = chunk
            chunk = copy
        stored = out[start : start + CHUNK]
        partial = typed(row, 0.0)
        for i in range(chunk.size):
            e = fast_exp(chunk[i] - shift)
            stored[i] = e
            partial += e
        total += partial
    if total >= 2.0:
        return shift, total - 1.0
    # The maximum dominates (or the row is not finite). Its exp is the only 1 (two would make S >= 2):
    # S' sums the others, from the stored exps (the row itself may be gone).
    below = 0.0
    ties = 0
    for i in range(out.size):
        if out[i] == 1:
            ties += 1
        else:
            below += np.float64(out[i])
    return shift, _rest(below, ties, shift)


@njit(fastmath=FAST, cache=True, inline="always")
def row_logsumexp(row, shift, rest):  # type: ignore[no-untyped-def]
    """``M + log1p(S')``, except that a ``+inf`` logit gives ``+inf`` (NaN if the row has a NaN)."""
    if shift == np.inf:
        for i in range(row.size):
            if np.isnan(row[i]):
                return row[i]
        return shift
    return shift + math.log1p(rest)


@njit(fastmath=FAST, cache=True, inline="always")
def row_weighted_sum(row, weight, cap):  # type: ignore[no-untyped-def]
    """``sum(weight * capped(row))`` in float64 (only needed with label smoothing)."""
    acc = 0.0
    for i in range(row.size):
        acc += np.float64(weight[i]) * np.float64(capped(row[i], cap))
    return acc


@njit(fastmath=FAST, cache=True, inline="always")
def row_target_sums(row, target, weight, eps, cap, ref):  # type: ignore[no-untyped-def]
    """``(sum w t', sum w t' (x - ref))`` in float64 for probability targets, ``t' = (1-eps) t + eps/C``.

    With ``ref`` the row's maximum, every term of the moment has one sign:
    the loss ``mass * log1p(S') - moment`` of a target on the maximum keeps
    its tiny value instead of cancelling.
    """
    n = row.size
    uniform = eps / n if n else 0.0
    keep = 1.0 - eps
    mass = 0.0
    moment = 0.0
    for i in range(n):
        wt = np.float64(weight[i]) * (np.float64(target[i]) * keep + uniform)
        mass += wt
        moment += wt * (np.float64(capped(row[i], cap)) - ref)
    return mass, moment


@njit(fastmath=FAST, cache=True, inline="always")
def _scale_stored(out, scale, smooth, weight):  # type: ignore[no-untyped-def]
    """``out = scale * out - smooth * w`` over exps stored by :func:`row_store_exp`."""
    if smooth == 0:
        for i in range(out.size):
            out[i] = out[i] * scale
    else:
        for i in range(out.size):
            out[i] = out[i] * scale - smooth * weight[i]


@njit(fastmath=FAST, cache=True, inline="always")
def _write_grad_capped(row, out, shift, inv_total, a, smooth, weight, cap):  # type: ignore[no-untyped-def]
    """``out = (a * p - smooth * w) * slope`` for soft-capped logits; ``out`` may be ``row``."""
    scale = inv_total * a
    for i in range(row.size):
        value = row[i]
        out[i] = (fast_exp(capped(value, cap) - shift) * scale - smooth * weight[i]) * cap_slope(value, cap)


@njit(fastmath=FAST, cache=True, inline="always")
def _write_grad_probs(row, target, out, shift, inv_total, a, gscale, eps, weight, cap, stored):  # type: ignore[no-untyped-def]
    """``out = a * p - gscale * w * t'`` (times the softcap slope); ``out`` may be ``row``.

    With ``stored``, ``out`` already holds ``exp(row - M)`` (and ``row`` may
    have been overwritten by it).
    """
    n = out.size
    scale = inv_total * a
    uniform = typed(out, eps / n)
    keep = typed(out, 1.0 - eps)
    g = typed(out, gscale)
    if stored:
        for i in range(n):
            out[i] = out[i] * scale - g * weight[i] * (target[i] * keep + uniform)
        return
    for i in range(n):
        raw = row[i]
        value = fast_exp(capped(raw, cap) - shift) * scale - g * weight[i] * (target[i] * keep + uniform)
        out[i] = value * cap_slope(raw, cap)


@variants(FAST)
def logsumexp_rows(x, out):  # type: ignore[no-untyped-def]
    for b in prange(x.shape[0]):
        shift, rest = row_shift_and_sum(x[b], 0.0)
        out[b] = row_logsumexp(x[b], shift, rest)


@variants(FAST)
def softmax_rows(x, out, log, scratch):  # type: ignore[no-untyped-def]
    # One static range of rows per part, each with its own chunk buffer (see row_store_exp).
    parts = scratch.shape[0]
    for part in prange(parts):
        buffer = scratch[part]
        for b in range(part * x.shape[0] // parts, (part + 1) * x.shape[0] // parts):
            row = x[b]
            if log:
                shift, rest = row_shift_and_sum(row, 0.0)
                log_total = math.log1p(rest)
                for i in range(row.size):
                    out[b, i] = (row[i] - shift) - log_total
            else:
                shift, rest = row_store_exp(row, out[b], buffer)
                _scale_stored(out[b], typed(row, 1 / (1.0 + rest)), typed(row, 0.0), row)


@njit(fastmath=FAST, cache=True, inline="always")
def _plain_row_loss(row, y, weight):  # type: ignore[no-untyped-def]
    """``(loss, lse)`` of ``row`` for class ``y``: no smoothing, cap or gradient.

    Returns the values for the caller to write (writing them in here was
    slower), and gathers the target logit before the sum so that the load
    overlaps it.
    """
    w_y = np.float64(weight[y])
    x_y = row[y]
    shift, rest = row_shift_and_sum(row, typed(row, 0.0))
    log_total = math.log1p(rest)
    row_lse = np.float64(shift) + log_total
    value = w_y * (np.float64(shift - x_y) + log_total)
    return value, row_lse


@variants(FAST)
def xent_index_rows(x, target, weight, ignore_index, eps, cap, z_coef, loss, lse, grad, gscale, with_grad, scratch):  # type: ignore[no-untyped-def]
    n_rows, n_classes = x.shape
    if not with_grad and eps == 0 and cap == 0:
        # The plain loss gets its own loop: without the options' branches the
        # row is cheaper (docs/performance.md, "65536 x 10"). The general
        # loop keeps its body inline; in helpers its gradient was slower.
        for b in prange(n_rows):
            y = target[b]
            if y == ignore_index or y < 0 or y >= n_classes:
                loss[b] = 0
                lse[b] = 0
            else:
                loss[b], lse[b] = _plain_row_loss(x[b], y, weight)
        return
    weight_sum = 0.0
    for c in range(n_classes):
        weight_sum += np.float64(weight[c])
    smooth = eps / n_classes if n_classes else 0.0
    # One static range of rows per part, each with its own chunk buffer (see row_store_exp).
    parts = scratch.shape[0]
    for part in prange(parts):
        buffer = scratch[part]
        for b in range(part * n_rows // parts, (part + 1) * n_rows // parts):
            y = target[b]
            if y == ignore_index or y < 0 or y >= n_classes:
                loss[b] = 0
                lse[b] = 0
                if with_grad:
                    grad[b, :] = 0
                continue
            row = x[b]
            raw_y = row[y]
            x_y = capped(raw_y, cap)
            w_y = np.float64(weight[y])
            weighted = row_weighted_sum(row, weight, cap) if eps > 0 else 0.0
            store = with_grad and cap == 0
            if store:
                shift, rest = row_store_exp(row, grad[b], buffer)
            else:
                shift, rest = row_shift_and_sum(row, cap)
            total = 1.0 + rest
            log_total = math.log1p(rest)
            row_lse = np.float64(shift) + log_total
            value = (1.0 - eps) * w_y * (np.float64(shift - x_y) + log_total)
            if eps > 0:
                value += smooth * (weight_sum * row_lse - weighted)
            loss[b] = value
            lse[b] = row_lse
            if with_grad:
                g = gscale[b]
                a = g * ((1.0 - eps) * w_y + smooth * weight_sum)
                if z_coef != 0:
                    a += g * 2.0 * z_coef * row_lse
                slope_y = cap_slope(raw_y, cap) if cap != 0 else 1.0
                if store:
                    _scale_stored(grad[b], typed(row, a / total), typed(row, g * smooth), weight)
                else:
                    _write_grad_capped(
                        row, grad[b], shift, typed(row, 1 / total), typed(row, a), typed(row, g * smooth), weight, cap
                    )
                c = g * (1.0 - eps) * w_y
                if x_y == shift:
                    # exp(x_y - M) = 1: a / S - c = ((a - c) - c * S') / S, with no cancellation.
                    grad[b, y] = (
                        ((a - c) - c * rest) / total - g * smooth * (np.float64(weight[y]) if eps > 0 else 0.0)
                    ) * slope_y
                else:
                    grad[b, y] -= c * slope_y


@variants(FAST)
def xent_probs_rows(x, target, weight, eps, cap, z_coef, loss, lse, grad, gscale, with_grad, scratch):  # type: ignore[no-untyped-def]
    # One static range of rows per part, each with its own chunk buffer (see row_store_exp).
    parts = scratch.shape[0]
    for part in prange(parts):
        buffer = scratch[part]
        for b in range(part * x.shape[0] // parts, (part + 1) * x.shape[0] // parts):
            row = x[b]
            best = capped(vector_max(row), cap) if row.size else typed(row, 0.0)
            ref = np.float64(best) if np.isfinite(best) else 0.0
            mass, moment = row_target_sums(row, target[b], weight, eps, cap, ref)
            # Read before the exps may overwrite the row (in place).
            first = np.argmax(row) if with_grad and row.size else 0
            z_first = capped(row[first], cap) if with_grad and row.size else typed(row, 0.0)
            slope_first = cap_slope(row[first], cap) if with_grad and row.size and cap != 0 else 1.0
            store = with_grad and cap == 0
            if store:
                shift, rest = row_store_exp(row, grad[b], buffer)
            else:
                shift, rest = row_shift_and_sum(row, cap)
            total = 1.0 + rest
            row_lse = np.float64(shift) + math.log1p(rest)
            loss[b] = mass * ((np.float64(shift) - ref) + math.log1p(rest)) - moment
            lse[b] = row_lse
            if with_grad:
                g = gscale[b]
                a = g * mass
                if z_coef != 0:
                    a += g * 2.0 * z_coef * row_lse
                _write_grad_probs(
                    row, target[b], grad[b], shift, typed(row, 1 / total), typed(row, a), g, eps, weight, cap, store
                )
                if z_first == shift:
                    # The maximum's exp is 1: a / S - g t'_m = ((a - g t'_m) - g t'_m S') / S, with no cancellation.
                    mass_m = (
                        g * np.float64(weight[first]) * (np.float64(target[b, first]) * (1.0 - eps) + eps / row.size)
                    )
                    value = ((a - mass_m) - mass_m * rest) / total
                    grad[b, first] = value * slope_first
