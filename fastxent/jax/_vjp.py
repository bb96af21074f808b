"""The FFI calls (the loss, the scaling by the cotangent) and the custom VJPs of both losses over them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._handlers import register


def _loss_call(logits: jax.Array, labels: jax.Array, axis: int, dense: bool, with_grad: bool) -> tuple[jax.Array, ...]:
    register()
    loss_shape = logits.shape[: logits.ndim + axis] + logits.shape[logits.ndim + axis + 1 :]
    shapes = [jax.ShapeDtypeStruct(loss_shape, logits.dtype)]
    if with_grad:
        shapes.append(jax.ShapeDtypeStruct(logits.shape, logits.dtype))
    call = jax.ffi.ffi_call("fastxent_cross_entropy", shapes, vmap_method="broadcast_all")
    return tuple(call(logits, labels, axis=np.int64(axis), dense=np.int64(dense)))


def _scale(grad: jax.Array, cotangent: jax.Array, axis: int) -> jax.Array:
    register()
    call = jax.ffi.ffi_call(
        "fastxent_scale_rows",
        jax.ShapeDtypeStruct(grad.shape, grad.dtype),
        vmap_method="broadcast_all",
        input_output_aliases={0: 0},
    )
    return call(grad, cotangent.astype(grad.dtype), axis=np.int64(axis))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def sparse_loss(logits: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
    """Per-example losses for class indices ``labels``; class axis ``axis`` (negative), differentiable in logits."""
    return _loss_call(logits, labels, axis, dense=False, with_grad=False)[0]


def _sparse_fwd(logits: jax.Array, labels: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    loss, grad = _loss_call(logits, labels, axis, dense=False, with_grad=True)
    return loss, grad


def _sparse_bwd(axis: int, grad: jax.Array, cotangent: jax.Array) -> tuple[jax.Array, None]:
    return _scale(grad, cotangent, axis), None


sparse_loss.defvjp(_sparse_fwd, _sparse_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_loss(logits: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
    """Per-example losses for class probabilities ``labels`` of logits' shape; differentiable in both."""
    return _loss_call(logits, labels, axis, dense=True, with_grad=False)[0]


def _dense_fwd(logits, labels, axis):  # type: ignore[no-untyped-def]
    # symbolic_zeros: each argument comes with .perturbed, so the gradient nobody asked
    # for is neither computed (logits) nor given its residual (labels: the logits).
    if not logits.perturbed:
        loss = _loss_call(logits.value, labels.value, axis, dense=True, with_grad=False)[0]
        return loss, (None, logits.value)
    loss, grad = _loss_call(logits.value, labels.value, axis, dense=True, with_grad=True)
    return loss, (grad, logits.value if labels.perturbed else None)


def _dense_bwd(axis, residuals, cotangent):  # type: ignore[no-untyped-def]
    grad, logits = residuals
    if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
        return None, None
    grad_logits = None if grad is None else _scale(grad, cotangent, axis)
    grad_labels = None
    if logits is not None:
        grad_labels = -jax.nn.log_softmax(logits, axis) * jnp.expand_dims(cotangent, axis).astype(logits.dtype)
    return grad_logits, grad_labels


dense_loss.defvjp(_dense_fwd, _dense_bwd, symbolic_zeros=True)
