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
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading
from collections.abc import Callable, Sequence
from ctypes import POINTER, Structure, c_char_p, c_int, c_int64, c_size_t, c_uint32, c_void_p

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    import ml_dtypes
except ImportError as error:  # pragma: no cover - exercised in an environment without jax
    raise ImportError("fastxent.jax needs JAX: pip install 'fastxent[jax]'") from error

from ._xent import cross_entropy as _np_cross_entropy
from ._xent import cross_entropy_and_grad as _np_cross_entropy_and_grad

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]

# optax has no ignore_index: every label must be a class. The int64 minimum is the
# one value the NumPy API can be told to ignore that no class index can take.
_NO_IGNORE = -(2**63)


# ---------------------------------------------------------------------------
# The XLA FFI C API (xla/ffi/api/c_api.h, API version 0.x), as far as used here
# ---------------------------------------------------------------------------


class _ExtensionBase(Structure):
    pass


_ExtensionBase._fields_ = [("struct_size", c_size_t), ("type", c_int), ("next", POINTER(_ExtensionBase))]


class _Buffer(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("dtype", c_int),
        ("data", c_void_p),
        ("rank", c_int64),
        ("dims", POINTER(c_int64)),
    ]


class _Values(Structure):  # XLA_FFI_Args and XLA_FFI_Rets: the same layout
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("size", c_int64),
        ("types", POINTER(c_int)),
        ("values", POINTER(c_void_p)),
    ]


class _ByteSpan(Structure):
    _fields_ = [("ptr", c_void_p), ("len", c_size_t)]


class _Attrs(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("size", c_int64),
        ("types", POINTER(c_int)),
        ("names", POINTER(POINTER(_ByteSpan))),
        ("attrs", POINTER(c_void_p)),
    ]


class _Scalar(Structure):
    _fields_ = [("dtype", c_int), ("value", c_void_p)]


class _ApiVersion(Structure):
    _fields_ = [("struct_size", c_size_t), ("extension_start", c_void_p), ("major", c_int), ("minor", c_int)]


class _ErrorCreateArgs(Structure):
    _fields_ = [("struct_size", c_size_t), ("extension_start", c_void_p), ("message", c_char_p), ("errc", c_int)]


class _Api(Structure):  # only the head of XLA_FFI_Api: the fields up to XLA_FFI_Error_Create
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", c_void_p),
        ("api_version", _ApiVersion),
        ("internal_api", c_void_p),
        ("error_create", ctypes.CFUNCTYPE(c_void_p, POINTER(_ErrorCreateArgs))),
    ]


class _CallFrame(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("extension_start", POINTER(_ExtensionBase)),
        ("api", POINTER(_Api)),
        ("ctx", c_void_p),
        ("stage", c_int),
        ("args", _Values),
        ("rets", _Values),
        ("attrs", _Attrs),
    ]


class _Metadata(Structure):
    _fields_ = [("struct_size", c_size_t), ("api_version", _ApiVersion), ("traits", c_uint32)]


class _MetadataExtension(Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", POINTER(_Metadata))]


_EXTENSION_METADATA = 1
_STAGE_EXECUTE = 3
_ERROR_INVALID_ARGUMENT = 3
_ATTR_SCALAR = 3
_DTYPES = {
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.uint8),
    7: np.dtype(np.uint16),
    8: np.dtype(np.uint32),
    9: np.dtype(np.uint64),
    10: np.dtype(np.float16),
    11: np.dtype(np.float32),
    12: np.dtype(np.float64),
    16: np.dtype(ml_dtypes.bfloat16),
}


def _array(address: int) -> np.ndarray:
    """A NumPy view of an ``XLA_FFI_Buffer`` (C-contiguous: XLA's default layout, which ffi_call asks for)."""
    buffer = _Buffer.from_address(address)
    shape = tuple(buffer.dims[i] for i in range(buffer.rank))
    dtype = _DTYPES[buffer.dtype]
    size = math.prod(shape) * dtype.itemsize
    if size == 0:
        return np.empty(shape, dtype)
    return np.frombuffer((ctypes.c_char * size).from_address(buffer.data), dtype).reshape(shape)


def _int_attributes(attrs: _Attrs) -> dict[str, int]:
    result = {}
    for i in range(attrs.size):
        name = attrs.names[i].contents
        if attrs.types[i] == _ATTR_SCALAR:
            scalar = _Scalar.from_address(attrs.attrs[i])
            result[ctypes.string_at(name.ptr, name.len).decode()] = ctypes.c_int64.from_address(scalar.value).value
    return result


def _ffi_handler(run):  # type: ignore[no-untyped-def]
    """A C ``XLA_FFI_Handler`` that calls ``run(inputs, outputs, attributes)`` at the execute stage.

    Exceptions become XLA errors (raised by JAX when the computation runs),
    with the exception's type and message.
    """

    def handler(frame_pointer):  # type: ignore[no-untyped-def]
        frame = frame_pointer.contents
        extension = frame.extension_start
        if extension and extension.contents.type == _EXTENSION_METADATA:
            metadata = ctypes.cast(extension, POINTER(_MetadataExtension)).contents.metadata.contents
            metadata.api_version.major, metadata.api_version.minor = 0, 1
            metadata.traits = 0
            return None
        if frame.stage != _STAGE_EXECUTE:
            return None
        try:
            if frame.struct_size < ctypes.sizeof(_CallFrame):
                raise RuntimeError(f"XLA's FFI call frame has {frame.struct_size} bytes, fewer than API 0.1's")
            inputs = [_array(frame.args.values[i]) for i in range(frame.args.size)]
            outputs = [_array(frame.rets.values[i]) for i in range(frame.rets.size)]
            run(inputs, outputs, _int_attributes(frame.attrs))
        except BaseException as error:  # a C callback must not raise: hand the error to XLA
            message = f"{type(error).__name__}: {error}".encode()
            args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message, _ERROR_INVALID_ARGUMENT)
            return frame.api.contents.error_create(ctypes.byref(args))
        return None

    return ctypes.CFUNCTYPE(c_void_p, POINTER(_CallFrame))(handler)


# ---------------------------------------------------------------------------
# Host side: what the handlers run, on NumPy views of XLA's buffers
# ---------------------------------------------------------------------------


def _rows(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """``(B, C, K)`` of an array whose class axis is ``axis`` (negative, so extra leading vmap axes are rows)."""
    at = len(shape) + axis
    return math.prod(shape[:at]), shape[at], math.prod(shape[at + 1 :])


_HUGE_PAGE = 2**21
_MADV_HUGEPAGE = 14  # Linux


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise``, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [c_void_p, c_size_t, c_int]
    function.restype = c_int
    return function  # type: ignore[no-any-return]


def _advise_huge_pages(array: np.ndarray) -> None:
    """Ask Linux for transparent huge pages under a large output buffer before it is first written.

    XLA gives every execution fresh output buffers, and first-touch faults on
    4 KiB pages cost as much as the kernel itself on a large gradient
    (1024 x 32000 float32: ~30 ms of faults against ~35 ms of kernel,
    docs/frontends.md). ``MADV_HUGEPAGE`` is advice, as PyTorch's CPU
    allocator gives it under ``THP_MEM_ALLOC_ENABLE``: nothing changes where
    the kernel ignores it, and the buffer's contents are not touched.
    """
    madvise = _madvise()
    if madvise is None or array.nbytes < 4 * _HUGE_PAGE:
        return
    start = array.ctypes.data
    first = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    last = (start + array.nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if last > first:
        madvise(first, last - first, _MADV_HUGEPAGE)


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
            _advise_huge_pages(outputs[1])
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


_HANDLERS = {"fastxent_cross_entropy": _ffi_handler(_run_loss), "fastxent_scale_rows": _ffi_handler(_run_scale)}
_registered = False
_register_lock = threading.Lock()


def _register() -> None:
    global _registered
    with _register_lock:
        if not _registered:
            for name, handler in _HANDLERS.items():
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
            _registered = True


# ---------------------------------------------------------------------------
# Device side: the FFI calls and the VJP
# ---------------------------------------------------------------------------


def _loss_call(logits: jax.Array, labels: jax.Array, axis: int, dense: bool, with_grad: bool) -> tuple[jax.Array, ...]:
    _register()
    loss_shape = logits.shape[: logits.ndim + axis] + logits.shape[logits.ndim + axis + 1 :]
    shapes = [jax.ShapeDtypeStruct(loss_shape, logits.dtype)]
    if with_grad:
        shapes.append(jax.ShapeDtypeStruct(logits.shape, logits.dtype))
    call = jax.ffi.ffi_call("fastxent_cross_entropy", shapes, vmap_method="broadcast_all")
    return tuple(call(logits, labels, axis=np.int64(axis), dense=np.int64(dense)))


def _scale(grad: jax.Array, cotangent: jax.Array, axis: int) -> jax.Array:
    _register()
    call = jax.ffi.ffi_call(
        "fastxent_scale_rows",
        jax.ShapeDtypeStruct(grad.shape, grad.dtype),
        vmap_method="broadcast_all",
        input_output_aliases={0: 0},
    )
    return call(grad, cotangent.astype(grad.dtype), axis=np.int64(axis))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _sparse(logits: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
    return _loss_call(logits, labels, axis, dense=False, with_grad=False)[0]


def _sparse_fwd(logits: jax.Array, labels: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    loss, grad = _loss_call(logits, labels, axis, dense=False, with_grad=True)
    return loss, grad


def _sparse_bwd(axis: int, grad: jax.Array, cotangent: jax.Array) -> tuple[jax.Array, None]:
    return _scale(grad, cotangent, axis), None


_sparse.defvjp(_sparse_fwd, _sparse_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(logits: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
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


_dense.defvjp(_dense_fwd, _dense_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------
# Argument handling, as optax's
# ---------------------------------------------------------------------------


def _check_cpu(array: jax.Array) -> None:
    """``ValueError`` for arrays (or, inside a trace, the default backend) off the CPU."""
    if isinstance(array, jax.core.Tracer):
        platform = jax.default_backend()
        where = f"the default JAX backend is {platform!r}"
    else:
        platforms = {device.platform for device in array.devices()}
        platform = "cpu" if platforms == {"cpu"} else ", ".join(sorted(platforms - {"cpu"}))
        where = f"logits are on {platform!r}"
    if platform != "cpu":
        raise ValueError(
            f"fastxent.jax computes on the CPU, but {where}; use optax's loss there or move the "
            f"computation to the CPU (jax.default_device(jax.devices('cpu')[0]))"
        )


def _class_axis(logits: jax.Array, axis: object) -> tuple[jax.Array, int]:
    """``(logits, axis)`` with ``axis`` one negative int; several axes are moved last and flattened, as optax."""
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        if not -logits.ndim <= axis < logits.ndim:
            raise ValueError(f"axis {axis} is out of bounds for logits of {logits.ndim} dimensions")
        return logits, int(axis) - logits.ndim if axis >= 0 else int(axis)
    if isinstance(axis, Sequence) and all(isinstance(a, (int, np.integer)) for a in axis) and len(axis):
        axes = sorted({int(a) % logits.ndim for a in axis})
        batch = tuple(i for i in range(logits.ndim) if i not in axes)
        moved = jnp.transpose(logits, batch + tuple(axes))
        return moved.reshape((*moved.shape[: len(batch)], -1)), -1
    raise ValueError(f"axis must be an int or a tuple of ints; got {axis!r}")


def _floating(logits: object) -> jax.Array:
    array = jnp.asarray(logits)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"logits must have a floating dtype; got {array.dtype}")
    return array


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """``optax.softmax_cross_entropy_with_integer_labels``, fused: per-example losses, no reduction.

    Parameters
    ----------
    logits : array of shape (..., C, ...)
        Unnormalised log-probabilities, class axis ``axis``.
    labels : int array of logits' shape without ``axis``
        Class indices in ``[0, C)``; an index outside raises an error when
        the computation runs (optax returns NaN or a wrong value instead).
    axis : int or tuple of ints, default -1
        The class axis (several axes are flattened into one, as optax).
    where : array of bool, optional
        optax's mask; when given, the loss is optax's plain JAX formula
        (not fused).

    Returns
    -------
    jax.Array of logits' shape without ``axis``, in logits' dtype.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fastxent.jax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> [round(float(v), 4) for v in fastxent.jax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))]
    [0.2761, 2.9518]
    >>> jax.grad(lambda x: fastxent.jax.softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 1])).sum())(
    ...     logits).shape
    (2, 3)
    """
    logits = _floating(logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype; got {labels.dtype}")
    if where is not None:
        return _masked_sparse(logits, labels, axis, jnp.asarray(where))
    logits, class_axis = _class_axis(logits, axis)
    expected = logits.shape[: logits.ndim + class_axis] + logits.shape[logits.ndim + class_axis + 1 :]
    if labels.shape != expected:
        raise ValueError(f"labels must have shape {expected} (logits' without the class axis); got {labels.shape}")
    _check_cpu(logits)
    return _sparse(logits, labels, class_axis)


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """``optax.softmax_cross_entropy``, fused: ``-sum(labels * log_softmax(logits), axis)`` per example.

    Differentiable with respect to both ``logits`` and ``labels`` (which need
    not sum to one).

    Parameters
    ----------
    logits : array of shape (..., C, ...)
        Unnormalised log-probabilities, class axis ``axis``.
    labels : array of logits' shape
        Class probabilities (one-hot or soft).
    axis : int, tuple of ints or None, default -1
        The class axis (several axes, or all for None, are flattened into one).
    where : array of bool, optional
        optax's mask; when given, the loss is optax's plain JAX formula
        (not fused).

    Returns
    -------
    jax.Array of logits' shape without ``axis``, in logits' dtype.

    Examples
    --------
    >>> import jax.numpy as jnp, fastxent.jax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> [round(float(v), 4) for v in fastxent.jax.softmax_cross_entropy(logits, labels)]
    [0.2761, 2.9518]
    """
    logits = _floating(logits)
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:
        raise ValueError(f"labels must have logits' shape {logits.shape}; got {labels.shape}")
    labels = labels.astype(logits.dtype)
    if where is not None:
        return _masked_dense(logits, labels, axis, jnp.asarray(where))
    if axis is None:
        axis = tuple(range(logits.ndim))
    labels, _ = _class_axis(labels, axis)
    logits, class_axis = _class_axis(logits, axis)
    _check_cpu(logits)
    return _dense(logits, labels, class_axis)


def _masked_sparse(logits: jax.Array, labels: jax.Array, axis: object, where: jax.Array) -> jax.Array:
    """optax's formula with ``where`` (plain JAX)."""
    if where.ndim != logits.ndim:
        where = jnp.expand_dims(where, axis)  # type: ignore[arg-type]
    logits, class_axis = _class_axis(logits, axis)
    if logits.ndim != where.ndim or where.shape[class_axis] != logits.shape[class_axis]:
        where, _ = _class_axis(where, axis)
    label_logits = jnp.take_along_axis(logits, jnp.expand_dims(labels, class_axis), axis=class_axis)
    out = jax.nn.logsumexp(logits, axis=class_axis, where=where) - label_logits.squeeze(class_axis)
    return jnp.where(jnp.any(where, class_axis), out, 0.0)


def _masked_dense(logits: jax.Array, labels: jax.Array, axis: object, where: jax.Array) -> jax.Array:
    """optax's formula with ``where`` (plain JAX)."""
    if where.ndim != logits.ndim:
        where = jnp.expand_dims(where, axis)  # type: ignore[arg-type]
    return -(labels * jax.nn.log_softmax(logits, axis, where)).sum(axis, where=where)  # type: ignore[arg-type]
