"""SciPy's ``logsumexp(x, b=b, return_sign=True)``, the scaled log-sum-exp, over axis 1 of ``x (B, C, K)``.

One position (a row, or one of a tile's columns) at a time, as SciPy's
``_logsumexp`` and the Cython backend's ``scaled_lse_position``: the maxima's
weights ``m`` stay out of the sum (``S = m * (1 + s)``) so that ``log1p(s)``
keeps its precision; where that is not finite (an infinite maximum, every
weight zero) the plain sum decides. ``b`` may have any strides (a broadcast
scale has zero strides: it is never laid out at ``x``'s size).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._launch import variants
from ._rows import FAST


@njit(fastmath=FAST, cache=True, inline="always")
def _sign(value):  # type: ignore[no-untyped-def]
    if value > 0:
        return 1.0
    if value < 0:
        return -1.0
    if value == 0:
        return 0.0
    return np.nan


@njit(fastmath=FAST, cache=True, inline="always")
def _position(x, b, r, k, out, sign):  # type: ignore[no-untyped-def]
    a_max = -np.inf
    for i in range(x.shape[1]):
        if b[r, i, k] != 0:
            value = np.float64(x[r, i, k])
            if np.isnan(value):  # b == 0 excludes an entry, even a NaN one; any other NaN wins
                out[r, k] = np.nan
                sign[r, k] = np.nan
                return
            a_max = max(a_max, value)
    m = 0.0
    s = 0.0
    direct = 0.0
    for i in range(x.shape[1]):
        w = np.float64(b[r, i, k])
        if w == 0:
            continue
        value = np.float64(x[r, i, k])
        direct += w * math.exp(value)
        if value == a_max:
            m += w
        else:
            s += w * math.exp(value - a_max)
    if s != 0:
        s = s / m
    signed = _sign(s + 1) * _sign(m)
    if s < -1:
        s = -s - 2
    result = math.log1p(s) + math.log(abs(m)) + a_max
    if np.isfinite(result):
        out[r, k] = result
        sign[r, k] = signed
    else:
        out[r, k] = math.log(abs(direct))
        sign[r, k] = _sign(direct)


@variants(FAST)
def logsumexp_scaled(x, b, out, sign):  # type: ignore[no-untyped-def]
    for r in prange(x.shape[0]):
        for k in range(x.shape[2]):
            _position(x, b, r, k, out, sign)
