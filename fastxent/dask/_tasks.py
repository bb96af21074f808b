"""How a block function becomes a Dask task: lists unwrapped, the caller's backend in force.

:mod:`fastxent.dask` wraps every function its graphs run: :class:`Unwrap`
for ``dask.array.blockwise`` tasks, :func:`in_backend` for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dask.base import normalize_token

from .._dispatch import backend_choice, use_backend

__all__ = ["InBackend", "Unwrap", "in_backend"]


class Unwrap:
    """``func`` called with each list argument replaced by the one block it holds.

    ``dask.array.blockwise`` passes the blocks along a contracted axis as a
    list (``concatenate=False``); every contracted axis here has one block.
    ``concatenate=True`` would pass ``np.concatenate([block])`` instead: a
    copy of the block, which halves the speed of a memory-bound kernel.
    """

    __slots__ = ("__name__", "func")

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        # Dask names a graph's layers after the function.
        self.__name__ = getattr(func, "func", func).__name__

    def __call__(self, *args: object, **kwargs: object) -> Any:
        return self.func(*map(_single, args), **kwargs)

    def __dask_tokenize__(self) -> tuple[str, object]:
        # Dask hashes the repr of what this returns: a wrapper's repr holds its address, a normalised token does not.
        return ("fastxent.Unwrap", normalize_token(self.func))


def _single(value: object) -> object:
    while isinstance(value, list):
        (value,) = value
    return value


class InBackend:
    """``func`` run inside ``use_backend(backend)``, in whatever thread or process runs the task.

    The caller's :func:`fastxent.use_backend` (a context variable of its
    thread) and :func:`fastxent.set_backend` (its process) do not reach Dask's
    workers; the name travels in the task instead, and is part of its token,
    so graphs built for different backends do not share keys.
    ``__wrapped__`` lets Dask read ``func``'s signature (``computing_meta``).
    """

    __slots__ = ("__name__", "__wrapped__", "backend")

    def __init__(self, func: Callable[..., Any], backend: str) -> None:
        self.__wrapped__ = func
        self.backend = backend
        self.__name__ = getattr(func, "func", func).__name__

    def __call__(self, *args: object, **kwargs: object) -> Any:
        with use_backend(self.backend):
            return self.__wrapped__(*args, **kwargs)

    def __dask_tokenize__(self) -> tuple[str, object, str]:
        return ("fastxent.InBackend", normalize_token(self.__wrapped__), self.backend)


def in_backend(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` as a task that runs with the backend chosen where the graph is built.

    With ``"auto"`` it is ``func`` itself: each worker resolves its own
    ``auto`` (its ``set_backend``, ``FASTXENT_BACKEND``, the size of the block).
    """
    choice = backend_choice()
    return func if choice == "auto" else InBackend(func, choice)
