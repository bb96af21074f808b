"""Cross-entropy with torch's semantics: ``cross_entropy`` and ``cross_entropy_and_grad``.

Each call is checked and laid out by :mod:`fastxent._xent_call`, runs one
kernel, and is reduced there; this module adds the gradient's destination
and upstream scale.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._layout import check_out, direct_output
from ._reduction import gradient_scale
from ._xent_call import DEFAULT_IGNORE_INDEX, Reduction, XentCall, loss_params, prepare, reduce, run_kernel

__all__ = ["cross_entropy", "cross_entropy_and_grad"]


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
    call = prepare(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, "loss+grad")
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
