"""Class-index targets summarised before a kernel runs (:meth:`Backend.index_target_stats`).

One pass of integer compares and adds that LLVM vectorises: NumPy's version
(four comparisons into boolean arrays, then counts) took 3 ms on a million
int64 targets (16x2x256x256), two thirds of the Cython backend's whole loss.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._interface import FloatArray, IntArray
from ._launch import call_with_cache_fallback


@njit(nogil=True, cache=True)
def _counts(target, n_classes, ignore_index):  # type: ignore[no-untyped-def]
    """``(valid, out of range)`` counts of the 1-D ``target``; 0/1 arithmetic, no branches."""
    valid = 0
    bad = 0
    for i in range(target.size):
        y = target[i]
        kept = np.int64(y != ignore_index)
        inside = np.int64((y >= 0) & (y < n_classes))
        valid += kept * inside
        bad += kept - kept * inside
    return valid, bad


@njit(nogil=True, cache=True)
def _weight_sum(target, weight, n_classes, ignore_index):  # type: ignore[no-untyped-def]
    """``sum(weight[y])`` in float64 over the valid targets ``y``, in order."""
    total = 0.0
    for i in range(target.size):
        y = target[i]
        if y != ignore_index and 0 <= y < n_classes:
            total += np.float64(weight[y])
    return total


def index_target_stats(
    target: IntArray, weight: FloatArray | None, n_classes: int, ignore_index: int
) -> tuple[int, float, int]:
    """``(valid targets, summed weight of their classes, targets out of range)``; see the Backend protocol."""
    flat = target.reshape(-1)
    valid, bad = call_with_cache_fallback(_counts, flat, n_classes, ignore_index)
    if weight is None:
        weight_sum = float(valid)
    else:
        weight_sum = float(call_with_cache_fallback(_weight_sum, flat, weight, n_classes, ignore_index))
    return int(valid), weight_sum, int(bad)
