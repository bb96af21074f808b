"""Serial and parallel variants of each kernel, and when to use which.

Every driver is written once with ``prange``; :func:`variants` compiles it
twice, with ``parallel=False`` (``prange`` is then ``range``) and
``parallel=True``. Both are ``nogil`` and cached on disk, under distinct
names so the two cache entries never overwrite each other.

Thread and fork safety. Numba's OpenMP layer aborts a child forked after a
parallel region ran, and its workqueue layer aborts on concurrent launches.
So, unless the user chose a layer (``NUMBA_THREADING_LAYER``), fastxent asks
for ``workqueue``, which is fork-safe, and never launches two parallel
kernels at once: a call that finds another parallel launch in progress runs
the serial variant instead of waiting. Results are identical either way,
since kernels never reduce across rows.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable
from typing import Any

import numba
from numba.np.ufunc import parallel as _numba_parallel

#: Fewer elements than this run serially: a parallel launch costs more than it saves.
SERIAL_BELOW = 1 << 16

_parallel_launch = threading.Lock()


def _choose_threading_layer() -> None:
    if "NUMBA_THREADING_LAYER" in os.environ or _numba_parallel._is_initialized:
        return
    numba.config.THREADING_LAYER = "workqueue"


_choose_threading_layer()


def _renamed(function: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    """A copy of ``function`` with its own qualified name (and so its own cache file)."""
    copy = types.FunctionType(
        function.__code__, function.__globals__, function.__name__ + suffix, function.__defaults__, function.__closure__
    )
    copy.__qualname__ = function.__qualname__ + suffix
    copy.__module__ = function.__module__
    copy.__doc__ = function.__doc__
    return copy


class Kernel:
    """A driver compiled serial and parallel; call it with the thread budget first."""

    def __init__(self, function: Callable[..., Any], fastmath: set[str]) -> None:
        options = dict(nogil=True, cache=True, fastmath=fastmath, error_model="numpy")
        self.serial = numba.njit(parallel=False, **options)(_renamed(function, "_serial"))
        self.parallel = numba.njit(parallel=True, **options)(_renamed(function, "_parallel"))

    def __call__(self, n_threads: int, n_elements: int, *args: Any) -> None:
        usable = min(n_threads, numba.config.NUMBA_NUM_THREADS)
        if usable > 1 and n_elements >= SERIAL_BELOW and _parallel_launch.acquire(blocking=False):
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
