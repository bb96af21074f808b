"""What the backward of both custom ops shares: scaling the saved gradient, refusing double backward."""

from __future__ import annotations

import torch
from torch import Tensor

_KEEP_GRAPH_PROBE = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True when unknown."""
    if _KEEP_GRAPH_PROBE is None:
        return True
    try:
        return bool(_KEEP_GRAPH_PROBE())
    except RuntimeError:
        return True


def scaled(saved: Tensor, grad_output: Tensor, per_row: bool) -> Tensor:
    """``saved * grad_output`` (row-wise along axis 1 when ``per_row``).

    In eager mode, for the common ``loss.backward()`` (upstream gradient 1, the
    graph freed afterwards, no double backward) the saved gradient is handed
    out as it is: nothing else will read it, and that saves a pass over it.
    """
    if per_row:
        return saved * grad_output.unsqueeze(1)
    if (
        type(grad_output) is Tensor  # a real tensor: not traced by torch.compile / make_fx
        and not torch.is_grad_enabled()
        and grad_output.item() == 1.0
        and not _keep_graph()
    ):
        return saved
    return saved * grad_output


def refuse_double_backward(grad_output: Tensor, what: str) -> None:
    """``RuntimeError`` when the backward itself is being recorded (``create_graph=True``)."""
    if type(grad_output) is Tensor and torch.is_grad_enabled():
        raise RuntimeError(
            f"{what}: double backward (create_graph=True) is not supported: the saved gradient is not "
            f"differentiable; use torch.nn.functional's loss for higher-order gradients"
        )
