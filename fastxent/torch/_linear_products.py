"""The fused linear cross-entropy's matrix products on torch's BLAS, for the torch front-end.

torch's CPU wheels multiply with MKL, which keeps its speed on the thin
operands of a block of rows far better than the OpenBLAS of NumPy and SciPy
(docs/linear.md: 12 blocks of 171 rows, 2048 x 1024 x 32000, the three
products 1.15-1.19x their full-size time against 1.5x). The arrays stay
NumPy's; the products see them as zero-copy tensors and run on torch's
intra-op threads, as the rest of a torch user's step does.
"""

from __future__ import annotations

import numpy as np
import torch

from .._linear_call import LinearCall
from .._linear_products import Outputs, add_bias_gradient

__all__ = ["TorchProducts"]


class TorchProducts:
    """:class:`fastxent._linear_products.Products`' methods, by ``torch.mm`` and ``Tensor.addmm_``."""

    def __init__(self, call: LinearCall, outputs: Outputs | None) -> None:
        self.hidden = torch.from_numpy(call.hidden)
        self.weight = torch.from_numpy(call.weight)
        self.bias = call.bias
        self.outputs = outputs
        if outputs is not None:
            self.grad_hidden = torch.from_numpy(outputs.grad_hidden)
            self.grad_weight = torch.from_numpy(outputs.grad_weight)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.hidden[start:stop]

    def logits(self, rows: torch.Tensor, out: np.ndarray, low: int = 0, high: int | None = None) -> None:
        """``out = rows @ weight[low:high].T (+ bias[low:high])``; ``out`` C-contiguous."""
        torch.mm(rows, self.weight[low:high].T, out=torch.from_numpy(out))
        if self.bias is not None:
            out += self.bias[low:high]

    def backward(self, grad: np.ndarray, rows: torch.Tensor, start: int, stop: int) -> None:
        assert self.outputs is not None
        block = torch.from_numpy(grad)
        torch.mm(block, self.weight, out=self.grad_hidden[start:stop])
        if start == 0:
            torch.mm(block.T, rows, out=self.grad_weight)
        else:
            self.grad_weight.addmm_(block.T, rows)
        add_bias_gradient(self.outputs.grad_bias, grad, start == 0)

    def finish(self) -> None:
        """Nothing to do: the outputs were written in place."""
