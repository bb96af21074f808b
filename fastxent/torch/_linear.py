"""``linear_cross_entropy`` and ``LinearCrossEntropyLoss``: argument checks, then the fused linear loss's op."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_device, check_no_functorch, check_reduction, float_option, grad_wanted, int_option
from ._linear_op import LINEAR_NAMES, check_linear_shapes

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    class_weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """``cross_entropy(hidden @ weight.T + bias, target)`` without materialising the logits.

    The CPU counterpart of Liger-Kernel's fused linear cross-entropy: the
    logits are computed, turned into their gradient and multiplied back
    block by block of ``chunk_rows`` rows, so memory grows with one block,
    not with ``N x V``.

    Parameters
    ----------
    hidden : Tensor of shape (..., H)
        The last hidden states (float32, float64; half precision is computed
        in float32).
    weight : Tensor of shape (V, H)
        The output projection (``nn.Linear(H, V).weight``).
    target : Tensor of int, of shape hidden.shape[:-1]
        Class indices in ``[0, V)`` or ``ignore_index``.
    bias : Tensor of shape (V,), optional
    class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As :func:`cross_entropy` (``class_weight`` is its ``weight``).
    chunk_rows : int, optional
        Rows per block; the default is chosen by :mod:`fastxent._linear`.

    Returns
    -------
    Tensor
        A scalar, or ``target``'s shape for ``reduction="none"``;
        differentiable with respect to ``hidden``, ``weight`` and ``bias``.
    """
    check_device(LINEAR_NAMES, hidden, weight, target, bias, class_weight)
    check_linear_shapes(hidden, weight, target, bias)
    check_no_functorch("fastxent.torch.linear_cross_entropy")
    if grad_wanted(class_weight):
        raise ValueError(
            "class_weight requires grad, but fastxent.torch.linear_cross_entropy does not differentiate "
            "with respect to the class weights; pass class_weight.detach()"
        )
    loss, *_ = torch.ops.fastxent.linear_cross_entropy(
        hidden,
        weight,
        target,
        bias,
        class_weight,
        int_option(ignore_index, "ignore_index"),
        check_reduction(reduction),
        float_option(label_smoothing, "label_smoothing"),
        float_option(z_loss, "z_loss"),
        None if softcap is None else float_option(softcap, "softcap"),
        None if chunk_rows is None else int_option(chunk_rows, "chunk_rows"),
        grad_wanted(hidden) or grad_wanted(weight) or grad_wanted(bias),
    )
    return loss


class LinearCrossEntropyLoss(nn.Module):
    """The module form of :func:`linear_cross_entropy`, with Liger-Kernel's names.

    A drop-in for ``LigerFusedLinearCrossEntropyLoss`` on the CPU: the same
    constructor (``ce_weight``, ``ignore_index``, ``lse_square_scale`` (the
    z-loss), ``label_smoothing``, ``reduction``, ``softcap``) and the same
    ``forward(lin_weight, _input, target, bias=None)``; ``chunk_rows`` is
    fastxent's own.

    Examples
    --------
    >>> import torch, fastxent.torch
    >>> head = torch.nn.Linear(16, 100, bias=False)
    >>> hidden = torch.randn(8, 16, requires_grad=True)
    >>> loss = fastxent.torch.LinearCrossEntropyLoss()(head.weight, hidden, torch.randint(0, 100, (8,)))
    >>> loss.backward()
    >>> head.weight.grad.shape
    torch.Size([100, 16])
    """

    def __init__(
        self,
        ce_weight: Tensor | None = None,
        ignore_index: int = -100,
        lse_square_scale: float = 0.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        softcap: float | None = None,
        *,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.ce_weight: Tensor | None
        self.register_buffer("ce_weight", ce_weight)
        self.ignore_index = int_option(ignore_index, "ignore_index")
        self.lse_square_scale = float_option(lse_square_scale, "lse_square_scale")
        self.label_smoothing = float_option(label_smoothing, "label_smoothing")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing!r}")
        self.reduction = check_reduction(reduction)
        self.softcap = None if softcap is None else float_option(softcap, "softcap")
        self.chunk_rows = chunk_rows

    def forward(self, lin_weight: Tensor, _input: Tensor, target: Tensor, bias: Tensor | None = None) -> Tensor:
        return linear_cross_entropy(
            _input,
            lin_weight,
            target,
            bias,
            class_weight=self.ce_weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.lse_square_scale,
            softcap=self.softcap,
            chunk_rows=self.chunk_rows,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, lse_square_scale={self.lse_square_scale}, "
            f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}, softcap={self.softcap}"
        )
