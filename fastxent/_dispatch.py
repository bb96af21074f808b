"""Choosing a backend and a thread count.

Precedence for the backend: :func:`use_backend` (per thread / context) >
:func:`set_backend` (process-wide) > ``FASTXENT_BACKEND`` > ``auto``.
Environment variables are read once, at import; a bad value raises on first
use, naming the variable, so that ``import fastxent`` itself never fails.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from collections.abc import Iterator

import numpy as np

from ._backends import AUTO_ORDER, AUTO_SMALL_BELOW, AUTO_SMALL_ORDER, BACKEND_MODULES
from ._backends._interface import Backend

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "backend_choice",
    "backend_errors",
    "current_backend",
    "get_backend",
    "get_num_threads",
    "set_backend",
    "set_num_threads",
    "use_backend",
]

_ENV_BACKEND = os.environ.get("FASTXENT_BACKEND", "").strip().lower() or "auto"
_ENV_THREADS = os.environ.get("FASTXENT_NUM_THREADS", "").strip()

_VALID_NAMES = ("auto", *BACKEND_MODULES)

_load_lock = threading.Lock()
_loaded: dict[str, Backend] = {}
_load_errors: dict[str, str] = {}

_process_choice: str | None = None
_context_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastxent_backend", default=None)
_process_threads: int | None = None
#: The default thread count, resolved on first use and again after a fork or ``set_num_threads(None)``.
_default_threads: int | None = None
#: (choice, small input) -> backend: a choice resolves the same way for the life of the process.
_resolved: dict[tuple[str, bool], Backend] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot be used on this machine."""


def _load(name: str) -> Backend | None:
    """Import backend ``name`` once; remember why if that fails."""
    with _load_lock:
        if name in _loaded:
            return _loaded[name]
        if name in _load_errors:
            return None
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
            backend: Backend = module.BACKEND
        except Exception as exc:  # any failure means "unavailable", with the reason kept
            _load_errors[name] = f"{type(exc).__name__}: {exc}"
            return None
        _loaded[name] = backend
        return backend


def available_backends() -> list[str]:
    """Names of the backends usable here, fastest first.

    Returns
    -------
    list of str
        A subset of ``["numba", "cython", "numpy"]``; ``"numpy"`` is always in it.

    Examples
    --------
    >>> import fastxent
    >>> "numpy" in fastxent.available_backends()
    True
    """
    return [name for name in AUTO_ORDER if _load(name) is not None]


def backend_errors() -> dict[str, str]:
    """Why each unavailable backend could not be loaded, by name."""
    available_backends()
    return dict(_load_errors)


def _check_name(name: object, source: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in _VALID_NAMES:
        raise ValueError(
            f"{source} must be one of {', '.join(_VALID_NAMES)}; got {name!r} "
            f"(available here: {', '.join(available_backends())})"
        )
    return name.strip().lower()


def _resolve(name: str, source: str, size: int | None = None) -> str:
    """Turn a valid name (or ``auto``) into the name of a loaded backend."""
    if name == "auto":
        order = AUTO_SMALL_ORDER if size is not None and size < AUTO_SMALL_BELOW else AUTO_ORDER
        return next(candidate for candidate in order if _load(candidate) is not None)
    if _load(name) is None:
        raise BackendUnavailableError(
            f"{source}={name!r}: the {name} backend is unavailable "
            f"({_load_errors[name]}); available here: {', '.join(available_backends())}"
        )
    return name


def _choice() -> tuple[str, str]:
    """The backend name in force for this thread (``auto`` included) and where it came from."""
    chosen = _context_choice.get()
    if chosen is not None:
        return chosen, "use_backend"
    if _process_choice is not None:
        return _process_choice, "set_backend"
    return _check_name(_ENV_BACKEND, "FASTXENT_BACKEND"), "FASTXENT_BACKEND"


def backend_choice() -> str:
    """The backend name in force for this thread, ``"auto"`` included, without loading a backend.

    What work sent to other threads or processes (a Dask graph's tasks) needs
    in order to run with the caller's choice: :func:`use_backend` and
    :func:`set_backend` do not reach them.

    Returns
    -------
    str
        One of ``"auto"``, ``"numba"``, ``"cython"``, ``"numpy"``.

    Raises
    ------
    ValueError
        If ``FASTXENT_BACKEND`` holds an unknown name.
    """
    return _choice()[0]


def _size_of(input: object) -> int | None:
    if input is None:
        return None
    if isinstance(input, int | np.integer) and not isinstance(input, bool):
        return int(input)
    return int(np.size(input))  # type: ignore[arg-type]


def get_backend(input: object = None, *, size: int | None = None) -> str:
    """Name of the backend a call in this thread will use.

    ``auto`` prefers the Cython backend below ``2**20`` elements (no JIT
    start-up) and Numba from there on, so the answer depends on the input.

    Parameters
    ----------
    input : array_like or int, optional
        The input of the call (or its number of elements). Without it, the
        choice for large inputs is returned.
    size : int, optional
        The number of elements, as a keyword (same as passing an int).

    Returns
    -------
    str
        One of :func:`available_backends`.

    Raises
    ------
    ValueError
        If ``FASTXENT_BACKEND`` holds an unknown name.
    BackendUnavailableError
        If the requested backend cannot be used here.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> with fastxent.use_backend("numpy"):
    ...     fastxent.get_backend(np.zeros((128, 10)))
    'numpy'
    """
    name, source = _choice()
    return _resolve(name, source, _size_of(input) if size is None else size)


def current_backend(size: int) -> Backend:
    """The backend object :func:`get_backend` names for an input of ``size`` elements."""
    chosen = _context_choice.get() or _process_choice or _ENV_BACKEND
    key = (chosen, size < AUTO_SMALL_BELOW)
    backend = _resolved.get(key)
    if backend is None:
        name, source = _choice()
        backend = _loaded[_resolve(name, source, size)]
        _resolved[key] = backend
    return backend


def backend_with(operation: str, size: int) -> Backend:
    """The backend for an input of ``size`` elements that has ``operation``.

    That is :func:`current_backend`'s, unless it lacks the operation: then
    the first backend of the ``auto`` order that has it (the NumPy reference
    has every operation), as bottleneck sends what C cannot do to its slow
    functions.
    """
    backend = current_backend(size)
    if hasattr(backend, operation):
        return backend
    order = AUTO_SMALL_ORDER if size < AUTO_SMALL_BELOW else AUTO_ORDER
    return next(loaded for loaded in map(_load, order) if loaded is not None and hasattr(loaded, operation))


def set_backend(name: str) -> None:
    """Choose the backend for the whole process.

    Parameters
    ----------
    name : {"auto", "numba", "cython", "numpy"}
        ``"auto"`` picks the fastest available backend.

    Raises
    ------
    ValueError
        If ``name`` is not a known backend name.
    BackendUnavailableError
        If that backend cannot be used here.
    """
    global _process_choice
    checked = _check_name(name, "name")
    _resolve(checked, "name")
    _process_choice = checked


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Use backend ``name`` inside a ``with`` block, in this thread only.

    The choice is held in a :mod:`contextvars` variable, so other threads (and
    other asyncio tasks) keep their own backend.

    Parameters
    ----------
    name : {"auto", "numba", "cython", "numpy"}

    Yields
    ------
    str
        The name of the backend in use inside the block.

    Examples
    --------
    >>> import fastxent
    >>> with fastxent.use_backend("numpy") as name:
    ...     print(name, fastxent.get_backend())
    numpy numpy
    """
    checked = _check_name(name, "name")
    resolved = _resolve(checked, "name")
    token = _context_choice.set(checked)
    try:
        yield resolved
    finally:
        _context_choice.reset(token)


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``), rounded up; None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def _usable_cpus() -> int:
    """CPUs this process may use: affinity, cgroup quota, and a valid ``OMP_NUM_THREADS``.

    An invalid ``OMP_NUM_THREADS`` (0, negative, not a number) is ignored, as
    GNU OpenMP ignores it.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, limit)
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        count = min(count, int(omp))
    return count


def _check_threads(n: object, source: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{source} must be an integer >= 1; got {n!r}")
    return n


def get_num_threads() -> int:
    """Number of threads the kernels may use.

    :func:`set_num_threads` wins over ``FASTXENT_NUM_THREADS``, which wins over
    the number of CPUs this process may run on (its affinity mask, its cgroup
    CPU quota, and ``OMP_NUM_THREADS`` when that is a positive integer).
    That last number is worked out once, and again in a forked child and
    after ``set_num_threads(None)``: call that after changing the affinity or
    ``OMP_NUM_THREADS`` at run time. Values above the number of cores are
    accepted; each backend uses at most as many threads as it can start
    (Numba: ``NUMBA_NUM_THREADS``).
    """
    global _default_threads
    if _process_threads is not None:
        return _process_threads
    if _default_threads is None:
        if _ENV_THREADS:
            if not _ENV_THREADS.isdigit() or int(_ENV_THREADS) < 1:
                raise ValueError(f"FASTXENT_NUM_THREADS must be an integer >= 1; got {_ENV_THREADS!r}")
            _default_threads = int(_ENV_THREADS)
        else:
            _default_threads = _usable_cpus()
    return _default_threads


def set_num_threads(n: int | None) -> None:
    """Set the number of threads the kernels may use, for the whole process.

    Parameters
    ----------
    n : int or None
        At least 1; None goes back to the default of :func:`get_num_threads`,
        worked out afresh. Results do not depend on it: kernels split work by
        rows and sum over rows in a fixed order.
    """
    global _process_threads, _default_threads
    if n is None:
        _process_threads = _default_threads = None
        return
    _process_threads = _check_threads(n, "n")


def _forget_default_threads() -> None:
    global _default_threads
    _default_threads = None


# A forked child may run on other CPUs (a pool pinned per worker, a new cgroup).
os.register_at_fork(after_in_child=_forget_default_threads)
