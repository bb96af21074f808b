"""Tensors as NumPy arrays and NumPy results as tensors, without copies where the dtypes allow."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: Half precision: the NumPy API computes it in float32.
HALF = (torch.float16, torch.bfloat16)


def as_numpy(tensor: Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor (half precision is widened to float32 first)."""
    if tensor.dtype in HALF:
        tensor = tensor.float()
    return tensor.detach().numpy()


def as_numpy_exact(tensor: Tensor) -> np.ndarray:
    """A zero-copy NumPy view in the tensor's own dtype: bfloat16 through ``ml_dtypes`` (float32 without it)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            return tensor.float().numpy()
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

#: glibc serves larger allocations with fresh mmap-ed pages every time (its mmap threshold's ceiling).
_FRESH_PAGES_ABOVE = 32 * 2**20


def empty_tensor(shape: tuple[int, ...], dtype: np.dtype) -> Tensor:
    """An uninitialised CPU tensor; above 32 MiB over NumPy's memory.

    An allocation that large gets fresh pages from the OS on every call,
    and first-touch faults on 4 KiB pages then cost twice the kernel on a
    large gradient (1024 x 32000 float32, two threads: 55.9 ms with
    ``torch.empty`` against 17.5 ms). NumPy asks Linux for transparent huge
    pages under such a buffer before it is first written; torch's CPU
    allocator does not by default (``THP_MEM_ALLOC_ENABLE``). Smaller
    buffers come back from the heap already mapped either way.
    """
    if math.prod(shape) * dtype.itemsize > _FRESH_PAGES_ABOVE:
        return torch.from_numpy(np.empty(shape, dtype))
    return torch.empty(shape, dtype=_TORCH_DTYPES[dtype])


def to_tensor(value: object, dtype: torch.dtype) -> Tensor:
    """A NumPy result (scalar or array) as a tensor of ``dtype``; not copied when the dtype matches."""
    if type(value) is not np.ndarray:  # a reduced loss: a NumPy scalar
        return torch.scalar_tensor(float(value), dtype=dtype)  # type: ignore[arg-type]
    array = value
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: torch.from_numpy does not know it
        result = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        result = torch.from_numpy(array)
    return result if result.dtype == dtype else result.to(dtype)
