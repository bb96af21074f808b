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
AUTO_ORDER: tuple[str, ...] = ("numba", "cython", "numpy")

#: Inputs with fewer elements than this prefer the order below: Cython has no
#: JIT start-up (import + first call 0.28 s against Numba's 1.3 s with a warm
#: cache, measured on the 2-core CI machine) and the same throughput.
AUTO_SMALL_BELOW = 1 << 20
AUTO_SMALL_ORDER: tuple[str, ...] = ("cython", "numba", "numpy")
