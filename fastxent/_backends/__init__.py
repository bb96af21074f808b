"""The backend registry: one line per backend.

Each entry names a module that defines ``BACKEND``, an object implementing
:class:`fastxent._backends._interface.Backend`. A module that fails to import
(for any reason: Numba missing, an extension that did not build) makes that
backend unavailable, with the error kept as the reason.
"""

from __future__ import annotations

#: Backend name -> module defining ``BACKEND``, in ``auto`` preference order.
BACKEND_MODULES: dict[str, str] = {
    "numba": "fastxent._backends.numba_backend",
    "cython": "fastxent._backends.cython_backend",
    "numpy": "fastxent._backends.numpy_backend",
}

#: The order ``auto`` tries backends in for large inputs: fastest first.
#: Measured with ``python -m fastxent bench --no-latency --repeats 5`` (2 cores,
#: float32 unless noted, GB/s loss / loss+grad): Cython leads on every row, e.g.
#: 8192x1000 13.5 / 10.2 against Numba's 6.9 / 5.8, 65536x10 2.9 / 2.0 against
#: 1.4 / 0.8, 8x21x256x256 6.9 / 4.2 against 4.1 / 2.7, float64 9.5 / 8.1
#: against 7.4 / 6.7.
AUTO_ORDER: tuple[str, ...] = ("cython", "numba", "numpy")

#: Inputs with fewer elements than this prefer the order below. Both orders
#: now start with Cython, which also has no JIT start-up (import + first call
#: 0.16 s against ~0.9 s for Numba with a warm cache).
AUTO_SMALL_BELOW = 1 << 20
AUTO_SMALL_ORDER: tuple[str, ...] = ("cython", "numba", "numpy")
