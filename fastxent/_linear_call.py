"""Checking a linear cross-entropy call and laying its arrays out for the blocks.

Every error names the argument and shows the shapes or the value, as
:func:`fastxent.cross_entropy`'s do; the options are checked by the same
functions as there. The mean's divisor comes from the whole target here,
before any block runs, so that each block's gradient is final when the kernel
writes it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from . import _dispatch
from ._backends._interface import Backend, LossParams
from ._linear_blocks import linear_chunk_rows
from ._reduction import check_reduction
from ._validate import float_input, index_target, integer
from ._xent_call import check_ignore_index, check_options, index_summary, loss_params

__all__ = ["LinearCall", "prepare", "upstream_gradient"]


class LinearCall(NamedTuple):
    """A checked linear cross-entropy call, with its arrays laid out for the blocks."""

    hidden: np.ndarray  # (N, H), the caller's dtype (a view when the memory allows)
    weight: np.ndarray  # (V, H), the caller's dtype, C- or F-contiguous
    bias: np.ndarray | None  # (V,), compute dtype
    target: np.ndarray  # (N, 1), int32 or int64
    class_weight: np.ndarray | None  # (V,), compute dtype
    params: LossParams
    reduction: str
    z_loss: float
    compute: np.dtype
    result_dtype: np.dtype
    loss_shape: tuple[int, ...]  # hidden's shape without its last axis
    divisor: float
    valid_rows: float
    backend: Backend
    chunk_rows: int
    chunk_rows_given: bool  # the caller chose the block size: blocks of rows, whatever the cost


def _same_dtype(array: np.ndarray, dtype: np.dtype, name: str) -> None:
    if array.dtype != dtype:
        raise TypeError(f"{name} must have hidden's dtype {dtype}; got {array.dtype}")


def _per_class(
    values: npt.ArrayLike | None,
    name: str,
    weight: np.ndarray,
    compute: np.dtype,
    hidden_dtype: np.dtype | None = None,
) -> np.ndarray | None:
    """``values`` checked as one float per row of ``weight`` (of ``hidden_dtype`` if given), in ``compute``."""
    if values is None:
        return None
    array = float_input(values, name).array
    n_classes = weight.shape[0]
    if array.shape != (n_classes,):
        raise ValueError(
            f"{name} must have shape ({n_classes},), one per row of weight of shape {weight.shape}; got {array.shape}"
        )
    if hidden_dtype is not None:
        _same_dtype(array, hidden_dtype, name)
    return np.ascontiguousarray(array, dtype=compute)


def _compute_layout(array: np.ndarray, compute: np.dtype) -> np.ndarray:
    """``array`` as BLAS reads it without a copy per call: C- or F-contiguous, native order."""
    half = array.dtype.itemsize == 2
    if not half and array.dtype != compute:  # byte-swapped float32/float64
        return np.ascontiguousarray(array, dtype=compute)
    if array.flags.c_contiguous or array.flags.f_contiguous:
        return array
    return np.ascontiguousarray(array)


def prepare(
    hidden: npt.ArrayLike,
    weight: npt.ArrayLike,
    target: npt.ArrayLike,
    bias: npt.ArrayLike | None,
    class_weight: npt.ArrayLike | None,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    chunk_rows: object,
    operation: str = "loss",
) -> LinearCall:
    """Check a linear cross-entropy call; every error names the argument and the shapes or value.

    ``operation`` ("loss" or "loss+grad") is what the kernel does to each block of logits.
    """
    hidden_array, compute, result_dtype = float_input(hidden, "hidden")
    weight_array = float_input(weight, "weight").array
    shape = hidden_array.shape
    if not shape:
        raise ValueError("hidden must have at least 1 dimension (the hidden features, last); got a 0-d array")
    n_hidden = shape[-1]
    if weight_array.ndim != 2 or weight_array.shape[1] != n_hidden:
        raise ValueError(
            f"weight must have shape (V, {n_hidden}) (torch.nn.Linear.weight: one row per class, "
            f"hidden's last axis {n_hidden} as columns) for hidden of shape {shape}; got {weight_array.shape}"
        )
    _same_dtype(weight_array, hidden_array.dtype, "weight")
    n_classes = weight_array.shape[0]
    bias_array = _per_class(bias, "bias", weight_array, compute, hidden_array.dtype)
    reduction = check_reduction(reduction)
    ignore = check_ignore_index(ignore_index)
    eps, z, cap = check_options(label_smoothing, z_loss, softcap)
    weights = _per_class(class_weight, "class_weight", weight_array, compute)
    n_rows = math.prod(shape[:-1])
    if chunk_rows is None:
        rows = linear_chunk_rows(n_rows, n_classes, compute)
    else:
        rows = integer(chunk_rows, "chunk_rows")
        if rows < 1:
            raise ValueError(f"chunk_rows must be None or an integer >= 1; got {chunk_rows!r}")

    loss_shape = shape[:-1]
    target_array = target if type(target) is np.ndarray else np.asarray(target)
    kind = target_array.dtype.kind
    if kind not in "iu":
        probabilities = " (class probabilities are not supported)" if kind == "f" else ""
        raise TypeError(
            f"target must hold class indices (an integer dtype){probabilities}; got dtype {target_array.dtype}"
        )
    if target_array.shape != loss_shape:
        raise ValueError(
            f"target must have shape {loss_shape} (hidden's shape {shape} without its last axis); "
            f"got {target_array.shape}"
        )
    indices = index_target(target_array, "target").reshape(n_rows, 1)
    backend = _dispatch.backend_for(operation, compute, n_classes, 1, min(rows, n_rows) * n_classes)
    valid, divisor = index_summary(backend, indices, weights, n_classes, ignore, "target", loss_shape)
    return LinearCall(
        hidden=_compute_layout(hidden_array, compute).reshape(n_rows, n_hidden),
        weight=_compute_layout(weight_array, compute),
        bias=bias_array,
        target=indices,
        class_weight=weights,
        params=loss_params(ignore, eps, cap),
        reduction=reduction,
        z_loss=z,
        compute=compute,
        result_dtype=result_dtype,
        loss_shape=loss_shape,
        divisor=divisor,
        valid_rows=float(valid),
        backend=backend,
        chunk_rows=rows,
        chunk_rows_given=chunk_rows is not None,
    )


def upstream_gradient(grad_output: object, call: LinearCall) -> np.ndarray | float:
    """``grad_output`` as one float, or for ``reduction="none"`` a float64 ``(N, 1)`` array."""
    if grad_output is None:
        return 1.0
    array = np.asarray(grad_output)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"grad_output must hold real numbers; got dtype {array.dtype}")
    if array.ndim == 0:
        return float(array)
    if call.reduction != "none":
        raise ValueError(f"grad_output must be a scalar for reduction={call.reduction!r}; got shape {array.shape}")
    try:
        rows = np.broadcast_to(array, call.loss_shape)
    except ValueError:
        raise ValueError(
            f"grad_output must be a scalar or have the loss's shape {call.loss_shape}; got shape {array.shape}"
        ) from None
    return np.ascontiguousarray(rows, dtype=np.float64).reshape(-1, 1)
