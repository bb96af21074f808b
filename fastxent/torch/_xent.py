"""``cross_entropy`` and ``CrossEntropyLoss``: argument checks, then the ``fastxent::cross_entropy`` op.

Eager calls on plain CPU tensors skip the dispatcher: they run the op's
implementation and autograd formula through a ``torch.autograd.Function``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_device, check_no_functorch, check_reduction, float_option, grad_wanted, int_option
from ._xent_op import XENT_NAMES, cross_entropy_backward, cross_entropy_impl, cross_entropy_loss, save_context

__all__ = ["CrossEntropyLoss", "cross_entropy"]


class _CrossEntropyFunction(torch.autograd.Function):
    """The op's forward and autograd formula without the dispatcher, for eager calls (see :func:`_eager`)."""

    # forward(ctx, ...) rather than setup_context: apply() then binds no signature (~40 us a call),
    # and the gradient is no output (~10 us less).
    @staticmethod
    def forward(ctx, *args):  # type: ignore[no-untyped-def, override]
        loss, grad = cross_entropy_impl(*args)
        save_context(ctx, args, grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[no-untyped-def, override]
        return cross_entropy_backward(ctx, grad_loss, None)


def _eager() -> bool:
    """Whether a call may skip the custom op and run its Python implementation directly.

    The dispatcher's Python layers around a custom op cost ~70 us a call
    (5x a small loss). Eager calls on plain CPU tensors therefore run the same
    implementation and autograd formula through a plain
    ``torch.autograd.Function``; torch.compile, torch.export, dispatch modes
    and fake or meta tensors get the registered op.
    """
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack())


def _plain(*tensors: Tensor | None) -> bool:
    """Whether every tensor is a plain ``Tensor`` or ``Parameter`` (no subclass that must see the op)."""
    return all(tensor is None or type(tensor) is Tensor or type(tensor) is nn.Parameter for tensor in tensors)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """Cross-entropy between logits and targets, as ``torch.nn.functional.cross_entropy``, fused.

    Parameters
    ----------
    input : Tensor of shape (C,), (N, C) or (N, C, d1, ..., dK)
        Logits on the CPU, float16, bfloat16, float32 or float64 (half
        precision is computed in float32); the class axis is 1 (0 for 1-D).
    target : Tensor
        Class indices (an integer dtype) of ``input``'s shape without the
        class axis, or class probabilities (a float tensor of ``input``'s
        shape; may require grad).
    weight : Tensor of shape (C,), optional
        A weight per class (not differentiable, as in torch).
    ignore_index : int, default -100
        Class-index targets equal to this contribute nothing; with probability
        targets only the default is accepted (as in torch).
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float, default 0.0
        Adds ``z_loss * logsumexp(row)**2`` per non-ignored row.
    softcap : float, optional
        Logits become ``softcap * tanh(logits / softcap)`` first.

    Returns
    -------
    Tensor
        ``input``'s dtype; a scalar, or the class-index shape for ``"none"``.

    Examples
    --------
    >>> import torch, fastxent.torch
    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> loss = fastxent.torch.cross_entropy(logits, torch.tensor([0, 2]))
    >>> loss.backward()
    >>> round(loss.item(), 4)
    0.6691
    >>> logits.grad.round(decimals=4)  # (softmax - one_hot) / 2
    tensor([[-0.1065,  0.0533,  0.0533],
            [ 0.1667,  0.1667, -0.3333]])
    """
    if type(label_smoothing) is not float or type(z_loss) is not float:
        label_smoothing = float_option(label_smoothing, "label_smoothing")
        z_loss = float_option(z_loss, "z_loss")
    if softcap is not None:
        softcap = float_option(softcap, "softcap")
    ignore_index = ignore_index if type(ignore_index) is int else int_option(ignore_index, "ignore_index")
    args = (input, target, weight, ignore_index, check_reduction(reduction), label_smoothing, z_loss, softcap)
    grad_enabled = torch.is_grad_enabled()
    compute_grad = grad_enabled and input.requires_grad
    if (
        type(input) is Tensor
        and type(target) is Tensor
        and input.is_cpu
        and target.is_cpu
        and weight is None
        and not torch._C._are_functorch_transforms_active()
        and _eager()
    ):
        # The common case, checked in ~1 us: plain CPU tensors, no class weights.
        if compute_grad or (grad_enabled and target.requires_grad):
            return _CrossEntropyFunction.apply(*args, compute_grad)
        return cross_entropy_loss(*args)
    check_device(XENT_NAMES, input, target, weight)
    check_no_functorch("fastxent.torch.cross_entropy")
    if grad_wanted(weight):
        raise ValueError(
            "weight requires grad, but fastxent.torch.cross_entropy does not differentiate with respect "
            "to the class weights (torch's nll_loss does not either); pass weight.detach()"
        )
    if not (_eager() and _plain(input, target, weight)):
        return torch.ops.fastxent.cross_entropy(*args, compute_grad)[0]
    if compute_grad or grad_wanted(target):
        return _CrossEntropyFunction.apply(*args, compute_grad)
    return cross_entropy_loss(*args)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by :func:`cross_entropy`, plus ``z_loss`` and ``softcap``.

    A subclass of torch's: the same constructor (``weight`` is a buffer,
    ``size_average`` / ``reduce`` are the deprecated forms of ``reduction``),
    the same ``state_dict``.

    Examples
    --------
    >>> import torch, fastxent.torch
    >>> criterion = fastxent.torch.CrossEntropyLoss(label_smoothing=0.1)
    >>> logits = torch.zeros(4, 10, requires_grad=True)
    >>> criterion(logits, torch.tensor([1, 2, 3, 4])).backward()
    >>> logits.grad.shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = float_option(z_loss, "z_loss")
        self.softcap = None if softcap is None else float_option(softcap, "softcap")

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        return ", ".join(parts)
