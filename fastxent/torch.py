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
"""

from __future__ import annotations

import numbers
import operator
from typing import cast

import numpy as np

try:
    import torch
    from torch import Tensor, nn
except ImportError as error:  # pragma: no cover - exercised in an environment without torch
    raise ImportError("fastxent.torch needs PyTorch: pip install 'fastxent[torch]'") from error

from ._xent import Reduction
from ._xent import cross_entropy as _np_cross_entropy
from ._xent import cross_entropy_and_grad as _np_cross_entropy_and_grad

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]

_HALF = (torch.float16, torch.bfloat16)
_XENT_NAMES = ("input", "target", "weight")
_LINEAR_NAMES = ("hidden", "weight", "target", "bias", "class_weight")
_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------
# Tensor <-> NumPy
# ---------------------------------------------------------------------------


def _numpy(tensor: Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor (half precision is widened to float32 first)."""
    if tensor.dtype in _HALF:
        tensor = tensor.float()
    return tensor.detach().numpy()


def _numpy_exact(tensor: Tensor) -> np.ndarray:
    """A zero-copy NumPy view in the tensor's own dtype: bfloat16 through ``ml_dtypes`` (float32 without it)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            return tensor.float().numpy()
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _to_tensor(value: object, dtype: torch.dtype) -> Tensor:
    """A NumPy result (scalar or array) as a tensor of ``dtype``; not copied when the dtype matches."""
    if type(value) is not np.ndarray:  # a reduced loss: a NumPy scalar
        return torch.scalar_tensor(float(value), dtype=dtype)  # type: ignore[arg-type]
    array = value
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: torch.from_numpy does not know it
        result = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        result = torch.from_numpy(array)
    return result if result.dtype == dtype else result.to(dtype)


def _is_fake(tensor: Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def _check_device(names: tuple[str, ...], *tensors: Tensor | None) -> None:
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


def _check_reduction(reduction: object) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum'; got {reduction!r}")
    return reduction  # type: ignore[return-value]


def _float_option(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    return float(value)


def _int_option(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer; got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}") from None


def _check_no_functorch(what: str) -> None:
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            f"{what} does not support torch.func transforms (grad, vmap, jacrev, ...); "
            f"use torch.autograd (loss.backward(), torch.autograd.grad) or torch.compile"
        )


def _grad_wanted(tensor: Tensor | None) -> bool:
    return tensor is not None and tensor.requires_grad and torch.is_grad_enabled()


# ---------------------------------------------------------------------------
# Backward helpers shared by both ops
# ---------------------------------------------------------------------------


_KEEP_GRAPH_PROBE = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True when unknown."""
    if _KEEP_GRAPH_PROBE is None:
        return True
    try:
        return bool(_KEEP_GRAPH_PROBE())
    except RuntimeError:
        return True


def _scaled(saved: Tensor, grad_output: Tensor, per_row: bool) -> Tensor:
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


def _refuse_double_backward(grad_output: Tensor, what: str) -> None:
    if type(grad_output) is Tensor and torch.is_grad_enabled():
        raise RuntimeError(
            f"{what}: double backward (create_graph=True) is not supported: the saved gradient is not "
            f"differentiable; use torch.nn.functional's loss for higher-order gradients"
        )


# ---------------------------------------------------------------------------
# cross_entropy
# ---------------------------------------------------------------------------


def _loss_shape(input: Tensor, target: Tensor, reduction: str) -> tuple[int, ...]:
    """The loss's shape (and a check of ``target``'s), as torch gives it."""
    shape = tuple(input.shape)
    index_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if target.is_floating_point():
        if tuple(target.shape) != shape:
            raise ValueError(
                f"target must have shape {index_shape} (class indices) or {shape} "
                f"(class probabilities) for input of shape {shape}; got {tuple(target.shape)}"
            )
    elif tuple(target.shape) != index_shape:
        raise ValueError(
            f"target must have shape {index_shape} (class indices) or {shape} "
            f"(class probabilities) for input of shape {shape}; got {tuple(target.shape)}"
        )
    return index_shape if reduction == "none" else ()


def _cross_entropy_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> Tensor:
    """The loss alone (no gradient wanted), as :func:`_cross_entropy_impl` computes it."""
    loss = _np_cross_entropy(
        _numpy(input),
        _numpy(target),
        None if weight is None else _numpy(weight),
        ignore_index,
        cast(Reduction, reduction),
        label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    return _to_tensor(loss, input.dtype)


def _cross_entropy_impl(
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
    mode = cast(Reduction, reduction)  # checked: by cross_entropy, or by the NumPy API right here
    dtype = input.dtype
    logits = _numpy(input)
    labels = _numpy(target)
    weights = None if weight is None else _numpy(weight)
    if not compute_grad:
        loss = _np_cross_entropy(
            logits, labels, weights, ignore_index, mode, label_smoothing, z_loss=z_loss, softcap=softcap
        )
        return _to_tensor(loss, dtype), input.new_empty(0)
    grad = torch.empty(input.shape, dtype=torch.float32 if dtype in _HALF else dtype)
    loss, _ = _np_cross_entropy_and_grad(
        logits,
        labels,
        weights,
        ignore_index,
        mode,
        label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        grad_out=grad.numpy(),
    )
    return _to_tensor(loss, dtype), grad if grad.dtype == dtype else grad.to(dtype)


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
    _check_device(_XENT_NAMES, input, target, weight)
    return _cross_entropy_impl(
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
    loss = input.new_empty(_loss_shape(input, target, _check_reduction(reduction)))
    return loss, input.new_empty(input.shape if compute_grad else (0,))


def _cross_entropy_save(ctx, inputs: tuple, grad: Tensor) -> None:  # type: ignore[no-untyped-def, type-arg]
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
    _cross_entropy_save(ctx, inputs, output[1])


def _cross_entropy_backward(ctx, grad_loss: Tensor | None, _: Tensor | None):  # type: ignore[no-untyped-def]
    saved = ctx.saved_tensors
    grad_input = grad_target = None
    if grad_loss is None:  # materialize_grads is off: no gradient reached the loss
        return (None,) * 9
    per_row = ctx.reduction == "none" and grad_loss.dim() > 0
    if ctx.needs_input_grad[0]:
        _refuse_double_backward(grad_loss, "fastxent.torch.cross_entropy")
        if saved[0].shape != ctx.input_shape:
            raise RuntimeError(
                "fastxent::cross_entropy was called with compute_grad=False on an input that requires grad; "
                "call fastxent.torch.cross_entropy instead of the op"
            )
        grad_input = _scaled(saved[0], grad_loss, per_row)
    if ctx.needs_input_grad[1]:
        grad_target = _probability_target_grad(ctx, saved[1], saved[2], grad_loss, per_row)
    return grad_input, grad_target, None, None, None, None, None, None, None


def _probability_target_grad(ctx, input: Tensor, weight: Tensor | None, grad_loss: Tensor, per_row: bool) -> Tensor:  # type: ignore[no-untyped-def]
    """``d loss / d target`` for class probabilities: ``-(1 - label_smoothing) * weight * log_softmax``."""
    class_dim = 0 if input.dim() == 1 else 1
    compute = torch.float32 if input.dtype in _HALF else input.dtype
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


_cross_entropy_op.register_autograd(_cross_entropy_backward, setup_context=_cross_entropy_setup)


class _CrossEntropyFunction(torch.autograd.Function):
    """The op's forward and autograd formula without the dispatcher, for eager calls (see :func:`_eager`)."""

    # forward(ctx, ...) rather than setup_context: apply() then binds no signature (~40 us a call),
    # and the gradient is no output (~10 us less).
    @staticmethod
    def forward(ctx, *args):  # type: ignore[no-untyped-def, override]
        loss, grad = _cross_entropy_impl(*args)
        _cross_entropy_save(ctx, args, grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[no-untyped-def, override]
        return _cross_entropy_backward(ctx, grad_loss, None)


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
        label_smoothing = _float_option(label_smoothing, "label_smoothing")
        z_loss = _float_option(z_loss, "z_loss")
    if softcap is not None:
        softcap = _float_option(softcap, "softcap")
    ignore_index = ignore_index if type(ignore_index) is int else _int_option(ignore_index, "ignore_index")
    args = (input, target, weight, ignore_index, _check_reduction(reduction), label_smoothing, z_loss, softcap)
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
        return _cross_entropy_loss(*args)
    _check_device(_XENT_NAMES, input, target, weight)
    _check_no_functorch("fastxent.torch.cross_entropy")
    if _grad_wanted(weight):
        raise ValueError(
            "weight requires grad, but fastxent.torch.cross_entropy does not differentiate with respect "
            "to the class weights (torch's nll_loss does not either); pass weight.detach()"
        )
    if not (_eager() and _plain(input, target, weight)):
        return torch.ops.fastxent.cross_entropy(*args, compute_grad)[0]
    if compute_grad or _grad_wanted(target):
        return _CrossEntropyFunction.apply(*args, compute_grad)
    return _cross_entropy_loss(*args)


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
        self.z_loss = _float_option(z_loss, "z_loss")
        self.softcap = None if softcap is None else _float_option(softcap, "softcap")

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


# ---------------------------------------------------------------------------
# linear_cross_entropy
# ---------------------------------------------------------------------------


def _linear_module():  # type: ignore[no-untyped-def]
    from . import _linear

    return _linear


def _linear_arrays(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, class_weight: Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Zero-copy views: half precision stays half (the NumPy API widens it a block at a time)."""
    return (
        _numpy_exact(hidden),
        _numpy_exact(weight),
        None if bias is None else _numpy_exact(bias),
        None if class_weight is None else _numpy(class_weight),
    )


def _linear_grads(result: tuple, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[type-arg]
    _, grad_hidden, grad_weight, grad_bias = result
    return (
        _to_tensor(grad_hidden, hidden.dtype),
        _to_tensor(grad_weight, weight.dtype),
        hidden.new_empty(0) if bias is None else _to_tensor(grad_bias, bias.dtype),
    )


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
    _check_device(_LINEAR_NAMES, hidden, weight, target, bias, class_weight)
    linear = _linear_module()
    h, w, b, cw = _linear_arrays(hidden, weight, bias, class_weight)
    options = dict(
        class_weight=cw,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        chunk_rows=chunk_rows,
    )
    empty = hidden.new_empty(0)
    if not compute_grad or reduction == "none":
        # A per-row loss's gradients depend on the upstream gradient: the backward computes them.
        loss = linear.linear_cross_entropy(h, w, _numpy(target), b, **options)
        return _to_tensor(loss, hidden.dtype), empty, empty.clone(), empty.clone()
    result = linear.linear_cross_entropy_and_grad(h, w, _numpy(target), b, **options)
    return (_to_tensor(result[0], hidden.dtype), *_linear_grads(result, hidden, weight, bias))


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
    _check_linear_shapes(hidden, weight, target, bias)
    loss = hidden.new_empty(tuple(target.shape) if _check_reduction(reduction) == "none" else ())
    if not compute_grad or reduction == "none":
        return loss, hidden.new_empty(0), hidden.new_empty(0), hidden.new_empty(0)
    grad_bias = hidden.new_empty(0) if bias is None else bias.new_empty(bias.shape)
    return loss, hidden.new_empty(hidden.shape), weight.new_empty(weight.shape), grad_bias


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
    linear = _linear_module()
    h, w, b, cw = _linear_arrays(hidden, weight, bias, class_weight)
    result = linear.linear_cross_entropy_and_grad(
        h,
        w,
        _numpy(target),
        b,
        class_weight=cw,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        chunk_rows=chunk_rows,
        grad_output=_numpy(grad_output),
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
    grad_bias = hidden.new_empty(0) if bias is None else bias.new_empty(bias.shape)
    return hidden.new_empty(hidden.shape), weight.new_empty(weight.shape), grad_bias


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
    _refuse_double_backward(grad_loss, "fastxent.torch.linear_cross_entropy")
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
        grads = tuple(_scaled(g, grad_loss, False) for g in saved)
    grad_hidden, grad_weight, grad_bias = grads
    return (
        grad_hidden if need_hidden else None,
        grad_weight if need_weight else None,
        None,
        grad_bias if need_bias and ctx.has_bias else None,
        *(None,) * 8,
    )


_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


def _check_linear_shapes(hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None) -> None:
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
    _check_device(_LINEAR_NAMES, hidden, weight, target, bias, class_weight)
    _check_linear_shapes(hidden, weight, target, bias)
    _check_no_functorch("fastxent.torch.linear_cross_entropy")
    if _grad_wanted(class_weight):
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
        _int_option(ignore_index, "ignore_index"),
        _check_reduction(reduction),
        _float_option(label_smoothing, "label_smoothing"),
        _float_option(z_loss, "z_loss"),
        None if softcap is None else _float_option(softcap, "softcap"),
        None if chunk_rows is None else _int_option(chunk_rows, "chunk_rows"),
        _grad_wanted(hidden) or _grad_wanted(weight) or _grad_wanted(bias),
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
        self.ignore_index = _int_option(ignore_index, "ignore_index")
        self.lse_square_scale = _float_option(lse_square_scale, "lse_square_scale")
        self.label_smoothing = _float_option(label_smoothing, "label_smoothing")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing!r}")
        self.reduction = _check_reduction(reduction)
        self.softcap = None if softcap is None else _float_option(softcap, "softcap")
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
