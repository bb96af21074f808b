"""Independent implementations the tests compare against: PyTorch and SciPy.

``torch_cross_entropy`` composes torch's own ``cross_entropy`` with the two
extras fastxent adds (``softcap`` before, ``z_loss`` after), and takes the
gradient with autograd.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def torch_cross_entropy(
    logits: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: np.ndarray | float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and ``d loss / d logits`` from torch autograd, computed in ``logits``'s dtype."""
    x = torch.tensor(logits, requires_grad=True)
    capped = softcap * torch.tanh(x / softcap) if softcap else x
    t = torch.tensor(target)
    w = None if weight is None else torch.tensor(weight, dtype=x.dtype)
    loss = F.cross_entropy(
        capped, t, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    if z_loss:
        class_dim = 0 if x.ndim == 1 else 1
        lse = torch.logsumexp(capped, dim=class_dim)
        keep = (t != ignore_index) if not t.is_floating_point() else torch.ones_like(lse, dtype=torch.bool)
        z_rows = torch.where(keep, z_loss * lse**2, torch.zeros_like(lse))
        if reduction == "none":
            loss = loss + z_rows
        elif reduction == "sum":
            loss = loss + z_rows.sum()
        else:
            loss = loss + z_rows.sum() / keep.sum()
    upstream = torch.ones_like(loss) if grad_output is None else torch.as_tensor(grad_output, dtype=loss.dtype)
    loss.backward(upstream.expand_as(loss))
    return loss.detach().numpy(), x.grad.numpy()
