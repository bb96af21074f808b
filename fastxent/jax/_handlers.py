"""The FFI targets: what their handlers run, on NumPy views of XLA's buffers, and their registration with JAX."""

from __future__ import annotations

import functools
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from .. import _dispatch
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


def mean_cotangent(count: int, dtype: np.dtype) -> np.generic:
    """The cotangent that ``jnp.mean`` of ``count`` losses of ``dtype`` hands each of them, or 1.

    ``jnp.mean`` divides in the dtype (in float32 for 16-bit floats), so its
    transpose gives every loss ``1 / count`` rounded as here. Where that is
    not a normal number of ``dtype``, 1 (the gradient keeps its precision).
    """
    work = np.float32 if np.dtype(dtype).itemsize < 4 else dtype
    scale = (np.asarray(1, work) / np.asarray(max(count, 1), work)).astype(dtype)
    if not scale >= np.finfo(dtype).tiny:
        scale = np.asarray(1, dtype)
    return scale[()]  # type: ignore[no-any-return]


def _run_loss(inputs: list[np.ndarray], outputs: list[np.ndarray], attributes: dict[str, int]) -> None:
    """Per-example losses into ``outputs[0]`` and, if asked for, their gradient into ``outputs[1]``.

    The gradient is written for the cotangent of a mean (:func:`mean_cotangent`), the common case:
    the backward then has nothing left to do when it sees that cotangent, and rescales otherwise.
    """
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
            scale = float(mean_cotangent(outputs[0].size, grad.dtype))
            loss, _ = _np_cross_entropy_and_grad(x, y, None, ignore_index, "none", grad_output=scale, grad_out=grad)
    except IndexError:
        if dense:
            raise
        bad = np.argwhere((labels < 0) | (labels >= c))[0]  # the NumPy API names ignore_index: optax has none
        raise IndexError(
            f"label {labels[tuple(bad)]} at position {tuple(int(i) for i in bad)} is out of range for {c} "
            f"classes (valid: 0..{c - 1})"
        ) from None
    outputs[0][...] = np.asarray(loss).reshape(outputs[0].shape)


#: Below this a gradient is scaled on one thread (handing work to another costs ~20 us).
_SPLIT_BYTES = 4 * 2**20


@functools.cache
def _helpers(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="fastxent-jax-scale")


def _run_scale(inputs: list[np.ndarray], outputs: list[np.ndarray], attributes: dict[str, int]) -> None:
    """``outputs[0]`` = the gradient ``inputs[0]`` (written for :func:`mean_cotangent`) for ``cotangent``.

    XLA aliases the two buffers: for the mean's cotangent nothing is left to do. Otherwise the gradient
    is multiplied by ``cotangent / mean_cotangent`` (rounded to the dtype, float32 for 16-bit
    floats: two roundings more than the forward's). A large gradient is split by leading rows over
    fastxent's threads (NumPy's multiply is one thread: 8192 x 1000 float32, 2.6 -> 1.35 ms on two).
    """
    grad, cotangent = inputs
    out = outputs[0]
    guess = mean_cotangent(cotangent.size, grad.dtype)
    if np.all(cotangent == guess):
        if out.ctypes.data != grad.ctypes.data:
            np.copyto(out, grad)
        return
    factor = (cotangent.astype(np.float64) / float(guess)).astype(np.promote_types(grad.dtype, np.float32))
    scale = np.expand_dims(factor, attributes["axis"])
    threads = min(_dispatch.get_num_threads(), grad.shape[0] if grad.ndim else 1)
    if threads < 2 or out.nbytes < _SPLIT_BYTES or scale.shape[0] != grad.shape[0]:
        np.multiply(grad, scale, out=out)
        return
    bounds = [grad.shape[0] * part // threads for part in range(threads + 1)]
    parts = [
        _helpers(threads - 1).submit(np.multiply, grad[a:b], scale[a:b], out=out[a:b])
        for a, b in itertools.pairwise(bounds[1:])
    ]
    np.multiply(grad[: bounds[1]], scale[: bounds[1]], out=out[: bounds[1]])
    for part in parts:
        part.result()


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
