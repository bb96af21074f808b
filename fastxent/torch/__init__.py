"""PyTorch front-end: a differentiable, ``torch.compile``-able fused cross-entropy for CPU tensors.

Import it explicitly (``import fastxent.torch``); ``import fastxent`` never
imports torch.

Each loss is one ``torch.library.custom_op`` in the ``fastxent`` namespace
with a fake implementation (``torch.compile`` sees a single op, no graph
break) and an autograd formula. The forward calls the NumPy API on
zero-copy views of the tensors and computes the loss and its gradient in one
sweep, writing the gradient straight into a tensor's memory; that gradient is
saved in place of the log-softmax torch would save, and the backward only
scales it by ``grad_output``. Eager calls on plain CPU tensors run the same
forward and backward through a ``torch.autograd.Function``, which skips the
dispatcher's ~70 us of Python layers (docs/frontends.md).

=============================  ==============================================
``cross_entropy``              ``torch.nn.functional.cross_entropy`` + ``z_loss``, ``softcap``
``CrossEntropyLoss``           ``torch.nn.CrossEntropyLoss`` + ``z_loss``, ``softcap``
``linear_cross_entropy``       ``cross_entropy(hidden @ weight.T + bias, target)`` without the logits
``LinearCrossEntropyLoss``     the module, as Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss``
=============================  ==============================================

The modules: ``_tensors`` (zero-copy conversions), ``_checks`` (argument and
device checks), ``_backward`` (what both autograd formulas share), and per
loss the custom op (``_xent_op``, ``_linear_op``) and the public function and
module over it (``_xent``, ``_linear``).
"""

from __future__ import annotations

try:
    import torch  # noqa: F401  (the submodules import it; here its absence becomes an error that says what to do)
except ImportError as error:  # pragma: no cover - exercised in an environment without torch
    raise ImportError("fastxent.torch needs PyTorch: pip install 'fastxent[torch]'") from error

from ._linear import LinearCrossEntropyLoss, linear_cross_entropy
from ._xent import CrossEntropyLoss, cross_entropy

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]
