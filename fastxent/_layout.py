"""Canonical ``(B, C, K)`` rows, and delivering results into ``out=`` arrays.

Kernels see logits as ``(B, C, K)``: C-contiguous, native float32/float64,
the class axis in the middle. This module maps user arrays onto that shape
(a view whenever the memory allows) and back, and decides when a kernel may
write straight into a user's output array.
"""

from __future__ import annotations

import math

import numpy as np

from ._validate import normalize_axes


def canonical(array: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous, native-order ``dtype`` view or copy of ``array``, reshaped."""
    if array.dtype is not dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dtype)
    return array.reshape(shape)


def split_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """``(B, C, K)``: the sizes before, at and after ``axis``."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def check_out(out: object, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Check a user-given output array: an ndarray of ``shape`` and ``dtype``, writable."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray; got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}; got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def direct_output(out: np.ndarray, compute_dtype: np.dtype, inputs: tuple[np.ndarray, ...]) -> bool:
    """Whether kernels may write straight into ``out``.

    That needs a C-contiguous native array of the compute dtype that either
    shares no memory with the inputs or is exactly one of them (same start,
    same layout): kernels read each element before writing it, never after.
    """
    if not out.flags.c_contiguous or out.dtype != compute_dtype:
        return False
    for array in inputs:
        if np.may_share_memory(out, array) and not _same_layout(out, array):
            return False
    return True


def _same_layout(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
    )


def deliver(result: np.ndarray, out: np.ndarray | None, dtype: np.dtype, written: bool) -> np.ndarray:
    """Return ``result`` in ``out`` (unless the kernel ``written`` it there) or as a new ``dtype`` array."""
    if out is None:
        return np.asarray(result, dtype=dtype, order="C")
    if not written:
        np.copyto(out, result, casting="same_kind")
    return out


class RowLayout:
    """How an array reduced over ``axes`` maps onto canonical ``(B, C, K)`` rows."""

    __slots__ = ("axes", "bck", "moved", "shape")

    def __init__(self, shape: tuple[int, ...], axis: object) -> None:
        axes = normalize_axes(axis, len(shape))
        first = axes[0] if axes else len(shape)
        self.shape = shape
        self.axes = axes
        self.moved = axes != tuple(range(first, first + len(axes)))
        if self.moved:
            kept = [s for i, s in enumerate(shape) if i not in axes]
            self.bck = (math.prod(kept), math.prod(shape[i] for i in axes), 1)
        else:
            before, after = shape[:first], shape[first + len(axes) :]
            self.bck = (math.prod(before), math.prod(shape[first : first + len(axes)]), math.prod(after))

    def _reduced_last(self, array: np.ndarray) -> np.ndarray:
        """A view of ``array`` with the reduced axes last, when they are not adjacent already."""
        return np.moveaxis(array, self.axes, range(-len(self.axes), 0)) if self.moved else array

    def rows(self, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """``array`` as canonical ``(B, C, K)`` rows (a view when possible)."""
        return canonical(self._reduced_last(array), dtype, self.bck)

    def strided_rows(self, array: np.ndarray) -> np.ndarray:
        """``array`` (of the layout's shape, aligned, native) as ``(B, C, K)`` rows with any strides.

        A broadcast keeps its zero strides, so it is not laid out at full size;
        a copy is made only where no strides express the reshape, or where they
        are not whole elements.
        """
        rows = np.reshape(self._reduced_last(array), self.bck)
        if not rows.flags.aligned or any(step % rows.itemsize for step in rows.strides):
            rows = np.ascontiguousarray(rows)
        return rows

    def unrows(self, rows: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`rows` for an output of the input's shape."""
        if not self.moved:
            return rows.reshape(self.shape)
        kept = [s for i, s in enumerate(self.shape) if i not in self.axes]
        reduced = [self.shape[i] for i in self.axes]
        moved = rows.reshape((*kept, *reduced))
        return np.moveaxis(moved, range(-len(self.axes), 0), self.axes)

    def reduced_shape(self, keepdims: bool) -> tuple[int, ...]:
        """The shape of a reduction's result."""
        if keepdims:
            return tuple(1 if i in self.axes else s for i, s in enumerate(self.shape))
        return tuple(s for i, s in enumerate(self.shape) if i not in self.axes)
