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

from ._backends import AUTO_ORDER, AUTO_SMALL_BELOW, AUTO_SMALL_ORDER, BACKEND_MODULES
from ._backends._interface import Backend

__all__ = [
    "BackendUnavailableError",
    "available_backends",
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


def get_backend(size: int | None = None) -> str:
    """Name of the backend a call in this thread will use.

    Parameters
    ----------
    size : int, optional
        Number of elements of the call's input. ``auto`` prefers the Cython
        backend below ``2**20`` elements (no JIT start-up) and Numba above;
        without ``size``, the choice for large inputs is returned.

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
    """
    chosen = _context_choice.get()
    if chosen is not None:
        return _resolve(chosen, "use_backend", size)
    if _process_choice is not None:
        return _resolve(_process_choice, "set_backend", size)
    env_name = _check_name(_ENV_BACKEND, "FASTXENT_BACKEND")
    return _resolve(env_name, "FASTXENT_BACKEND", size)


def current_backend(size: int | None = None) -> Backend:
    """The backend object :func:`get_backend` names for an input of ``size`` elements."""
    return _loaded[get_backend(size)]


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
    Values above the number of cores are accepted; each backend uses at most
    as many threads as it can start (Numba: ``NUMBA_NUM_THREADS``).
    """
    if _process_threads is not None:
        return _process_threads
    if _ENV_THREADS:
        if not _ENV_THREADS.isdigit() or int(_ENV_THREADS) < 1:
            raise ValueError(f"FASTXENT_NUM_THREADS must be an integer >= 1; got {_ENV_THREADS!r}")
        return int(_ENV_THREADS)
    return _usable_cpus()


def set_num_threads(n: int) -> None:
    """Set the number of threads the kernels may use, for the whole process.

    Parameters
    ----------
    n : int
        At least 1. Results do not depend on it: kernels split work by rows
        and never reduce across rows.
    """
    global _process_threads
    _process_threads = _check_threads(n, "n")
