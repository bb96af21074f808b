"""BLAS for the fused linear cross-entropy: SciPy's ``gemm`` and the threads BLAS runs on.

Why SciPy's ``gemm`` rather than NumPy's ``matmul``: :mod:`fastxent._linear`.
BLAS and the kernels take turns on the same cores, so threadpoolctl gives
BLAS the kernels' thread count for the length of a call.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["blas_threads", "scipy_gemm"]


@functools.cache
def scipy_gemm(dtype: np.dtype) -> Callable[..., np.ndarray] | None:
    """SciPy's BLAS ``?gemm`` for ``dtype`` (``c = alpha * op(a) @ op(b) + beta * c``); None without SciPy."""
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return blas.sgemm if dtype == np.float32 else blas.dgemm  # type: ignore[no-any-return]


@functools.cache
def _blas_pools() -> Any:
    """threadpoolctl's handle on the BLAS libraries (SciPy's included); None without threadpoolctl."""
    scipy_gemm(np.dtype(np.float32))  # loads SciPy's BLAS, if any, before the libraries are listed
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def blas_threads(n_threads: int) -> Iterator[None]:
    """Run BLAS on ``n_threads`` threads inside the block, so that BLAS and the kernels use the same cores.

    BLAS pools are process-wide: other threads calling BLAS meanwhile get the same limit.
    """
    pools = _blas_pools()
    if pools is None:
        yield
        return
    with pools.limit(limits=n_threads):
        yield
