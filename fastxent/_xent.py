"""Cross-entropy with torch's semantics: ``cross_entropy`` and ``cross_entropy_and_grad``.

A call checks every argument, lays the logits out as canonical ``(B, C, K)``
rows, summarises class-index targets (valid rows, the mean's divisor,
out-of-range targets) before any kernel runs, calls one kernel of the
backend :func:`fastxent._dispatch.current_backend` picks, and finishes the
reduction from the kernel's partial sums (:mod:`fastxent._reduction`). The
common case (C-contiguous float32/float64 logits, int32/int64 targets, no
options) allocates nothing but the outputs and reads no file.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _dispatch
from ._backends._interface import DEFAULT_PARAMS, Backend, LossParams
from ._layout import canonical, check_out, direct_output, split_shape
from ._reduction import check_reduction, finish, gradient_scale
from ._validate import COMPUTE_DTYPES, check_index_range, float_input, index_target, integer, real_number

__all__ = ["cross_entropy", "cross_entropy_and_grad"]

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


def prepare(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
) -> XentCall:
    """Check a cross-entropy call and lay it out for a kernel."""
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
    backend = _dispatch.current_backend(logits.size)

    target_array = target if type(target) is np.ndarray else np.asarray(target)
    kind = target_array.dtype.kind
    if kind == "i" or kind == "u":
        if target_array.shape != index_shape:
            raise ValueError(
                f"target must have shape {index_shape} (class indices) or {shape} "
                f"(class probabilities) for input of shape {shape}; got {target_array.shape}"
            )
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
        if target_array.shape == index_shape:
            raise TypeError(
                f"target of dtype {target_array.dtype} is read as class probabilities, which "
                f"need the input's shape {shape}; class indices need an integer dtype"
            )
        raise ValueError(
            f"target must have shape {index_shape} (class indices) or {shape} "
            f"(class probabilities) for input of shape {shape}; got {target_array.shape}"
        )
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
        totals = np.empty(2)
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


def cross_entropy(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> np.ndarray | np.floating:
    """Cross-entropy between logits and targets, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    input : array_like of float16, bfloat16, float32 or float64
        Logits of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``: the
        class axis is 1 (0 for 1-D input).
    target : array_like
        Either class indices of any integer dtype, of ``input``'s shape without
        the class axis, with values in ``[0, C)`` or equal to ``ignore_index``;
        or class probabilities (a float array of ``input``'s shape).
    weight : array_like of shape (C,), optional
        A weight per class.
    ignore_index : int, default -100
        Class-index targets equal to this contribute nothing, neither to the
        loss nor to the mean's divisor. Not allowed with probabilities.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides the weighted sum by the summed weights of the
        non-ignored targets (by the number of rows for probability targets).
    label_smoothing : float in [0, 1], default 0.0
        Mixes the target with the uniform distribution over classes.
    z_loss : float, default 0.0
        Adds ``z_loss * lse**2`` per non-ignored row, where ``lse`` is the
        row's log-sum-exp; ``"mean"`` divides that part by the number of
        non-ignored rows (unit weights).
    softcap : float, optional
        Replace logits by ``softcap * tanh(logits / softcap)`` first.

    Returns
    -------
    ndarray or scalar
        ``input``'s dtype; shape of the class-index target for ``"none"``,
        else a scalar. ``"mean"`` over no non-ignored target is NaN.

    Raises
    ------
    TypeError
        For integer logits, float targets of the class-index shape, or
        arguments of the wrong type.
    ValueError
        For mismatched shapes and out-of-range options.
    IndexError
        For a class index outside ``[0, C)`` other than ``ignore_index``; the
        message names the value and its position.

    See Also
    --------
    cross_entropy_and_grad : the loss and its gradient in one sweep.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    >>> loss = fastxent.cross_entropy(logits, np.array([0, 2]), reduction="none")
    >>> loss.dtype, loss.round(5)
    (dtype('float32'), array([0.23954, 1.09861], dtype=float32))
    >>> round(float(fastxent.cross_entropy(logits, np.array([0, -100]))), 5)
    0.23954
    """
    call = prepare(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    return reduce(call, *run_kernel(call, call.params, None, None))


def _grad_scale(call: XentCall, grad_output: object) -> tuple[np.ndarray | float, float]:
    """The upstream gradient per row (one float, or a float64 ``(B, K)`` array) and the kernel's z-loss coefficient."""
    upstream: float | np.ndarray = 1.0
    if grad_output is not None:
        if type(grad_output) is float:
            upstream = grad_output
        else:
            array = np.asarray(grad_output)
            if array.dtype.kind not in "fiu":
                raise TypeError(f"grad_output must hold real numbers; got dtype {array.dtype}")
            upstream = float(array) if array.ndim == 0 else array.astype(np.float64)
    if call.reduction == "none":
        if isinstance(upstream, float):
            return upstream, call.z_loss
        try:
            rows = np.broadcast_to(upstream, call.loss_shape)
        except ValueError:
            raise ValueError(
                f"grad_output must be a scalar or have the loss's shape {call.loss_shape}; "
                f"got shape {np.shape(upstream)}"
            ) from None
        b, _, k = call.logits.shape
        return np.ascontiguousarray(rows).reshape(b, k), call.z_loss
    if not isinstance(upstream, float):
        raise ValueError(
            f"grad_output must be a scalar for reduction={call.reduction!r}; got shape {np.shape(upstream)}"
        )
    return gradient_scale(call.reduction, upstream, call.divisor, call.valid_rows, call.z_loss)


def _gradient_target(
    call: XentCall, input: object, grad_out: object, inplace: bool
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Return ``(rows the kernel writes, the array to deliver or None, whether they are one memory)``."""
    compute = call.logits.dtype
    if inplace and grad_out is not None:
        raise ValueError("give either grad_out or inplace=True, not both")
    if inplace:
        if not isinstance(input, np.ndarray):
            raise TypeError(f"inplace=True needs input to be a numpy.ndarray; got {type(input).__name__}")
        if not input.flags.writeable:
            raise ValueError("inplace=True needs a writable input; input is read-only")
        destination = input
    elif grad_out is not None:
        destination = check_out(grad_out, "grad_out", call.array.shape, call.result_dtype)
    else:
        return np.empty(call.logits.shape, dtype=compute), None, False
    inputs = (call.array, call.target) if call.probabilities else (call.array,)
    if direct_output(destination, compute, inputs):
        return destination.reshape(call.logits.shape), destination, True
    return np.empty(call.logits.shape, dtype=compute), destination, False


def cross_entropy_and_grad(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: npt.ArrayLike | float | None = None,
    grad_out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[np.ndarray | np.floating, np.ndarray]:
    """:func:`cross_entropy` and its gradient with respect to ``input``, in one sweep.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As :func:`cross_entropy`.
    grad_output : float or array_like, optional
        The upstream gradient: a scalar, or for ``reduction="none"`` an array
        of the loss's shape (broadcastable to it). Defaults to 1.
    grad_out : ndarray, optional
        Array of ``input``'s shape and dtype to write the gradient into.
    inplace : bool, default False
        Write the gradient into ``input`` (a writable float ndarray) to save
        memory. Otherwise no input is modified.

    Returns
    -------
    loss : ndarray or scalar
        As :func:`cross_entropy`.
    grad : ndarray
        ``d(loss) / d(input)`` scaled by ``grad_output``, of ``input``'s shape
        and dtype; ``grad_out`` or ``input`` when those were asked for.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> logits = np.zeros((2, 2))
    >>> loss, grad = fastxent.cross_entropy_and_grad(logits, np.array([0, 1]))
    >>> float(loss)
    0.6931471805599453
    >>> grad
    array([[-0.25,  0.25],
           [ 0.25, -0.25]])
    """
    call = prepare(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    grad_scale, z_coef = _grad_scale(call, grad_output)
    grad_rows, destination, direct = _gradient_target(call, input, grad_out, bool(inplace))
    params = call.params
    if z_coef:
        params = loss_params(params.ignore_index, params.label_smoothing, params.softcap, z_coef)
    loss, lse, totals = run_kernel(call, params, grad_rows, grad_scale)
    grad = grad_rows.reshape(call.array.shape)
    if destination is not None:
        if not direct:
            np.copyto(destination, grad, casting="same_kind")
        grad = destination
    elif grad.dtype != call.result_dtype:
        grad = grad.astype(call.result_dtype)
    return reduce(call, loss, lse, totals), grad
