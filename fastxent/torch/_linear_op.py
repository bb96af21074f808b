"""The ``fastxent::linear_cross_entropy`` custom ops: the loss (with its gradients) and its backward.

For a reduced loss the forward computes the gradients of ``hidden``,
``weight`` and ``bias`` with the loss and the backward scales them; a
per-row loss (``reduction="none"``) has gradients that depend on the
upstream one, so its backward is a second op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._linear import linear_cross_entropy as _np_linear_cross_entropy
from .._linear import linear_cross_entropy_and_grad as _np_linear_cross_entropy_and_grad
from .._linear_products import products_from
from ._backward import refuse_double_backward, scaled
from ._checks import check_device, check_reduction
from ._linear_products import TorchProducts
from ._tensors import as_numpy, as_numpy_exact, to_tensor

#: The tensor arguments, named in errors.
LINEAR_NAMES = ("hidden", "weight", "target", "bias", "class_weight")


def check_linear_shapes(hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None) -> None:
    """``ValueError`` naming the first argument whose shape does not fit the others'."""
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (V, H), one row per class; got {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden must have shape (..., H) with H = weight.shape[1] = {weight.shape[1]}; got {tuple(hidden.shape)}"
        )
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"target must have hidden's shape without its last axis, {tuple(hidden.shape[:-1])}; "
            f"got {tuple(target.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},); got {tuple(bias.shape)}")


def _linear_arrays(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, class_weight: Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Zero-copy views: half precision stays half (the NumPy API widens it a block at a time)."""
    return (
        as_numpy_exact(hidden),
        as_numpy_exact(weight),
        None if bias is None else as_numpy_exact(bias),
        None if class_weight is None else as_numpy(class_weight),
    )


def _on_arrays(
    function: Callable[..., Any],
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int | None,
    **extra: Any,
) -> Any:
    """``function`` (the NumPy API's linear loss, or loss and gradients) on zero-copy views of the tensors."""
    h, w, b, cw = _linear_arrays(hidden, weight, bias, class_weight)
    with products_from(TorchProducts):
        return function(
            h,
            w,
            as_numpy(target),
            b,
            class_weight=cw,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            chunk_rows=chunk_rows,
            **extra,
        )


def _linear_grads(result: tuple, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[type-arg]
    _, grad_hidden, grad_weight, grad_bias = result
    return (
        to_tensor(grad_hidden, hidden.dtype),
        to_tensor(grad_weight, weight.dtype),
        hidden.new_empty(0) if bias is None else to_tensor(grad_bias, bias.dtype),
    )


def _fake_grads(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Empty tensors shaped as the gradients of ``hidden``, ``weight`` and ``bias`` (size 0 without a bias)."""
    grad_bias = hidden.new_empty(0) if bias is None else bias.new_empty(bias.shape)
    return hidden.new_empty(hidden.shape), weight.new_empty(weight.shape), grad_bias


@torch.library.custom_op("fastxent::linear_cross_entropy", mutates_args=())
def _linear_op(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int | None,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, grad_hidden, grad_weight, grad_bias)``; gradients empty unless ``compute_grad``."""
    check_device(LINEAR_NAMES, hidden, weight, target, bias, class_weight)
    args = (
        hidden,
        weight,
        target,
        bias,
        class_weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        chunk_rows,
    )
    empty = hidden.new_empty(0)
    if not compute_grad or reduction == "none":
        # A per-row loss's gradients depend on the upstream gradient: the backward computes them.
        loss = _on_arrays(_np_linear_cross_entropy, *args)
        return to_tensor(loss, hidden.dtype), empty, empty.clone(), empty.clone()
    result = _on_arrays(_np_linear_cross_entropy_and_grad, *args)
    return (to_tensor(result[0], hidden.dtype), *_linear_grads(result, hidden, weight, bias))


@_linear_op.register_fake
def _linear_fake(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int | None,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_linear_shapes(hidden, weight, target, bias)
    loss = hidden.new_empty(tuple(target.shape) if check_reduction(reduction) == "none" else ())
    if not compute_grad or reduction == "none":
        return loss, hidden.new_empty(0), hidden.new_empty(0), hidden.new_empty(0)
    return (loss, *_fake_grads(hidden, weight, bias))


@torch.library.custom_op("fastxent::linear_cross_entropy_backward", mutates_args=())
def _linear_backward_op(
    grad_output: Tensor,
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of ``reduction="none"`` for the per-row upstream gradient ``grad_output``."""
    result = _on_arrays(
        _np_linear_cross_entropy_and_grad,
        hidden,
        weight,
        target,
        bias,
        class_weight,
        ignore_index,
        "none",
        label_smoothing,
        z_loss,
        softcap,
        chunk_rows,
        grad_output=as_numpy(grad_output),
    )
    return _linear_grads(result, hidden, weight, bias)


@_linear_backward_op.register_fake
def _linear_backward_fake(
    grad_output: Tensor,
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    return _fake_grads(hidden, weight, bias)


def _linear_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    hidden, weight, target, bias, class_weight, ignore_index, reduction, eps, z_loss, softcap, chunk_rows, _ = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # else backward gets zeros of the gradients' sizes for those outputs
    ctx.reduction = reduction
    ctx.options = (ignore_index, eps, z_loss, softcap, chunk_rows)
    ctx.has_bias = bias is not None
    if reduction == "none":
        ctx.save_for_backward(hidden, weight, target, bias, class_weight)
    else:
        ctx.save_for_backward(*output[1:])


def _linear_backward(ctx, grad_loss: Tensor | None, *_: Tensor | None):  # type: ignore[no-untyped-def]
    need_hidden, need_weight, _, need_bias = ctx.needs_input_grad[:4]
    if grad_loss is None or not (need_hidden or need_weight or need_bias):
        return (None,) * 12
    refuse_double_backward(grad_loss, "fastxent.torch.linear_cross_entropy")
    if ctx.reduction == "none":
        hidden, weight, target, bias, class_weight = ctx.saved_tensors
        grads = torch.ops.fastxent.linear_cross_entropy_backward(
            grad_loss.contiguous(), hidden, weight, target, bias, class_weight, *ctx.options
        )
    else:
        saved = ctx.saved_tensors
        if saved[0].numel() == 0 and saved[1].numel() != 0:
            raise RuntimeError(
                "fastxent::linear_cross_entropy was called with compute_grad=False on inputs that require "
                "grad; call fastxent.torch.linear_cross_entropy instead of the op"
            )
        grads = tuple(scaled(g, grad_loss, False) for g in saved)
    grad_hidden, grad_weight, grad_bias = grads
    return (
        grad_hidden if need_hidden else None,
        grad_weight if need_weight else None,
        None,
        grad_bias if need_bias and ctx.has_bias else None,
        *(None,) * 8,
    )


_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)
