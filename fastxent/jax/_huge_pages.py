"""Transparent huge pages under large output buffers, asked of Linux before XLA's buffers are first written."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from ctypes import c_int, c_size_t, c_void_p

import numpy as np

_HUGE_PAGE = 2**21
_MADV_HUGEPAGE = 14  # Linux


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise``, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [c_void_p, c_size_t, c_int]
    function.restype = c_int
    return function  # type: ignore[no-any-return]


def advise_huge_pages(array: np.ndarray) -> None:
    """Ask Linux for transparent huge pages under a large output buffer before it is first written.

    XLA gives every execution fresh output buffers, and first-touch faults on
    4 KiB pages cost as much as the kernel itself on a large gradient
    (1024 x 32000 float32: ~30 ms of faults against ~35 ms of kernel,
    docs/frontends.md). ``MADV_HUGEPAGE`` is advice, as PyTorch's CPU
    allocator gives it under ``THP_MEM_ALLOC_ENABLE``: nothing changes where
    the kernel ignores it, and the buffer's contents are not touched.
    """
    madvise = _madvise()
    if madvise is None or array.nbytes < 4 * _HUGE_PAGE:
        return
    start = array.ctypes.data
    first = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    last = (start + array.nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if last > first:
        madvise(first, last - first, _MADV_HUGEPAGE)
