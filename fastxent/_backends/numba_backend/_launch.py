"""Serial and parallel variants of each kernel, and when to use which.

Every driver is written once with ``prange``; :func:`variants` compiles it
twice, with ``parallel=False`` (``prange`` is then ``range``) and
``parallel=True``. Both are ``nogil`` and cached on disk, under distinct
names so the two cache entries never overwrite each other.

Thread and fork safety, whatever threading layer Numba loads (fastxent
leaves the choice to Numba and ``NUMBA_THREADING_LAYER``):

- Numba's OpenMP layer terminates a child forked after a parallel region ran,
  at the child's first parallel launch. A forked child therefore only ever
  runs the serial variants.
- The workqueue layer aborts on concurrent launches. fastxent never launches
  two parallel kernels at once: a call that finds another parallel launch in
  progress runs the serial variant instead of waiting (which also avoids
  oversubscribing the cores).

Results are identical either way, since kernels never reduce across rows.
The OpenMP layer launches in ~3 us here, workqueue in ~45 us.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import types
import warnings
from collections.abc import Callable
from typing import Any

import numba
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher
from numba.np.ufunc import parallel as _numba_parallel

#: Numba's configuration module (its type stubs do not list the settings read here).
NUMBA_CONFIG: Any = numba.config

#: Fewer elements than this run serially. Measured on 2 cores (float32, C = 100,
#: OpenMP layer): 2 threads are 0.96x as fast at 16K elements, 1.07x at 32K, 1.24x at 64K.
SERIAL_BELOW = 1 << 15

_parallel_launch = threading.Lock()
_forked_child = False


def _after_fork_in_child() -> None:
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def threading_layer() -> str:
    """The layer Numba loaded, or what it will try first if no parallel kernel ran yet."""
    if _numba_parallel._is_initialized:
        return str(numba.threading_layer())
    return f"{NUMBA_CONFIG.THREADING_LAYER} (not started)"


def _renamed(function: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    """A copy of ``function`` with its own qualified name (and so its own cache file)."""
    copy = types.FunctionType(
        function.__code__, function.__globals__, function.__name__ + suffix, function.__defaults__, function.__closure__
    )
    copy.__qualname__ = function.__qualname__ + suffix
    copy.__module__ = function.__module__
    copy.__doc__ = function.__doc__
    return copy


class NumbaCacheWarning(RuntimeWarning):
    """Numba's on-disk cache could not be read; fastxent compiled without it."""


_KERNELS: list[Kernel] = []


def _raised_by_numba_cache(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return any(frame.filename.endswith(os.path.join("numba", "core", "caching.py")) for frame in frames)


def _disable_caching(exc: BaseException) -> None:
    """Stop every fastxent dispatcher from reading (or writing) Numba's cache, and say why."""
    dispatchers = [d for kernel in _KERNELS for d in (kernel.serial, kernel.parallel)]
    for name, module in list(sys.modules.items()):
        if name.startswith("fastxent._backends.numba_backend"):
            dispatchers += [value for value in vars(module).values() if isinstance(value, CPUDispatcher)]
    for dispatcher in dispatchers:
        dispatcher._cache = NullCache()
    warnings.warn(
        f"fastxent: Numba's cache ({NUMBA_CONFIG.CACHE_DIR or '__pycache__'}) could not be read "
        f"({type(exc).__name__}: {exc}); compiling without it. Delete the cache directory to rebuild it.",
        NumbaCacheWarning,
        stacklevel=3,
    )


def call_with_cache_fallback(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``; if Numba raised while loading its on-disk cache (a truncated or foreign
    file), caching is turned off for every fastxent kernel, with a warning, and the call is made again."""
    try:
        return function(*args)
    except Exception as exc:
        if not _raised_by_numba_cache(exc):
            raise
        _disable_caching(exc)
        return function(*args)


class Kernel:
    """A driver compiled serial and parallel; call it with the thread budget first."""

    def __init__(self, function: Callable[..., Any], fastmath: set[str]) -> None:
        options: dict[str, Any] = dict(nogil=True, cache=True, fastmath=fastmath, error_model="numpy")
        jit: Any = numba.njit
        self.serial = jit(parallel=False, **options)(_renamed(function, "_serial"))
        self.parallel = jit(parallel=True, **options)(_renamed(function, "_parallel"))
        _KERNELS.append(self)

    def __call__(self, n_threads: int, n_elements: int, *args: Any) -> None:
        call_with_cache_fallback(self._launch, n_threads, n_elements, *args)

    def _launch(self, n_threads: int, n_elements: int, *args: Any) -> None:
        usable = min(n_threads, NUMBA_CONFIG.NUMBA_NUM_THREADS)
        wanted = usable > 1 and n_elements >= SERIAL_BELOW and not _forked_child
        if wanted and _parallel_launch.acquire(blocking=False):
            try:
                numba.set_num_threads(usable)
                self.parallel(*args)
            finally:
                _parallel_launch.release()
        else:
            self.serial(*args)


def variants(fastmath: set[str]) -> Callable[[Callable[..., Any]], Kernel]:
    """Decorator: ``@variants(FAST)`` turns a ``prange`` driver into a :class:`Kernel`."""

    def wrap(function: Callable[..., Any]) -> Kernel:
        return Kernel(function, fastmath)

    return wrap
