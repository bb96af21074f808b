"""JAX front-end: optax's softmax cross-entropies, fused, under ``jax.jit`` / ``jax.grad`` / ``jax.vmap`` on the CPU.

Import it explicitly (``import fastxent.jax``); ``import fastxent`` never
imports jax.

Each loss is a ``jax.custom_vjp`` over an XLA FFI call into the NumPy API.
The forward computes the per-example losses and their gradient in one sweep,
written straight into XLA's output buffers, and keeps the gradient as the
residual; the backward scales that buffer in place by the cotangent (a
second FFI call that aliases its input and output). Under ``jax.vmap`` the
call sees the whole batch (``vmap_method="broadcast_all"``): the extra
leading axes are simply more rows.

The FFI handler is a ``ctypes`` function over XLA's C API structs (versioned
and ABI-stable), so nothing is compiled. ``jax.pure_callback`` would be
simpler, but in jax 0.10 it copies every argument (``device_put``) and every
result; docs/frontends.md has the measurements.

The modules: ``_xla_ffi`` (the C API's structs, a Python function as a
handler), ``_handlers`` (what the handlers run, on NumPy views of XLA's
buffers, and their registration), ``_huge_pages`` (advice for large output
buffers), ``_vjp`` (the FFI calls and the custom VJPs) and ``_optax`` (the
public functions, with optax's arguments).
"""

from __future__ import annotations

try:
    # The submodules import them; here their absence becomes an error that says what to do.
    import jax.numpy  # noqa: F401
    import ml_dtypes  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in an environment without jax
    raise ImportError("fastxent.jax needs JAX: pip install 'fastxent[jax]'") from error

from ._optax import softmax_cross_entropy, softmax_cross_entropy_with_integer_labels

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]
