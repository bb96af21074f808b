"""The XLA FFI C API (xla/ffi/api/c_api.h, API version 0.x) as ``ctypes`` structs, as far as used here.

:func:`ffi_handler` turns a Python function over NumPy views of a call's
buffers into a C ``XLA_FFI_Handler``: nothing is compiled, and the structs
are versioned and ABI-stable.
"""

from __future__ import annotations

import ctypes
import math
from ctypes import POINTER, Structure, c_char_p, c_int, c_int64, c_size_t, c_uint32, c_void_p

import ml_dtypes
import numpy as np


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


def ffi_handler(run):  # type: ignore[no-untyped-def]
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
