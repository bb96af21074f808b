"""The Cython + OpenMP backend: compiled at install time, no JIT latency.

Importing fails (and the backend is reported unavailable with the reason)
when the extension was not built. The backend's methods are the compiled
entry points themselves: a call crosses no Python frame of this module.
"""

from __future__ import annotations

from .._interface import FloatArray
from . import _kernels  # compiled; typed by _kernels.pyi

#: Whether the extension was compiled with OpenMP, and the SIMD variant in use.
OPENMP: bool = _kernels.OPENMP
ISA: str = _kernels.ISA


class CythonBackend:
    """Cython kernels; see :class:`fastxent._backends._interface.Backend`."""

    name = "cython"
    details = f"OpenMP {'on' if OPENMP else 'off'}, SIMD {ISA}"

    logsumexp = staticmethod(_kernels.logsumexp)
    logsumexp_scaled = staticmethod(_kernels.logsumexp_scaled)
    index_target_stats = staticmethod(_kernels.index_target_stats)
    cross_entropy_index = staticmethod(_kernels.cross_entropy_index)
    cross_entropy_probs = staticmethod(_kernels.cross_entropy_probs)

    @staticmethod
    def softmax(x: FloatArray, out: FloatArray, n_threads: int) -> None:
        _kernels.softmax(x, out, False, n_threads)

    @staticmethod
    def log_softmax(x: FloatArray, out: FloatArray, n_threads: int) -> None:
        _kernels.softmax(x, out, True, n_threads)


BACKEND = CythonBackend()
