"""The public functions: validate, lay out, allocate, call one kernel, reduce.

Nothing here knows which backend runs; it calls exactly one method of
:func:`fastxent._dispatch.current_backend` per public call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from . import _dispatch
from ._backends._interface import LossParams
from ._validate import (
    FloatInput,
    canonical,
    check_index_range,
    check_out,
    direct_output,
    float_input,
    index_target,
    integer,
    normalize_axes,
    normalize_axis,
    real_number,
    split_shape,
)

__all__ = [
    "cross_entropy",
    "cross_entropy_and_grad",
    "log_softmax",
    "logsumexp",
    "softmax",
    "softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits",
]

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")
_DEFAULT_IGNORE_INDEX = -100


# --------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowLayout:
    """How an array with reduced ``axes`` maps onto canonical ``(B, C, K)`` rows."""

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    moved: bool
    bck: tuple[int, int, int]

    @classmethod
    def of(cls, shape: tuple[int, ...], axis: object) -> _RowLayout:
        axes = normalize_axes(axis, len(shape))
        first = axes[0] if axes else len(shape)
        consecutive = axes == tuple(range(first, first + len(axes)))
        if consecutive:
            before, after = shape[:first], shape[first + len(axes) :]
            bck = (math.prod(before), math.prod(shape[first : first + len(axes)]), math.prod(after))
            return cls(shape, axes, False, bck)
        kept = [s for i, s in enumerate(shape) if i not in axes]
        reduced = [shape[i] for i in axes]
        return cls(shape, axes, True, (math.prod(kept), math.prod(reduced), 1))

    def rows(self, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """``array`` as canonical ``(B, C, K)`` rows (a view when possible)."""
        if self.moved:
            array = np.moveaxis(array, self.axes, range(-len(self.axes), 0))
        return canonical(array, dtype, self.bck)

    def unrows(self, rows: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`rows` for an output of the input's shape."""
        if not self.moved:
            return rows.reshape(self.shape)
        kept = [s for i, s in enumerate(self.shape) if i not in self.axes]
        reduced = [self.shape[i] for i in self.axes]
        moved = rows.reshape((*kept, *reduced))
        return np.moveaxis(moved, range(-len(self.axes), 0), self.axes)

    def reduced_shape(self, keepdims: bool) -> tuple[int, ...]:
        if keepdims:
            return tuple(1 if i in self.axes else s for i, s in enumerate(self.shape))
        return tuple(s for i, s in enumerate(self.shape) if i not in self.axes)


def _finish(result: np.ndarray, out: np.ndarray | None, dtype: np.dtype, written: bool) -> np.ndarray:
    """Deliver ``result`` in ``out`` (unless the kernel ``written`` it there) or as a new array."""
    if out is None:
        return np.asarray(result, dtype=dtype, order="C")
    if not written:
        np.copyto(out, result, casting="same_kind")
    return out


def _elementwise(kernel_name: str, x: npt.ArrayLike, axis: object, out: object) -> np.ndarray:
    """Shared body of :func:`softmax` and :func:`log_softmax`."""
    inp = float_input(x, "x")
    layout = _RowLayout.of(inp.array.shape, axis)
    rows = layout.rows(inp.array, inp.compute_dtype)
    out_array = None if out is None else check_out(out, "out", inp.array.shape, inp.result_dtype)
    direct = out_array is not None and not layout.moved and direct_output(out_array, inp.compute_dtype, (inp.array,))
    if direct and out_array is not None:
        out_rows = out_array.reshape(layout.bck)
    else:
        out_rows = np.empty(layout.bck, dtype=inp.compute_dtype)
    backend = _dispatch.current_backend(rows.size)
    getattr(backend, kernel_name)(rows, out_rows, _dispatch.get_num_threads())
    return _finish(layout.unrows(out_rows), out_array, inp.result_dtype, direct)


def softmax(x: npt.ArrayLike, axis: int | tuple[int, ...] | None = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax along ``axis``: ``exp(x) / sum(exp(x), axis)``, computed stably.

    Parameters
    ----------
    x : array_like of float16, bfloat16, float32 or float64
        Logits of any shape.
    axis : int, tuple of int or None, default -1
        Axis or axes to normalise over; None means all of them.
    out : ndarray, optional
        Array of ``x``'s shape and dtype to write the result into. It may be
        ``x`` itself.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``; ``out`` when given.

    Raises
    ------
    TypeError
        If ``x`` is not a floating array, or ``out`` has the wrong dtype.
    ValueError
        If ``out`` has the wrong shape or is read-only.

    See Also
    --------
    scipy.special.softmax : the same values.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.softmax(np.array([1e4, 1e4, 1e4]))
    array([0.33333333, 0.33333333, 0.33333333])
    """
    return _elementwise("softmax", x, axis, out)


def log_softmax(
    x: npt.ArrayLike, axis: int | tuple[int, ...] | None = -1, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Log of the softmax along ``axis``: ``x - logsumexp(x, axis)``.

    Parameters
    ----------
    x : array_like of float16, bfloat16, float32 or float64
        Logits of any shape.
    axis : int, tuple of int or None, default -1
        Axis or axes to normalise over; None means all of them.
    out : ndarray, optional
        Array of ``x``'s shape and dtype to write into; may be ``x``.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``; ``out`` when given.

    See Also
    --------
    scipy.special.log_softmax : the same values.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.log_softmax(np.array([[0.0, 0.0], [1e4, 1e4]]))
    array([[-0.69314718, -0.69314718],
           [-0.69314718, -0.69314718]])
    """
    return _elementwise("log_softmax", x, axis, out)


def logsumexp(
    x: npt.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    keepdims: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray | np.floating:
    """``log(sum(exp(x), axis))``, computed without overflow.

    Parameters
    ----------
    x : array_like of float16, bfloat16, float32 or float64
        Any shape.
    axis : int, tuple of int or None, default -1
        Axis or axes to reduce; None means all of them.
    keepdims : bool, default False
        Keep the reduced axes with length 1.
    out : ndarray, optional
        Array of the result's shape and ``x``'s dtype to write into.

    Returns
    -------
    ndarray or scalar
        ``x``'s dtype; a NumPy scalar when the result is 0-d and ``out`` is
        not given. An empty reduction gives ``-inf``.

    See Also
    --------
    scipy.special.logsumexp : the same values.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> float(fastxent.logsumexp(np.array([1e4, 1e4])))
    10000.69314718056
    """
    inp = float_input(x, "x")
    layout = _RowLayout.of(inp.array.shape, axis)
    rows = layout.rows(inp.array, inp.compute_dtype)
    result_shape = layout.reduced_shape(bool(keepdims))
    b, _, k = layout.bck
    out_array = None if out is None else check_out(out, "out", result_shape, inp.result_dtype)
    direct = out_array is not None and direct_output(out_array, inp.compute_dtype, (inp.array,))
    if direct and out_array is not None:
        out_rows = out_array.reshape(b, k)
    else:
        out_rows = np.empty((b, k), dtype=inp.compute_dtype)
    _dispatch.current_backend(rows.size).logsumexp(rows, out_rows, _dispatch.get_num_threads())
    result = _finish(out_rows.reshape(result_shape), out_array, inp.result_dtype, direct)
    return result[()] if out_array is None and result.ndim == 0 else result


# --------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _CrossEntropyCall:
    """Everything a cross-entropy call needs, checked and laid out canonically."""

    inp: FloatInput
    logits: np.ndarray  # (B, C, K), compute dtype
    target: np.ndarray  # (B, K) ints, or (B, C, K) probabilities
    probabilities: bool
    weight: np.ndarray  # (C,), compute dtype
    params: LossParams
    loss_shape: tuple[int, ...]
    reduction: str
    z_loss: float
    mean_divisor: float  # what "mean" divides the cross-entropy sum by
    valid_rows: float  # what "mean" divides the z-loss sum by

    @property
    def bck(self) -> tuple[int, int, int]:
        b, c, k = self.logits.shape
        return b, c, k


def _check_reduction(reduction: object) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))}; got {reduction!r}")
    return str(reduction)


def _check_options(label_smoothing: object, z_loss: object, softcap: object) -> tuple[float, float, float]:
    eps = real_number(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing!r}")
    z = real_number(z_loss, "z_loss")
    if not (math.isfinite(z) and z >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0; got {z_loss!r}")
    cap = 0.0
    if softcap is not None:
        cap = real_number(softcap, "softcap")
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"softcap must be None or a finite number > 0; got {softcap!r}")
    return eps, z, cap


def _check_weight(weight: npt.ArrayLike | None, n_classes: int, dtype: np.dtype) -> np.ndarray:
    if weight is None:
        return np.ones(n_classes, dtype=dtype)
    checked = float_input(weight, "weight").array
    if checked.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},), one per class; got {checked.shape}")
    return np.ascontiguousarray(checked, dtype=dtype)


def _prepare_cross_entropy(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
) -> _CrossEntropyCall:
    inp = float_input(input, "input")
    shape = inp.array.shape
    if inp.array.ndim == 0:
        raise ValueError("input must have at least 1 dimension (the class axis); got a 0-d array")
    class_axis = 0 if inp.array.ndim == 1 else 1
    b, n_classes, k = split_shape(shape, class_axis)
    index_shape = shape[:class_axis] + shape[class_axis + 1 :]
    reduction = _check_reduction(reduction)
    ignore = integer(ignore_index, "ignore_index")
    if not -(2**63) <= ignore < 2**63:
        raise ValueError(f"ignore_index must fit in a 64-bit integer (targets are int64); got {ignore}")
    eps, z, cap = _check_options(label_smoothing, z_loss, softcap)
    weights = _check_weight(weight, n_classes, inp.compute_dtype)
    logits = canonical(inp.array, inp.compute_dtype, (b, n_classes, k))

    target_array = np.asarray(target)
    if target_array.dtype.kind in "iu":
        if target_array.shape != index_shape:
            raise ValueError(
                f"target must have shape {index_shape} (class indices) or {shape} "
                f"(class probabilities) for input of shape {shape}; got {target_array.shape}"
            )
        indices = index_target(target_array, "target")
        check_index_range(indices, n_classes, "target", ignore)
        indices = indices.reshape(b, k)
        valid = indices != ignore
        valid_rows = float(np.count_nonzero(valid))
        if reduction != "mean":
            mean_divisor = valid_rows
        elif weight is None:
            mean_divisor = valid_rows
        else:
            mean_divisor = float(np.sum(weights.astype(np.float64)[indices[valid]]))
        probabilities = False
        canonical_target = indices
    else:
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
        if ignore != _DEFAULT_IGNORE_INDEX:
            raise ValueError(
                f"ignore_index={ignore} is not supported with class-probability targets "
                f"(target of dtype {target_array.dtype})"
            )
        canonical_target = canonical(target_input.array, inp.compute_dtype, (b, n_classes, k))
        probabilities = True
        valid_rows = mean_divisor = float(b * k)

    return _CrossEntropyCall(
        inp=inp,
        logits=logits,
        target=canonical_target,
        probabilities=probabilities,
        weight=weights,
        params=LossParams(ignore_index=ignore, label_smoothing=eps, softcap=cap),
        loss_shape=index_shape,
        reduction=reduction,
        z_loss=z,
        mean_divisor=mean_divisor,
        valid_rows=valid_rows,
    )


def _safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with IEEE results (inf, nan) for a zero denominator."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(numerator) / np.float64(denominator))


def _run_kernel(
    call: _CrossEntropyCall,
    params: LossParams,
    grad: np.ndarray | None,
    grad_scale: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Call the backend once; return per-row ``(loss, lse)`` as ``(B, K)``."""
    b, _, k = call.bck
    loss = np.empty((b, k), dtype=call.inp.compute_dtype)
    lse = np.empty((b, k), dtype=call.inp.compute_dtype)
    backend = _dispatch.current_backend(call.logits.size)
    kernel = backend.cross_entropy_probs if call.probabilities else backend.cross_entropy_index
    kernel(call.logits, call.target, call.weight, params, loss, lse, grad, grad_scale, _dispatch.get_num_threads())
    return loss, lse


def _reduce(call: _CrossEntropyCall, loss: np.ndarray, lse: np.ndarray) -> np.ndarray | np.floating:
    """Apply the z-loss and the reduction to per-row values."""
    dtype = call.inp.result_dtype
    with np.errstate(all="ignore"):
        z_rows = call.z_loss * np.square(lse.astype(np.float64)) if call.z_loss else None
        if call.reduction == "none":
            rows = loss if z_rows is None else (loss + z_rows).astype(loss.dtype)
            return rows.reshape(call.loss_shape).astype(dtype, copy=False)
        total = float(np.sum(loss, dtype=np.float64))
        z_total = 0.0 if z_rows is None else float(np.sum(z_rows))
    if call.reduction == "sum":
        return dtype.type(total + z_total)
    mean = _safe_ratio(total, call.mean_divisor)
    if z_rows is not None:
        mean += _safe_ratio(z_total, call.valid_rows)
    return dtype.type(mean)


def cross_entropy(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = _DEFAULT_IGNORE_INDEX,
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
    call = _prepare_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    loss, lse = _run_kernel(call, call.params, None, None)
    return _reduce(call, loss, lse)


def _grad_scale(call: _CrossEntropyCall, grad_output: object) -> tuple[np.ndarray, float]:
    """Per-row upstream gradient ``(B, K)`` and the z-loss coefficient the kernel differentiates."""
    b, _, k = call.bck
    upstream: np.ndarray
    if grad_output is None:
        upstream = np.asarray(1.0)
    else:
        upstream = np.asarray(grad_output)
        if upstream.dtype.kind not in "fiu" or upstream.dtype.kind == "b":
            raise TypeError(f"grad_output must hold real numbers; got dtype {upstream.dtype}")
        upstream = upstream.astype(np.float64)
    if call.reduction == "none":
        try:
            rows = np.broadcast_to(upstream, call.loss_shape)
        except ValueError:
            raise ValueError(
                f"grad_output must be a scalar or have the loss's shape {call.loss_shape}; "
                f"got shape {np.shape(upstream)}"
            ) from None
        return np.ascontiguousarray(rows).reshape(b, k), call.z_loss
    if np.ndim(upstream) != 0:
        raise ValueError(
            f"grad_output must be a scalar for reduction={call.reduction!r}; got shape {np.shape(upstream)}"
        )
    g = float(upstream)
    if call.reduction == "sum":
        return np.full((b, k), g), call.z_loss
    z_coef = call.z_loss * _safe_ratio(call.mean_divisor, call.valid_rows) if call.z_loss else 0.0
    return np.full((b, k), _safe_ratio(g, call.mean_divisor)), z_coef


def _gradient_target(
    call: _CrossEntropyCall, input: npt.ArrayLike, grad_out: object, inplace: bool
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Return ``(rows the kernel writes, the array to deliver or None, whether they are one memory)``."""
    shape = call.inp.array.shape
    compute = call.inp.compute_dtype
    if inplace and grad_out is not None:
        raise ValueError("give either grad_out or inplace=True, not both")
    if inplace:
        if not isinstance(input, np.ndarray):
            raise TypeError(f"inplace=True needs input to be a numpy.ndarray; got {type(input).__name__}")
        if not input.flags.writeable:
            raise ValueError("inplace=True needs a writable input; input is read-only")
        destination = input
    elif grad_out is not None:
        destination = check_out(grad_out, "grad_out", shape, call.inp.result_dtype)
    else:
        return np.empty(call.bck, dtype=compute), None, False
    inputs = (call.inp.array, call.target) if call.probabilities else (call.inp.array,)
    if direct_output(destination, compute, inputs):
        return destination.reshape(call.bck), destination, True
    return np.empty(call.bck, dtype=compute), destination, False


def cross_entropy_and_grad(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = _DEFAULT_IGNORE_INDEX,
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
    call = _prepare_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    grad_scale, z_coef = _grad_scale(call, grad_output)
    grad_rows, destination, direct = _gradient_target(call, input, grad_out, bool(inplace))
    params = LossParams(
        ignore_index=call.params.ignore_index,
        label_smoothing=call.params.label_smoothing,
        softcap=call.params.softcap,
        z_coef=z_coef,
    )
    loss, lse = _run_kernel(call, params, grad_rows, grad_scale)
    grad = grad_rows.reshape(call.inp.array.shape)
    if destination is not None:
        if not direct:
            np.copyto(destination, grad, casting="same_kind")
        grad = destination
    elif grad.dtype != call.inp.result_dtype:
        grad = grad.astype(call.inp.result_dtype)
    return _reduce(call, loss, lse), grad


# --------------------------------------------------------------------------
# TensorFlow-style losses
# --------------------------------------------------------------------------


def softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """Per-example cross-entropy with dense labels, as ``tf.nn.softmax_cross_entropy_with_logits``.

    Parameters
    ----------
    labels : array_like of float
        A distribution over classes per example (rows need not sum to 1),
        of ``logits``'s shape.
    logits : array_like of float16, bfloat16, float32 or float64
        Any shape with at least one axis.
    axis : int, default -1
        The class axis.

    Returns
    -------
    ndarray
        ``-sum(labels * log_softmax(logits, axis), axis)``: ``logits``'s
        shape without ``axis``, in ``logits``'s dtype.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.softmax_cross_entropy_with_logits(np.array([[0.5, 0.5]]), np.array([[0.0, 0.0]]))
    array([0.69314718])
    """
    inp = float_input(logits, "logits")
    if inp.array.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis); got a 0-d array")
    class_axis = normalize_axis(axis, inp.array.ndim)
    label_input = float_input(labels, "labels")
    if label_input.array.shape != inp.array.shape:
        raise ValueError(f"labels must have the shape of logits {inp.array.shape}; got {label_input.array.shape}")
    bck = split_shape(inp.array.shape, class_axis)
    call = _CrossEntropyCall(
        inp=inp,
        logits=canonical(inp.array, inp.compute_dtype, bck),
        target=canonical(label_input.array, inp.compute_dtype, bck),
        probabilities=True,
        weight=np.ones(bck[1], dtype=inp.compute_dtype),
        params=LossParams(),
        loss_shape=inp.array.shape[:class_axis] + inp.array.shape[class_axis + 1 :],
        reduction="none",
        z_loss=0.0,
        mean_divisor=float(bck[0] * bck[2]),
        valid_rows=float(bck[0] * bck[2]),
    )
    loss, lse = _run_kernel(call, call.params, None, None)
    result = _reduce(call, loss, lse)
    assert isinstance(result, np.ndarray)
    return result


def sparse_softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike) -> np.ndarray:
    """Per-example cross-entropy with class indices, as ``tf.nn.sparse_softmax_cross_entropy_with_logits``.

    Parameters
    ----------
    labels : array_like of int
        Class indices in ``[0, C)``, of shape ``logits.shape[:-1]``.
    logits : array_like of float16, bfloat16, float32 or float64
        Shape ``(..., C)``: the class axis is last.

    Returns
    -------
    ndarray
        Shape ``logits.shape[:-1]``, ``logits``'s dtype.

    Raises
    ------
    IndexError
        For a label outside ``[0, C)``, naming the value and its position.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.sparse_softmax_cross_entropy_with_logits(np.array([1]), np.array([[0.0, 0.0]]))
    array([0.69314718])
    """
    inp = float_input(logits, "logits")
    if inp.array.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis); got a 0-d array")
    shape = inp.array.shape
    label_array = np.asarray(labels)
    if label_array.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integer class indices; got dtype {label_array.dtype}")
    if label_array.shape != shape[:-1]:
        raise ValueError(
            f"labels must have shape {shape[:-1]} (logits' shape without the last axis); got {label_array.shape}"
        )
    indices = index_target(label_array, "labels")
    check_index_range(indices, shape[-1], "labels", None)
    bck = split_shape(shape, inp.array.ndim - 1)
    call = _CrossEntropyCall(
        inp=inp,
        logits=canonical(inp.array, inp.compute_dtype, bck),
        target=indices.reshape(bck[0], bck[2]),
        probabilities=False,
        weight=np.ones(bck[1], dtype=inp.compute_dtype),
        # Labels are checked to lie in [0, C): no label equals -1.
        params=LossParams(ignore_index=-1),
        loss_shape=shape[:-1],
        reduction="none",
        z_loss=0.0,
        mean_divisor=float(bck[0]),
        valid_rows=float(bck[0]),
    )
    loss, lse = _run_kernel(call, call.params, None, None)
    result = _reduce(call, loss, lse)
    assert isinstance(result, np.ndarray)
    return result
