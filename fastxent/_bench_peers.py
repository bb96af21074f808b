"""The peers ``bench`` compares fastxent with: one table, used by the GB/s and the latency tables.

Each peer computes the same thing as the fastxent call it is held against,
with that library's public API, from arrays made once outside the timed
call:

- ``"loss"``: per-row losses (``reduction="none"``);
- ``"loss+grad"``: the loss reduced by ``reduction`` (``"none"`` or
  ``"sum"``) and the gradient of the summed loss, freshly allocated;
- ``"softmax"``, ``"log_softmax"``, ``"logsumexp"``: along the class axis
  (:data:`NORMALIZERS`), the result freshly allocated.

A peer may offer several formulations; ``bench`` times each and reports the
fastest (issue 13: every peer at its fastest public formulation), and says
which one that was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: One argument-free call per formulation, in the order of :attr:`Peer.formulations`;
#: empty when the library cannot be imported or does not take these inputs.
Calls = tuple[Callable[[], object], ...]


@dataclass(frozen=True)
class Peer:
    """How to build a peer's timed calls, what they are, and how to get the library."""

    #: ``factory(operation, reduction, logits, target, threads)``
    factory: Callable[[str, str, np.ndarray, np.ndarray, int], Calls]
    #: What each call computes; the fastest is reported.
    formulations: tuple[str, ...]
    #: The module that must import; None for plain NumPy, which is always measured.
    module: str | None = None
    #: The command that installs ``module``.
    install: str = ""


#: The operations that normalise along the class axis, with no targets.
NORMALIZERS = ("softmax", "log_softmax", "logsumexp")


def _class_axis(logits: np.ndarray) -> int:
    return 0 if logits.ndim == 1 else 1


def numpy_hand_normalizer(operation: str, logits: np.ndarray) -> np.ndarray:
    """softmax, log_softmax or logsumexp as a user writes them in NumPy: max-shift, exp, sum (and log)."""
    axis = _class_axis(logits)
    top = logits.max(axis, keepdims=True)
    z = logits - top
    if operation == "log_softmax":
        return z - np.log(np.exp(z).sum(axis, keepdims=True))
    e = np.exp(z)
    if operation == "softmax":
        e /= e.sum(axis, keepdims=True)
        return e
    return np.log(e.sum(axis)) + top.squeeze(axis)


def _label_index(target: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """An index that picks each row's target class, for reading and for ``-=``."""
    if target.ndim == 1 and axis == 1:  # the common 2-D case, written as a user writes it
        return np.arange(target.shape[0]), target
    rest = np.indices(target.shape, sparse=True)
    return (*rest[:axis], target, *rest[axis:])


def numpy_hand_loss(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-row losses as a user writes them in NumPy: max-shift, exp, sum, log, gather."""
    axis = _class_axis(logits)
    z = logits - logits.max(axis, keepdims=True)
    lse = np.log(np.exp(z).sum(axis))
    return lse - z[_label_index(target, axis)]


def numpy_hand_loss_and_grad(
    logits: np.ndarray, target: np.ndarray, reduction: str = "sum"
) -> tuple[np.ndarray | np.floating, np.ndarray]:
    """Loss (``reduction`` "none" or "sum") and the gradient of the summed loss, in NumPy.

    The softmax reuses ``exp(z)`` (``e / e.sum()``) instead of a second
    ``exp(z - lse)``: it gives the same values up to rounding and is 1.5x
    faster at 128x1000, so the peer is the faster of the two ways a user
    writes it.
    """
    axis = _class_axis(logits)
    z = logits - logits.max(axis, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis, keepdims=True)
    at = _label_index(target, axis)
    loss = np.log(s).squeeze(axis) - z[at]
    e /= s
    e[at] -= 1
    return (loss.sum() if reduction == "sum" else loss), e


def _numpy_hand(operation: str, reduction: str, logits: np.ndarray, target: np.ndarray, threads: int) -> Calls:
    if operation in NORMALIZERS:
        return (lambda: numpy_hand_normalizer(operation, logits),)
    if operation == "loss":
        return (lambda: numpy_hand_loss(logits, target),)
    return (lambda: numpy_hand_loss_and_grad(logits, target, reduction),)


def _torch(operation: str, reduction: str, logits: np.ndarray, target: np.ndarray, threads: int) -> Calls:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return ()
    torch.set_num_threads(threads)
    x = torch.from_numpy(logits)
    t = torch.from_numpy(target)
    if operation in NORMALIZERS:
        function: dict[str, Callable[..., Any]] = {
            "softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp
        }  # fmt: skip
        dim = _class_axis(logits)
        return (lambda: function[operation](x, dim),)
    if operation == "loss":

        def forward() -> object:
            with torch.no_grad():
                return F.cross_entropy(x, t, reduction="none")

        return (forward,)
    leaf = x.clone().requires_grad_(True)
    # reduction="none" needs an upstream gradient; ones make it the gradient of the sum.
    upstream = torch.ones(target.shape, dtype=x.dtype) if reduction == "none" else None

    def forward_backward() -> object:
        leaf.grad = None
        F.cross_entropy(leaf, t, reduction=reduction).backward(upstream)
        return leaf.grad

    return (forward_backward,)


def _jax(operation: str, reduction: str, logits: np.ndarray, target: np.ndarray, threads: int) -> Calls:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return ()
    if logits.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    x = jnp.asarray(logits)
    t = jnp.asarray(target)
    axis = _class_axis(logits)
    if operation in NORMALIZERS:
        normalizers: dict[str, Callable[..., Any]] = {
            "softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax, "logsumexp": jax.nn.logsumexp
        }  # fmt: skip
        # One formulation, jit(jax.nn.<operation>): the bench names no formulation for these rows.
        normalizer = jax.jit(lambda z: normalizers[operation](z, axis=axis))
        return (lambda: normalizer(x).block_until_ready(),)

    def picked(values: Any, labels: Any) -> Any:
        return jnp.take_along_axis(values, jnp.expand_dims(labels, axis), axis=axis).squeeze(axis)

    def via_log_softmax(z: Any, labels: Any) -> Any:
        return -picked(jax.nn.log_softmax(z, axis=axis), labels)

    def via_logsumexp(z: Any, labels: Any) -> Any:
        # optax.softmax_cross_entropy_with_integer_labels, written out so optax is not needed.
        return jax.nn.logsumexp(z, axis=axis) - picked(z, labels)

    def timed(losses: Callable[[Any, Any], Any]) -> Callable[[], object]:
        if operation == "loss":
            compiled = jax.jit(losses)
            return lambda: compiled(x, t).block_until_ready()
        # The gradient of the sum is also that of reduction="none" with an upstream of ones.
        compiled_grad = jax.jit(jax.value_and_grad(lambda z, labels: jnp.sum(losses(z, labels))))  # type: ignore[no-untyped-call]
        return lambda: compiled_grad(x, t)[1].block_until_ready()

    return timed(via_log_softmax), timed(via_logsumexp)


def _tensorflow(operation: str, reduction: str, logits: np.ndarray, target: np.ndarray, threads: int) -> Calls:
    """TensorFlow's fused sparse op (class axis last, so 2-D only)."""
    if logits.ndim != 2 or operation in NORMALIZERS:
        return ()
    try:
        import tensorflow as tf
    except ImportError:
        return ()
    x = tf.constant(logits)
    t = tf.constant(target)
    if operation == "loss":
        return (lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=x).numpy(),)

    def forward_backward() -> object:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=x)
            if reduction == "sum":
                loss = tf.reduce_sum(loss)
        return tape.gradient(loss, x).numpy()

    return (forward_backward,)


#: Every peer, in the order of the tables' columns. torch is the version the test extra pins.
PEERS: dict[str, Peer] = {
    "torch": Peer(_torch, ("F.cross_entropy",), "torch", "pip install torch==2.13.0"),
    "numpy-hand": Peer(_numpy_hand, ("max-shift, exp, sum, log, gather",)),
    "jax": Peer(
        _jax,
        ("jit(log_softmax + take_along_axis)", "jit(logsumexp - take_along_axis) as in optax"),
        "jax",
        "pip install jax",
    ),
    "tensorflow": Peer(
        _tensorflow, ("tf.nn.sparse_softmax_cross_entropy_with_logits",), "tensorflow", "pip install tensorflow"
    ),
}
#: The peers that need nothing but NumPy: measured even with ``--no-peers``.
BUILTIN_PEERS = tuple(name for name, peer in PEERS.items() if peer.module is None)
