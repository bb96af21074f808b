"""Checks of the losses' arguments: the device, ``reduction``, number options, torch.func, requires_grad."""

from __future__ import annotations

import numbers
import operator

import torch
from torch import Tensor

_REDUCTIONS = ("none", "mean", "sum")


def _is_fake(tensor: Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def check_device(names: tuple[str, ...], *tensors: Tensor | None) -> None:
    """``ValueError`` naming the device of any tensor not on the CPU (outside compilation / fake mode)."""
    if torch.compiler.is_compiling():  # fake tensors of any device: the compiled graph runs the op, which checks
        return
    for name, tensor in zip(names, tensors):
        if tensor is None or tensor.is_cpu:
            continue
        if _is_fake(tensor):
            return
        raise ValueError(
            f"fastxent.torch computes on the CPU: {name} is on device {str(tensor.device)!r}; "
            f"move it with .cpu() or use torch's own loss on that device"
        )


def check_reduction(reduction: object) -> str:
    """``reduction`` if it is ``"none"``, ``"mean"`` or ``"sum"``, else a ``ValueError`` naming it."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum'; got {reduction!r}")
    return reduction  # type: ignore[return-value]


def float_option(value: object, name: str) -> float:
    """``value`` as a float; ``TypeError`` naming ``name`` for bools and non-real values."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    return float(value)


def int_option(value: object, name: str) -> int:
    """``value`` as an int (anything with ``__index__``); ``TypeError`` naming ``name`` for bools and others."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer; got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}") from None


def check_no_functorch(what: str) -> None:
    """``RuntimeError`` inside torch.func transforms, which the custom ops do not support."""
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            f"{what} does not support torch.func transforms (grad, vmap, jacrev, ...); "
            f"use torch.autograd (loss.backward(), torch.autograd.grad) or torch.compile"
        )


def grad_wanted(tensor: Tensor | None) -> bool:
    """Whether autograd will want a gradient for ``tensor`` (which may be None)."""
    return tensor is not None and tensor.requires_grad and torch.is_grad_enabled()
