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

#: The order ``auto`` falls back to where its measured table (:mod:`._auto`) has no entry for a call's
#: shape class, or names a backend that is not available here. Cython first: it has no JIT start-up
#: (import + first call 0.16 s, against ~0.7 s for Numba with a warm cache and ~20 s with an empty
#: one), so the table names Numba only where it measured 5 % faster.
AUTO_ORDER: tuple[str, ...] = ("cython", "numba", "numpy")
