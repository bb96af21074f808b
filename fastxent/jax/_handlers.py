"""The FFI targets: what their handlers run, on NumPy views of XLA's buffers, and their registration with JAX."""

from __future__ import annotations

import math
import threading

import jax
import numpy as np

from .._xent import cross_entropy as _np_cross_entropy
from .._xent import cross_entropy_and_grad as _np_cross_entropy_and_grad
from ._huge_pages import advise_huge_pages
from ._xla_ffi import ffi_handler

# optax has no ignore_index: every label must be a class. The int64 minimum is the
# one value the NumPy API can be told to ignore that no class index can take.
_NO_IGNORE = -(2**63)


def _rows(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """``(B, C, K)`` of an array whose class axis is ``axis`` (negative, so extra leading vmap axes are rows)."""
    at = len(shape) + axis
    return math.prod(shape[:at]), shape[at], math.prod(shape[at + 1 :])


def _run_loss(inputs: list[np.ndarray], outputs: list[np.ndarray], attributes: dict[str, int]) -> None:
    """Per-example losses into ``outputs[0]`` and, if asked for, their gradient (unit cotangent) into ``outputs[1]``."""
    logits, labels = inputs
    axis, dense = attributes["axis"], bool(attributes["dense"])
    # vmap_method="broadcast_all" tiles both arguments to one batch shape: the labels always fit.
    b, c, k = _rows(logits.shape, axis)
    x = logits.reshape(b, c, k)
    y = labels.reshape(b, c, k) if dense else labels.reshape(b, k)
    ignore_index = -100 if dense else _NO_IGNORE
    try:
        if len(outputs) == 1:
            loss = _np_cross_entropy(x, y, None, ignore_index, "none")
        else:
            advise_huge_pages(outputs[1])
            grad = outputs[1].reshape(b, c, k)
            loss, _ = _np_cross_entropy_and_grad(x, y, None, ignore_index, "none", grad_out=grad)
    except IndexError:
        if dense:
            raise
        bad = np.argwhere((labels < 0) | (labels >= c))[0]  # the NumPy API names ignore_index: optax has none
        raise IndexError(
            f"label {labels[tuple(bad)]} at position {tuple(int(i) for i in bad)} is out of range for {c} "
            f"classes (valid: 0..{c - 1})"
        ) from None
    outputs[0][...] = np.asarray(loss).reshape(outputs[0].shape)


def _run_scale(inputs: list[np.ndarray], outputs: list[np.ndarray], attributes: dict[str, int]) -> None:
    """``outputs[0] = inputs[0] * cotangent`` along the class axis; in place when XLA aliases the two."""
    grad, cotangent = inputs
    np.multiply(grad, np.expand_dims(cotangent, attributes["axis"]), out=outputs[0])


_HANDLERS = {"fastxent_cross_entropy": ffi_handler(_run_loss), "fastxent_scale_rows": ffi_handler(_run_scale)}
_registered = False
_register_lock = threading.Lock()


def register() -> None:
    """Register the handlers as JAX's CPU FFI targets, once (at the first call of a loss, not at import)."""
    global _registered
    with _register_lock:
        if not _registered:
            for name, handler in _HANDLERS.items():
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
            _registered = True
