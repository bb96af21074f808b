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
from typing import TypeVar

import numpy as np

from ._backends import AUTO_ORDER, BACKEND_MODULES, _auto
from ._backends._interface import Backend
from ._layout import RowLayout
from ._threads import get_num_threads, set_num_threads

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

_VALID_NAMES = ("auto", *BACKEND_MODULES)
#: get_backend's ``axis`` when not given: the operation's default (None is a valid axis there).
_DEFAULT_AXIS = object()

_load_lock = threading.Lock()
_loaded: dict[str, Backend] = {}
_load_errors: dict[str, str] = {}

_process_choice: str | None = None
_context_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastxent_backend", default=None)
#: A named choice -> backend: each resolves the same way for the life of the process.
_resolved: dict[str, Backend] = {}
#: auto's choice by a call's (dtype char, operation, classes, positions, size); cleared when full.
_by_call: dict[tuple[object, ...], Backend] = {}
_BY_CALL_LIMIT = 4096
_Value = TypeVar("_Value")
#: auto starts a JIT backend its table names only once a call has named it (so it has compiled) or
#: once the calls it would have sped up add up to this many seconds saved: a short script never waits
#: for the compiler (~0.7 s with a warm on-disk cache, ~20 s with an empty one), a training loop does.
AUTO_JIT_AFTER_SECONDS = 2.0
#: Seconds that auto's held-back JIT picks would have saved so far in this process.
_jit_saving = 0.0
#: Whether the JIT backend has run a kernel (named by a call) or auto has earned starting it.
_jit_started = False
#: Calls auto holds back from the JIT backend: call key -> (the backend they run on, seconds saved each).
_held_back: dict[tuple[object, ...], tuple[Backend, float]] = {}
#: The operations whose input has its class axis at 1 (torch's layout); the others' is last.
_CLASS_AXIS_ONE = ("loss", "loss+grad")


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
    """Names of the backends usable here, in ``auto``'s fallback order.

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


def _resolve(name: str, source: str, key: _auto.Key | None = None) -> str:
    """Turn a valid name (or ``auto``, for a call of table key ``key``) into the name of a loaded backend.

    ``key`` None gives auto's fallback order (no table entry, or a pick held back).
    """
    if name == "auto":
        measured = None if key is None else _auto.measured_choice(key)
        order = AUTO_ORDER if measured is None else (measured, *AUTO_ORDER)
        return next(candidate for candidate in order if _load(candidate) is not None)
    if _load(name) is None:
        raise BackendUnavailableError(
            f"{source}={name!r}: the {name} backend is unavailable "
            f"({_load_errors[name]}); available here: {', '.join(available_backends())}"
        )
    return name


def _held(key: _auto.Key) -> bool:
    """Whether auto holds back the table's pick for ``key``: a JIT backend not started yet."""
    return not _jit_started and _auto.measured_choice(key) in _auto.JIT_BACKENDS


def _start_jit() -> None:
    """From now on auto takes the JIT backend where its table names it."""
    global _jit_started
    _jit_started = True
    _held_back.clear()


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


def _key_of(input: object, size: int | None, operation: str, axis: object) -> _auto.Key | None:
    """auto's table key for :func:`get_backend`'s arguments; None without an input."""
    if operation not in _auto.OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(_auto.OPERATIONS)}; got {operation!r}")
    if size is None and isinstance(input, int | np.integer) and not isinstance(input, bool):
        size = int(input)
    if size is not None:
        return _auto.table_key("float32", operation, size, 1, size)
    if input is None:
        return None
    # The shape and dtype, without converting the input (a Dask array, a torch tensor).
    shape_of, dtype_of = getattr(input, "shape", None), getattr(input, "dtype", None)
    if shape_of is None or dtype_of is None:
        array = np.asarray(input)
        shape_of, dtype_of = array.shape, array.dtype
    shape = tuple(shape_of)
    try:
        dtype = np.dtype(dtype_of)
    except TypeError:  # a dtype NumPy does not know (torch's): computed in float32 unless float64
        dtype = np.dtype(np.float64 if "float64" in str(dtype_of) else np.float32)
    compute = "float64" if dtype.kind == "f" and dtype.itemsize >= 8 else "float32"
    if operation in _CLASS_AXIS_ONE:
        class_axis = (0 if len(shape) < 2 else 1) if axis is _DEFAULT_AXIS else axis
        b, n_classes, k = RowLayout(shape or (1,), class_axis).bck
    else:
        b, n_classes, k = RowLayout(shape, -1 if axis is _DEFAULT_AXIS else axis).bck
    return _auto.table_key(compute, operation, n_classes, k, b * n_classes * k)


def get_backend(
    input: object = None, *, size: int | None = None, operation: str = "loss", axis: object = _DEFAULT_AXIS
) -> str:
    """Name of the backend a call in this thread will use.

    ``auto`` takes the backend measured fastest for the call's shape class
    (dtype, operation, layout, number of classes, size; the table in
    :mod:`fastxent._backends._auto`), so the answer depends on the
    input and the operation.

    Parameters
    ----------
    input : array_like or int, optional
        The input of the call; only its shape and dtype are read. An int
        stands for a 1-D float32 input of that many elements (one row of that
        many classes). Without it, the choice where the table has no entry
        is returned.
    size : int, optional
        Same as passing an int: one row of ``size`` classes, not any array
        of ``size`` elements (pass the array for that).
    operation : {"loss", "loss+grad", "softmax", "log_softmax", "logsumexp"}, default "loss"
        The call.
    axis : int, tuple of int or None, optional
        As the call's: the class axis of the losses (by default 1, or 0 for a
        1-D input; the last axis for the TensorFlow-style losses), the axes
        of the others (by default the last; None means all).

    Returns
    -------
    str
        One of :func:`available_backends`.

    Raises
    ------
    ValueError
        If ``FASTXENT_BACKEND`` holds an unknown name, or ``operation`` is unknown.
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
    key = _key_of(input, size, operation, axis)
    return _resolve(name, source, None if key is None or _held(key) else key)


def backend_for(operation: str, dtype: np.dtype, n_classes: int, positions: int, size: int) -> Backend:
    """The backend object for a call of ``operation``.

    Parameters
    ----------
    operation : str
        One of :data:`fastxent._backends._auto.OPERATIONS`.
    dtype : numpy.dtype
        The compute dtype (float32 or float64).
    n_classes, positions, size : int
        Classes, positions after the class axis, elements of the logits.
    """
    chosen = _context_choice.get() or _process_choice or _ENV_BACKEND
    if chosen != "auto":
        backend = _resolved.get(chosen)
        if backend is None:
            name, source = _choice()
            backend = _resolved[chosen] = _loaded[_resolve(name, source)]
            if backend.name in _auto.JIT_BACKENDS:
                _start_jit()  # its kernels compile for this call
        return backend
    # The call's own numbers are the key (cheaper than working out its table key), in a bounded cache.
    call_key = (dtype.char, operation, n_classes, positions, size)
    backend = _by_call.get(call_key)
    if backend is None:
        backend = _auto_backend(call_key, dtype, operation, n_classes, positions, size)
    return backend


def _auto_backend(
    call_key: tuple[object, ...], dtype: np.dtype, operation: str, n_classes: int, positions: int, size: int
) -> Backend:
    """:func:`backend_for` under ``auto``, for a call not in its cache."""
    global _jit_saving
    held = _held_back.get(call_key)
    if held is None:
        name, source = _choice()
        key = _auto.table_key("float64" if dtype.char == "d" else "float32", operation, n_classes, positions, size)
        if not _held(key):
            return _remember(_by_call, call_key, _loaded[_resolve(name, source, key)])
        held = _remember(
            _held_back, call_key, (_loaded[_resolve(name, source)], _auto.saving(key, size * dtype.itemsize))
        )
    # This call runs on the fallback; it counts towards starting the JIT backend from the next call on.
    _jit_saving += held[1]
    if _jit_saving >= AUTO_JIT_AFTER_SECONDS:
        _start_jit()
    return held[0]


def _remember(cache: dict[tuple[object, ...], _Value], key: tuple[object, ...], value: _Value) -> _Value:
    """Store ``value`` under ``key`` in one of auto's per-call caches (emptied when full); return it."""
    if len(cache) >= _BY_CALL_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def current_backend(operation: str, rows: np.ndarray) -> Backend:
    """:func:`backend_for` a call on ``rows``, its logits as ``(rows, classes[, positions])``."""
    shape = rows.shape
    return backend_for(operation, rows.dtype, shape[1], shape[2] if len(shape) > 2 else 1, rows.size)


def backend_with(attribute: str, operation: str, rows: np.ndarray) -> Backend:
    """The backend for ``operation`` on ``rows`` that has ``attribute``.

    That is :func:`current_backend`'s, unless it lacks the attribute: then
    the first backend of the ``auto`` order that has it (the NumPy reference
    has every operation), as bottleneck sends what C cannot do to its slow
    functions.
    """
    backend = current_backend(operation, rows)
    if hasattr(backend, attribute):
        return backend
    return next(loaded for loaded in map(_load, AUTO_ORDER) if loaded is not None and hasattr(loaded, attribute))


def set_backend(name: str) -> None:
    """Choose the backend for the whole process.

    Parameters
    ----------
    name : {"auto", "numba", "cython", "numpy"}
        ``"auto"`` picks, per call, the backend measured fastest on the
        call's shape class (see :func:`get_backend`).

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
        The name of the backend in use inside the block (under ``"auto"``,
        its fallback: each call picks its own, see :func:`get_backend`).

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
