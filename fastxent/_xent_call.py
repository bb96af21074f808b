"""A cross-entropy call, checked and laid out: the shared first and last steps of every entry point.

:func:`prepare` checks every argument, lays the logits out as canonical
``(B, C, K)`` rows and summarises class-index targets (valid rows, the
mean's divisor, out-of-range targets) before any kernel runs;
:func:`run_kernel` calls one kernel of the backend
:func:`fastxent._dispatch.current_backend` picks; :func:`reduce` finishes the
reduction from the kernel's partial sums (:mod:`fastxent._reduction`). The
common case (C-contiguous float32/float64 logits, int32/int64 targets, no
options) allocates nothing but the outputs and reads no file.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _dispatch
from ._backends._interface import DEFAULT_PARAMS, Backend, LossParams
from ._layout import canonical, split_shape
from ._reduction import check_reduction, finish
from ._validate import (
    COMPUTE_DTYPES,
    NATIVE_INDEX_DTYPES,
    check_index_range,
    float_input,
    index_target,
    integer,
    real_number,
    target_shape_error,
)

Reduction = Literal["none", "mean", "sum"]
DEFAULT_IGNORE_INDEX = -100


class XentCall(NamedTuple):
    """Everything a cross-entropy call needs, checked and laid out canonically."""

    array: np.ndarray  # the user's logits, as given (after asarray)
    logits: np.ndarray  # (B, C, K), compute dtype
    target: np.ndarray  # (B, K) ints, or (B, C, K) probabilities
    probabilities: bool
    weight: np.ndarray | None  # (C,), compute dtype; None for unit weights
    params: LossParams
    loss_shape: tuple[int, ...]
    reduction: str
    z_loss: float
    result_dtype: np.dtype
    divisor: float  # what "mean" divides the cross-entropy sum by
    valid_rows: float  # what "mean" divides the z-loss sum by
    backend: Backend


# tuple.__new__ skips the NamedTuple's Python-level __new__ (a third of a microsecond per call).
_new_call = partial(tuple.__new__, XentCall)


def _option(value: object, name: str) -> float:
    return value if type(value) is float else real_number(value, name)  # type: ignore[return-value]


def check_options(label_smoothing: object, z_loss: object, softcap: object) -> tuple[float, float, float]:
    if softcap is None and type(label_smoothing) is float and type(z_loss) is float:
        if label_smoothing == 0.0 and z_loss == 0.0:
            return 0.0, 0.0, 0.0
    eps = _option(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing!r}")
    z = _option(z_loss, "z_loss")
    if not (z >= 0 and z != float("inf")):
        raise ValueError(f"z_loss must be a finite number >= 0; got {z_loss!r}")
    cap = 0.0
    if softcap is not None:
        cap = _option(softcap, "softcap")
        if not (cap > 0 and cap != float("inf")):
            raise ValueError(f"softcap must be None or a finite number > 0; got {softcap!r}")
    return eps, z, cap


def check_ignore_index(ignore_index: object) -> int:
    ignore = ignore_index if type(ignore_index) is int else integer(ignore_index, "ignore_index")
    if not -(2**63) <= ignore < 2**63:  # type: ignore[operator]
        raise ValueError(f"ignore_index must fit in a 64-bit integer (targets are int64); got {ignore}")
    return ignore  # type: ignore[return-value]


def _check_weight(weight: npt.ArrayLike | None, n_classes: int, dtype: np.dtype) -> np.ndarray | None:
    if weight is None:
        return None
    checked = float_input(weight, "weight").array
    if checked.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},), one per class; got {checked.shape}")
    return np.ascontiguousarray(checked, dtype=dtype)


def loss_params(ignore: int, eps: float, cap: float, z_coef: float = 0.0) -> LossParams:
    if ignore == DEFAULT_IGNORE_INDEX and not eps and not cap and not z_coef:
        return DEFAULT_PARAMS
    return LossParams(ignore_index=ignore, label_smoothing=eps, softcap=cap, z_coef=z_coef)


def index_summary(
    backend: Backend,
    indices: np.ndarray,
    weight: np.ndarray | None,
    n_classes: int,
    ignore: int | None,
    name: str,
    shape: tuple[int, ...],
) -> tuple[int, float]:
    """``(valid rows, mean's divisor)`` of class indices ``(B, K)``; ``IndexError`` at the first bad one.

    ``ignore=None`` allows no ignored value: every index must lie in
    ``[0, n_classes)``. Errors give positions in the user's ``shape``.
    """
    valid, divisor, bad = backend.index_target_stats(indices, weight, n_classes, -1 if ignore is None else ignore)
    if bad or (ignore is None and valid != indices.size):
        check_index_range(indices.reshape(shape), n_classes, name, ignore)
    return valid, divisor


def _common_call(input: object, target: object, reduction: object, operation: str) -> XentCall | None:
    """The call for the common case in one step, or None: C-contiguous float32/float64 ``(N, C)`` logits,
    C-contiguous int32/int64 ``(N,)`` targets, no options (the caller checked those). Every check the
    general path makes still holds; anything else goes there."""
    if not (
        type(input) is np.ndarray
        and type(target) is np.ndarray
        and input.ndim == 2
        and input.dtype in COMPUTE_DTYPES
        and target.dtype in NATIVE_INDEX_DTYPES
        and target.shape == input.shape[:1]
        and input.flags.c_contiguous
        and target.flags.c_contiguous
        and (reduction == "none" or reduction == "mean" or reduction == "sum")
    ):
        return None
    b, n_classes = input.shape
    backend = _dispatch.backend_for(operation, input.dtype, n_classes, 1, input.size)
    indices = target.reshape(b, 1)
    valid, divisor = index_summary(backend, indices, None, n_classes, DEFAULT_IGNORE_INDEX, "target", target.shape)
    return _new_call((
        input, input.reshape(b, n_classes, 1), indices, False, None, DEFAULT_PARAMS, target.shape, str(reduction),
        0.0, input.dtype, divisor, valid, backend,
    ))  # fmt: skip


def prepare(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    operation: str = "loss",
) -> XentCall:
    """Check a cross-entropy call and lay it out for a kernel of ``operation`` ("loss" or "loss+grad")."""
    if (
        weight is None
        and softcap is None
        and ignore_index == DEFAULT_IGNORE_INDEX
        and type(ignore_index) is int
        and type(label_smoothing) is float
        and type(z_loss) is float
        and not label_smoothing
        and not z_loss
    ):
        call = _common_call(input, target, reduction, operation)
        if call is not None:
            return call
    if type(input) is np.ndarray and input.dtype in COMPUTE_DTYPES:
        array, compute, result_dtype = input, input.dtype, input.dtype
    else:
        array, compute, result_dtype = float_input(input, "input")
    shape = array.shape
    ndim = len(shape)
    if ndim == 2:
        b, n_classes, k = shape[0], shape[1], 1
    elif ndim == 0:
        raise ValueError("input must have at least 1 dimension (the class axis); got a 0-d array")
    else:
        b, n_classes, k = split_shape(shape, 0 if ndim == 1 else 1)
    index_shape = shape[:1] + shape[2:] if ndim > 1 else ()
    reduction = check_reduction(reduction)
    ignore = check_ignore_index(ignore_index)
    eps, z, cap = check_options(label_smoothing, z_loss, softcap)
    weights = _check_weight(weight, n_classes, compute)
    if array.flags.c_contiguous and array.dtype is compute:
        logits = array.reshape(b, n_classes, k)
    else:
        logits = canonical(array, compute, (b, n_classes, k))
    backend = _dispatch.current_backend(operation, logits)

    target_array = target if type(target) is np.ndarray else np.asarray(target)
    kind = target_array.dtype.kind
    if kind == "i" or kind == "u":
        if target_array.shape != index_shape:
            raise target_shape_error(target_array, shape, index_shape)
        indices = index_target(target_array, "target").reshape(b, k)
        valid, divisor = index_summary(backend, indices, weights, n_classes, ignore, "target", index_shape)
        return _new_call((
            array, logits, indices, False, weights, loss_params(ignore, eps, cap), index_shape, reduction, z,
            result_dtype, divisor, valid, backend,
        ))  # fmt: skip
    if kind == "b":
        raise TypeError(
            "target must hold class indices (an integer dtype) or class probabilities (a float dtype); got dtype bool"
        )
    target_input = float_input(target_array, "target")
    if target_array.shape != shape:
        raise target_shape_error(target_array, shape, index_shape)
    if ignore != DEFAULT_IGNORE_INDEX:
        raise ValueError(
            f"ignore_index={ignore} is not supported with class-probability targets "
            f"(target of dtype {target_array.dtype})"
        )
    probabilities = canonical(target_input.array, compute, (b, n_classes, k))
    rows = float(b * k)
    return _new_call((
        array, logits, probabilities, True, weights, loss_params(ignore, eps, cap), index_shape, reduction, z,
        result_dtype, rows, rows, backend,
    ))  # fmt: skip


_per_thread = threading.local()


def _totals_buffer() -> np.ndarray:
    """This thread's float64 ``(2,)`` buffer for a reduced call's totals, read back (by :func:`reduce`)
    before the call returns: no allocation per call (a fifth of a microsecond of a 10 µs call)."""
    try:
        return _per_thread.totals  # type: ignore[no-any-return]
    except AttributeError:
        _per_thread.totals = buffer = np.empty(2)
        return buffer


def run_kernel(
    call: XentCall, params: LossParams, grad: np.ndarray | None, grad_scale: np.ndarray | float | None
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Call the backend once; return per-row ``(loss, lse)`` as ``(B, K)`` arrays, or the kernel's totals.

    A reduced loss needs only the totals: the rows then stay in the kernel's scratch.
    """
    loss = lse = totals = None
    if call.reduction == "none":
        b, _, k = call.logits.shape
        loss = np.empty((b, k), call.logits.dtype)
        lse = np.empty((b, k), call.logits.dtype) if call.z_loss else None
    else:
        totals = _totals_buffer()
    kernel = call.backend.cross_entropy_probs if call.probabilities else call.backend.cross_entropy_index
    kernel(
        call.logits, call.target, call.weight, params, loss, lse, grad, grad_scale, totals, _dispatch.get_num_threads()
    )
    return loss, lse, totals


def reduce(
    call: XentCall, loss: np.ndarray | None, lse: np.ndarray | None, totals: np.ndarray | None
) -> np.ndarray | np.floating:
    """Apply the z-loss and the reduction to per-row values (``totals`` when reducing)."""
    if totals is None:
        assert loss is not None
        if lse is not None:
            with np.errstate(all="ignore"):
                loss = (loss + call.z_loss * np.square(lse, dtype=np.float64)).astype(loss.dtype)
        loss = loss.reshape(call.loss_shape)
        return loss if loss.dtype == call.result_dtype else loss.astype(call.result_dtype)
    loss_sum, square_sum = totals.tolist()
    total = finish(call.reduction, call.z_loss, loss_sum, call.divisor, square_sum, call.valid_rows)
    return call.result_dtype.type(total)
