"""Argument checks and conversions to the kernels' canonical arrays.

Every error names the parameter and shows the bad value. Nothing here writes
to a caller's array.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

#: The dtypes kernels compute in (native byte order).
COMPUTE_DTYPES = frozenset((np.dtype(np.float32), np.dtype(np.float64)))
NATIVE_INDEX_DTYPES = frozenset((np.dtype(np.int32), np.dtype(np.int64)))


class FloatInput(NamedTuple):
    """A floating array and the dtypes it is computed and returned in."""

    array: np.ndarray
    compute_dtype: np.dtype
    result_dtype: np.dtype


def _is_bfloat16(dtype: np.dtype) -> bool:
    return dtype.name == "bfloat16"


def float_input(value: npt.ArrayLike, name: str) -> FloatInput:
    """Convert ``value`` to a floating array without copying when possible.

    float32 and float64 are computed in their own precision; float16 and
    bfloat16 in float32, with results returned in the input's dtype.

    Raises
    ------
    TypeError
        If the dtype is not a real floating type.
    """
    array = value if type(value) is np.ndarray else np.asarray(value)
    dtype = array.dtype
    if dtype in COMPUTE_DTYPES:
        return FloatInput(array, dtype, dtype)
    if dtype.kind == "f" and dtype.itemsize >= 4 and dtype.itemsize <= 8:
        native = dtype.newbyteorder("=")
        return FloatInput(array, native, native)
    if (dtype.kind == "f" and dtype.itemsize == 2) or _is_bfloat16(dtype):
        return FloatInput(array, np.dtype(np.float32), dtype)
    raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 array; got dtype {dtype}")


def normalize_axis(axis: object, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` as a non-negative int, checking it against ``ndim``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {axis!r}")
    index = int(axis)
    if not -ndim <= index < ndim:
        raise np.exceptions.AxisError(f"{name}={index} is out of bounds for an array of dimension {ndim}")
    return index % ndim


def normalize_axes(axis: object, ndim: int) -> tuple[int, ...]:
    """``axis`` as a sorted tuple of distinct non-negative ints (None means all)."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, tuple | list):
        axes = tuple(normalize_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis must not repeat an axis; got {axis!r}")
        return tuple(sorted(axes))
    return (normalize_axis(axis, ndim),)


def real_number(value: object, name: str) -> float:
    """``value`` as a Python float; rejects bools, complex and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    return float(value)


def integer(value: object, name: str) -> int:
    """``value`` as a Python int; rejects bools and non-integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    return int(value)


def target_shape_error(
    target: np.ndarray, shape: tuple[int, ...], index_shape: tuple[int, ...]
) -> TypeError | ValueError:
    """The error for a target whose shape does not fit its dtype, for input of shape ``shape``.

    Class indices (an integer dtype) need ``index_shape``, class probabilities
    ``shape``; probabilities of the indices' shape get a ``TypeError`` that
    says so. Shared with the Dask front-end, whose target may be a Dask array
    (only its shape and dtype are read).
    """
    if target.dtype.kind not in "iu" and target.shape == index_shape:
        return TypeError(
            f"target of dtype {target.dtype} is read as class probabilities, which "
            f"need the input's shape {shape}; class indices need an integer dtype"
        )
    return ValueError(
        f"target must have shape {index_shape} (class indices) or {shape} "
        f"(class probabilities) for input of shape {shape}; got {target.shape}"
    )


def index_target(target: np.ndarray, name: str) -> np.ndarray:
    """Class indices as native int32 or int64; int32 and int64 are not copied.

    Other integer dtypes are converted to int64; an unsigned value that int64
    cannot hold raises ``IndexError``.
    """
    dtype = target.dtype
    if dtype in NATIVE_INDEX_DTYPES and target.flags.c_contiguous:
        return target
    if dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices; got dtype {dtype}")
    if dtype.kind == "i" and dtype.itemsize in (4, 8):
        return np.ascontiguousarray(target, dtype=dtype.newbyteorder("="))
    if dtype.kind == "u" and dtype.itemsize == 8 and target.size:
        big = target > np.iinfo(np.int64).max
        if big.any():
            position = np.unravel_index(int(np.argmax(big)), target.shape)
            raise IndexError(f"{name} value {int(target[position])} at position {position} is out of range")
    return np.ascontiguousarray(target, dtype=np.int64)


def check_index_range(target: np.ndarray, n_classes: int, name: str, ignore_index: int | None) -> None:
    """Raise ``IndexError`` at the first target outside ``[0, n_classes)``.

    Targets equal to ``ignore_index`` are allowed. The common case costs two
    reductions; only a failing check builds a mask.
    """
    if target.size == 0:
        return
    low, high = int(target.min()), int(target.max())
    if low >= 0 and high < n_classes:
        return
    bad = (target < 0) | (target >= n_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if not bad.any():
        return
    position = np.unravel_index(int(np.argmax(bad)), target.shape)
    valid = f"0..{n_classes - 1}" if n_classes else "none (there are no classes)"
    also = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
    raise IndexError(
        f"{name} value {int(target[position])} at position {tuple(map(int, position))} "
        f"is out of range for {n_classes} classes (valid: {valid}{also})"
    )
