"""Fused linear cross-entropy at a size asv runs in seconds: time and peak memory, with the baselines.

``fused`` is ``fastxent._linear.linear_cross_entropy(_and_grad)``; ``matmuls``
the same matrix products alone at full size (the floor the fused call is
held to); ``materialised`` the logits made whole and passed to
``fastxent.cross_entropy(_and_grad)`` (what the fused call saves memory
against). The issue's full-size cases are ``python -m fastxent._bench_linear``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import fastxent

#: (N, H, V): 1024 rows of 256 features, 8000 classes (logits: 32.8 MB in float32).
SHAPE = (1024, 256, 8000)


def _inputs(dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_rows, n_hidden, n_classes = SHAPE
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n_rows, n_hidden), dtype=np.float32).astype(dtype)
    weight = (rng.standard_normal((n_classes, n_hidden), dtype=np.float32) / np.sqrt(n_hidden)).astype(dtype)
    return hidden, weight, rng.integers(0, n_classes, n_rows)


def _fused(operation: str, hidden: np.ndarray, weight: np.ndarray, target: np.ndarray) -> Callable[[], object]:
    try:
        from fastxent import _linear
    except ImportError:  # a commit before the fused linear cross-entropy
        raise NotImplementedError from None
    if operation == "fwd":
        return lambda: _linear.linear_cross_entropy(hidden, weight, target)
    return lambda: _linear.linear_cross_entropy_and_grad(hidden, weight, target)


def _matmuls(operation: str, hidden: np.ndarray, weight: np.ndarray) -> Callable[[], object]:
    def products() -> object:
        logits = hidden @ weight.T
        if operation != "fwd":
            return logits @ weight, logits.T @ hidden
        return logits

    return products


def _materialised(operation: str, hidden: np.ndarray, weight: np.ndarray, target: np.ndarray) -> Callable[[], object]:
    def through_logits() -> object:
        logits = hidden @ weight.T
        if operation == "fwd":
            return fastxent.cross_entropy(logits, target)
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, inplace=True)
        return loss, grad @ weight, grad.T @ hidden

    return through_logits


class LinearCrossEntropy:
    params = (["fwd", "fwd+bwd"], ["float32", "float64"], ["fused", "matmuls", "materialised"])
    param_names = ["operation", "dtype", "method"]
    timeout = 300

    def setup(self, operation: str, dtype: str, method: str) -> None:
        hidden, weight, target = _inputs(dtype)
        if method == "fused":
            self.call = _fused(operation, hidden, weight, target)
        elif method == "matmuls":
            self.call = _matmuls(operation, hidden, weight)
        else:
            self.call = _materialised(operation, hidden, weight, target)
        self.call()  # Numba compiles (or loads its cache) outside the measurement

    def time_linear_cross_entropy(self, operation: str, dtype: str, method: str) -> None:
        self.call()

    def peakmem_linear_cross_entropy(self, operation: str, dtype: str, method: str) -> None:
        self.call()
