"""The Cython + OpenMP backend: compiled at install time, no JIT latency.

Importing fails (and the backend is reported unavailable with the reason)
when the extension was not built.
"""

from __future__ import annotations

import numpy as np

from .._interface import FloatArray, IntArray, LossParams
from . import _kernels  # compiled; typed by _kernels.pyi

#: Whether the extension was compiled with OpenMP, and the SIMD variant in use.
OPENMP: bool = _kernels.OPENMP
ISA: str = _kernels.ISA


def _dummy(dtype: np.dtype, ndim: int) -> np.ndarray:
    """A placeholder for an output that is not wanted (kernels never touch it)."""
    return np.zeros((1,) * ndim, dtype=dtype)


class CythonBackend:
    """Cython kernels; see :class:`fastxent._backends._interface.Backend`."""

    name = "cython"
    details = f"OpenMP {'on' if OPENMP else 'off'}, SIMD {ISA}"

    def logsumexp(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        _kernels.logsumexp(x, out, n_threads)

    def softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        _kernels.softmax(x, out, False, n_threads)

    def log_softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        _kernels.softmax(x, out, True, n_threads)

    def cross_entropy_index(
        self,
        logits: FloatArray,
        target: IntArray,
        weight: FloatArray,
        params: LossParams,
        loss: FloatArray,
        lse: FloatArray,
        grad: FloatArray | None,
        grad_scale: FloatArray | None,
        n_threads: int,
    ) -> None:
        with_grad = grad is not None and grad_scale is not None
        _kernels.cross_entropy_index(
            logits, target, weight, params.ignore_index, params.label_smoothing, params.softcap, params.z_coef,
            loss, lse, grad if grad is not None and with_grad else _dummy(logits.dtype, 3),
            grad_scale if grad_scale is not None and with_grad else _dummy(np.dtype(np.float64), 2),
            with_grad, n_threads,
        )  # fmt: skip

    def cross_entropy_probs(
        self,
        logits: FloatArray,
        target: FloatArray,
        weight: FloatArray,
        params: LossParams,
        loss: FloatArray,
        lse: FloatArray,
        grad: FloatArray | None,
        grad_scale: FloatArray | None,
        n_threads: int,
    ) -> None:
        with_grad = grad is not None and grad_scale is not None
        _kernels.cross_entropy_probs(
            logits, target, weight, params.label_smoothing, params.softcap, params.z_coef,
            loss, lse, grad if grad is not None and with_grad else _dummy(logits.dtype, 3),
            grad_scale if grad_scale is not None and with_grad else _dummy(np.dtype(np.float64), 2),
            with_grad, n_threads,
        )  # fmt: skip


BACKEND = CythonBackend()
