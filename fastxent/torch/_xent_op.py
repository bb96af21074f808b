"""The ``fastxent::cross_entropy`` custom op: its implementation, fake implementation and autograd formula.

The forward writes the gradient for a unit upstream gradient straight into a
tensor's memory; the backward only scales it (and, for class-probability
targets that require grad, computes ``d loss / d target``).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from .._xent import Reduction
from .._xent import cross_entropy as _np_cross_entropy
from .._xent import cross_entropy_and_grad as _np_cross_entropy_and_grad
from ._backward import refuse_double_backward, scaled
from ._checks import check_device, check_reduction
from ._tensors import HALF, as_numpy, empty_tensor, to_tensor

#: The tensor arguments, named in errors.
XENT_NAMES = ("input", "target", "weight")


def _loss_shape(input: Tensor, target: Tensor, reduction: str) -> tuple[int, ...]:
    """The loss's shape (and a check of ``target``'s), as torch gives it."""
    shape = tuple(input.shape)
    index_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if tuple(target.shape) != (shape if target.is_floating_point() else index_shape):
        raise ValueError(
            f"target must have shape {index_shape} (class indices) or {shape} "
            f"(class probabilities) for input of shape {shape}; got {tuple(target.shape)}"
        )
    return index_shape if reduction == "none" else ()


def cross_entropy_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> Tensor:
    """The loss alone (no gradient wanted), as :func:`cross_entropy_impl` computes it."""
    loss = _np_cross_entropy(
        as_numpy(input),
        as_numpy(target),
        None if weight is None else as_numpy(weight),
        ignore_index,
        cast(Reduction, reduction),
        label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    return to_tensor(loss, input.dtype)


def cross_entropy_impl(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(loss, d loss / d input)``; the gradient is empty unless ``compute_grad``."""
    if not compute_grad:
        args = (input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
        return cross_entropy_loss(*args), input.new_empty(0)
    dtype = input.dtype
    logits, labels = as_numpy(input), as_numpy(target)
    weights = None if weight is None else as_numpy(weight)
    grad = empty_tensor(tuple(input.shape), logits.dtype)  # float32 for half precision, as `logits`
    loss, _ = _np_cross_entropy_and_grad(
        logits,
        labels,
        weights,
        ignore_index,
        cast(Reduction, reduction),  # checked: by cross_entropy, or by the NumPy API right here
        label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        grad_out=grad.numpy(),
    )
    return to_tensor(loss, dtype), grad if grad.dtype == dtype else grad.to(dtype)


@torch.library.custom_op("fastxent::cross_entropy", mutates_args=())
def _cross_entropy_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(loss, d loss / d input)``: the loss and, when ``compute_grad``, its gradient for a unit upstream one."""
    check_device(XENT_NAMES, input, target, weight)
    return cross_entropy_impl(
        input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, compute_grad
    )


@_cross_entropy_op.register_fake
def _cross_entropy_fake(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    loss = input.new_empty(_loss_shape(input, target, check_reduction(reduction)))
    return loss, input.new_empty(input.shape if compute_grad else (0,))


def save_context(ctx, inputs: tuple, grad: Tensor) -> None:  # type: ignore[no-untyped-def, type-arg]
    """Save on ``ctx`` what :func:`cross_entropy_backward` reads: the op's options, ``grad``, and for
    probability targets that require grad, the input and the class weights."""
    input, target, weight, _, reduction, label_smoothing, _, softcap, _ = inputs
    ctx.reduction = reduction
    ctx.label_smoothing = label_smoothing
    ctx.softcap = softcap
    ctx.input_shape = input.shape
    if target.requires_grad:  # class probabilities: d loss / d target needs log_softmax(input)
        ctx.save_for_backward(grad, input, weight)
    else:
        ctx.save_for_backward(grad)


def _cross_entropy_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    # The gradient output is never differentiated: no zeros of the input's size for its "gradient".
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    save_context(ctx, inputs, output[1])


def cross_entropy_backward(ctx, grad_loss: Tensor | None, _: Tensor | None):  # type: ignore[no-untyped-def]
    """The op's autograd formula: the gradients of ``input`` and ``target`` (None for the other arguments)."""
    saved = ctx.saved_tensors
    grad_input = grad_target = None
    if grad_loss is None:  # materialize_grads is off: no gradient reached the loss
        return (None,) * 9
    per_row = ctx.reduction == "none" and grad_loss.dim() > 0
    if ctx.needs_input_grad[0]:
        refuse_double_backward(grad_loss, "fastxent.torch.cross_entropy")
        if saved[0].shape != ctx.input_shape:
            raise RuntimeError(
                "fastxent::cross_entropy was called with compute_grad=False on an input that requires grad; "
                "call fastxent.torch.cross_entropy instead of the op"
            )
        grad_input = scaled(saved[0], grad_loss, per_row)
    if ctx.needs_input_grad[1]:
        grad_target = _probability_target_grad(ctx, saved[1], saved[2], grad_loss, per_row)
    return grad_input, grad_target, None, None, None, None, None, None, None


def _probability_target_grad(ctx, input: Tensor, weight: Tensor | None, grad_loss: Tensor, per_row: bool) -> Tensor:  # type: ignore[no-untyped-def]
    """``d loss / d target`` for class probabilities: ``-(1 - label_smoothing) * weight * log_softmax``."""
    class_dim = 0 if input.dim() == 1 else 1
    compute = torch.float32 if input.dtype in HALF else input.dtype
    logits = input.detach().to(compute)
    if ctx.softcap is not None:
        logits = ctx.softcap * torch.tanh(logits / ctx.softcap)
    grad = torch.log_softmax(logits, class_dim).mul_(-(1.0 - ctx.label_smoothing))
    if weight is not None:
        grad = grad * weight.detach().to(compute).view((-1,) + (1,) * (input.dim() - 1 - class_dim))
    scale = grad_loss.to(compute)
    if per_row:
        scale = scale.unsqueeze(1)
    elif ctx.reduction == "mean":
        rows = input.numel() // input.shape[class_dim] if input.numel() else 0
        scale = scale / rows
    return (grad * scale).to(input.dtype)


_cross_entropy_op.register_autograd(cross_entropy_backward, setup_context=_cross_entropy_setup)
