"""Hostile calls straight into one backend's kernels, for out-of-bounds detectors.

Run as ``python bounds_probe.py BACKEND``. The API rejects out-of-range
targets before any kernel runs; here the kernels get them anyway, and must
treat them as ignored rows without touching memory outside the arrays. The
caller runs this under Numba's ``NUMBA_BOUNDSCHECK=1`` or with the Cython
extension built with AddressSanitizer, so any stray access aborts.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

from fastxent._backends import BACKEND_MODULES
from fastxent._backends._interface import LossParams


def probe(name: str) -> int:
    backend = importlib.import_module(BACKEND_MODULES[name]).BACKEND
    rng = np.random.default_rng(0)
    calls = 0
    for dtype in (np.float32, np.float64):
        for b, c, k in [
            (3, 1, 1),
            (5, 7, 1),
            (4, 2049, 1),
            (2, 5000, 1),
            (3, 7, 5),
            (2, 3, 1037),
            (1, 300, 17),
            (2, 0, 1),
            (2, 0, 3),
            # Short rows, lanes across rows: blocks of 8 (float32) / 4 (float64) rows, tails of every size.
            (13, 2, 1),
            (19, 3, 1),
            (67, 5, 1),
            (29, 12, 1),
            (21, 32, 1),
        ]:
            x = rng.standard_normal((b, c, k)).astype(dtype)
            target = rng.integers(0, max(c, 1), (b, k))
            target.reshape(-1)[::2] = [-7, c, c + 1000, 2**40, -(2**40)][: target.reshape(-1)[::2].size] + [0] * max(
                0, target.reshape(-1)[::2].size - 5
            )
            probs = rng.random((b, c, k)).astype(dtype)
            weight = rng.random(c).astype(dtype) + 0.5
            for params in (LossParams(), LossParams(ignore_index=3, label_smoothing=0.2, softcap=4.0, z_coef=0.1)):
                for with_grad, weights in ((False, weight), (True, weight), (False, None), (True, None)):
                    loss = np.full((b, k), np.nan, dtype)
                    lse = np.full((b, k), np.nan, dtype)
                    grad = np.full((b, c, k), np.nan, dtype) if with_grad else None
                    # Per-row upstream gradients with weights, one scalar without.
                    scale = (np.ones((b, k)) if weights is not None else 0.5) if with_grad else None
                    totals = np.empty(2)
                    backend.index_target_stats(target.astype(np.int64), weights, c, params.ignore_index)
                    backend.index_target_stats(target.astype(np.int32), weights, c, params.ignore_index)
                    backend.cross_entropy_index(
                        x, target.astype(np.int64), weights, params, loss, lse, grad, scale, totals, 2
                    )
                    bad = (target < 0) | (target >= c)
                    assert (loss[bad] == 0).all() and (lse[bad] == 0).all(), "an out-of-range target was not ignored"
                    if with_grad:
                        assert (grad.transpose(0, 2, 1)[bad] == 0).all()
                    inplace = x.copy()
                    backend.cross_entropy_index(
                        inplace, target.astype(np.int32), weights, params, loss, lse, inplace if with_grad else None,
                        scale, None, 1,
                    )  # fmt: skip
                    if c:
                        backend.cross_entropy_probs(x, probs, weights, params, loss, lse, grad, scale, totals, 2)
                    calls += 3
            out = np.empty_like(x)
            backend.softmax(x, out, 2)
            backend.log_softmax(x, out, 1)
            backend.logsumexp(x, np.empty((b, k), dtype), 2)
            # A scale broadcast along rows and positions (zero strides) and a full one.
            scale = np.broadcast_to(rng.uniform(-1, 1, (1, c, 1)).astype(dtype), x.shape)
            for b_rows, threads in ((scale, 2), (np.ascontiguousarray(scale), 1)):
                backend.logsumexp_scaled(x, b_rows, np.empty((b, k), dtype), np.empty((b, k), dtype), threads)
            calls += 5
    return calls


if __name__ == "__main__":
    print("calls", probe(sys.argv[1]))
