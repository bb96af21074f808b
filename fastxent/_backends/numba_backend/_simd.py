"""Scalar building blocks that LLVM turns into AVX2 vector code inside loops.

PyPI's llvmlite has no SVML, so ``math.exp`` in a Numba loop stays a scalar
libm call (about 2 ns per element). :func:`fast_exp` is a polynomial with
Cody-Waite range reduction made only of adds, multiplies, a select and
integer bit manipulation, all of which vectorise. Its flags deliberately
exclude ``reassoc``: re-association would fold the magic-number rounding
``(x * log2e + magic) - magic`` away.

Arguments are first clamped from below at a value whose power-of-two scale
has a zero exponent field, so anything below it (``-inf`` included) gives
exactly 0 without a compare-and-blend; ``select(x < c, c, x)`` keeps NaN.

Accuracy (the tests check it): within 2 ulp of the exact value (float32) and
1 ulp (float64) on ``[-87.3, 0]`` and ``[-708, 0]``, where kernels use it
(arguments are ``x - max <= 0``). NumPy's own float32 ``exp`` is up to 2.45
ulp from exact, so the two differ by up to 3 ulp. Below the range the result
is 0 or a coarsely rounded subnormal.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# No reassoc here (see the module docstring); contract lets LLVM fuse FMAs.
EXACT = {"contract"}


def _bit_cast(source, target, ir_target):  # type: ignore[no-untyped-def]
    """An intrinsic reinterpreting a ``source`` value's bits as ``target`` (no conversion)."""

    @intrinsic
    def cast(typingctx, value):  # type: ignore[no-untyped-def]
        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            return builder.bitcast(args[0], ir_target)

        return target(source), codegen

    return cast


_bits_f32 = _bit_cast(types.float32, types.int32, ir.IntType(32))
_float_from_bits_f32 = _bit_cast(types.int32, types.float32, ir.FloatType())
_bits_f64 = _bit_cast(types.float64, types.int64, ir.IntType(64))
_float_from_bits_f64 = _bit_cast(types.int64, types.float64, ir.DoubleType())


def _order_key_codegen(width: int):  # type: ignore[no-untyped-def]
    """IR for ``bits ^ ((bits >>a (width-1)) & INT_MAX)``, kept at ``width`` bits.

    The map is monotonic on non-NaN floats (as signed integers), so an integer
    max of keys is the float max, and integer max reductions vectorise without
    fast-math flags (LLVM will not vectorise a float max reduction without
    ``nnan``, which would make NaN inputs poison). Positive NaNs sort above
    ``+inf`` (the row max becomes NaN); negative NaNs below ``-inf`` (ignored
    by the max, they still make the exp-sum NaN).
    """

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        integer = ir.IntType(width)
        bits = builder.bitcast(args[0], integer) if sig.args[0] in (types.float32, types.float64) else args[0]
        sign = builder.ashr(bits, ir.Constant(integer, width - 1))
        flipped = builder.xor(bits, builder.and_(sign, ir.Constant(integer, (1 << (width - 1)) - 1)))
        if sig.return_type in (types.float32, types.float64):
            return builder.bitcast(flipped, ir.FloatType() if width == 32 else ir.DoubleType())
        return flipped

    return codegen


@intrinsic
def order_key_f32(typingctx, value):  # type: ignore[no-untyped-def]
    """float32 -> int32 key whose signed order is the float order."""
    return types.int32(types.float32), _order_key_codegen(32)


@intrinsic
def from_order_key_f32(typingctx, key):  # type: ignore[no-untyped-def]
    """Inverse of :func:`order_key_f32`."""
    return types.float32(types.int32), _order_key_codegen(32)


@intrinsic
def order_key_f64(typingctx, value):  # type: ignore[no-untyped-def]
    """float64 -> int64 key whose signed order is the float order."""
    return types.int64(types.float64), _order_key_codegen(64)


@intrinsic
def from_order_key_f64(typingctx, key):  # type: ignore[no-untyped-def]
    """Inverse of :func:`order_key_f64`."""
    return types.float64(types.int64), _order_key_codegen(64)


@intrinsic
def nan_max(typingctx, a, b):  # type: ignore[no-untyped-def]
    """The larger of two floats, NaN if either is NaN (LLVM's ``maximum``; it orders -0 below +0).

    Numba lowers ``a if a > b else b`` to branches, and LLVM then turned the
    tiles' ``run[k] = value if value > run[k] else run[k]`` into a masked
    store, which Zen microcodes (the sweep took 1 ns per element, not 0.75);
    ``maxnum`` became a masked store too (of the non-NaN case).
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        kind = args[0].type
        name = "llvm.maximum.f32" if kind == ir.FloatType() else "llvm.maximum.f64"
        maximum = cgutils.get_or_insert_function(builder.module, ir.FunctionType(kind, [kind, kind]), name)
        return builder.call(maximum, [args[0], args[1]])

    return a(a, b), codegen


def vector_max(values):  # type: ignore[no-untyped-def]
    """Max of a 1-D array (``-inf`` if empty); vectorises; see :func:`order_key_f32`."""
    raise NotImplementedError("only callable from Numba-compiled code")


@njit(cache=True)
def _vector_max_f32(values):  # type: ignore[no-untyped-def]
    best = order_key_f32(np.float32(-np.inf))
    for i in range(values.size):
        key = order_key_f32(values[i])
        best = key if key > best else best
    return from_order_key_f32(best)


@njit(cache=True)
def _vector_max_f64(values):  # type: ignore[no-untyped-def]
    best = order_key_f64(-np.inf)
    for i in range(values.size):
        key = order_key_f64(values[i])
        best = key if key > best else best
    return from_order_key_f64(best)


@overload(vector_max)
def _vector_max_overload(values):  # type: ignore[no-untyped-def]
    if values.dtype == types.float32:
        return lambda values: _vector_max_f32(values)
    return lambda values: _vector_max_f64(values)


# float32: XNNPACK's rr2-p5 scheme (two-constant reduction, degree-5 polynomial).
_F32_LOG2E = np.float32(1.44269502)
_F32_MAGIC = np.float32(12583039.0)  # 1.5 * 2**23 + 127: rounds, and biases the exponent
_F32_MINUS_LN2_HI = np.float32(-0.693145752)
_F32_MINUS_LN2_LO = np.float32(-1.42860677e-06)
_F32_C1 = np.float32(0.999999701)
_F32_C2 = np.float32(0.499991506)
_F32_C3 = np.float32(0.166676521)
_F32_C4 = np.float32(0.0418978221)
_F32_C5 = np.float32(0.00828929059)
_F32_FLOOR = np.float32(-88.0)  # rounds to n = -127: the scale's bits are all zero


@njit(fastmath=EXACT, cache=True)
def exp_f32(x: float) -> float:
    """``exp(x)`` for float32 ``x <= 0`` (see the module docstring for the range)."""
    x = _F32_FLOOR if x < _F32_FLOOR else x
    n = x * _F32_LOG2E + _F32_MAGIC
    scale = _float_from_bits_f32(_bits_f32(n) << np.int32(23))
    n = n - _F32_MAGIC
    t = n * _F32_MINUS_LN2_HI + x
    t = n * _F32_MINUS_LN2_LO + t
    p = _F32_C5 * t + _F32_C4
    p = p * t + _F32_C3
    p = p * t + _F32_C2
    p = p * t + _F32_C1
    t = t * scale
    return t * p + scale


# float64: the same reduction, then a degree-13 Taylor polynomial (error < 0.5 ulp
# on |t| <= ln2 / 2 before rounding), evaluated by Horner's rule.
_F64_LOG2E = 1.4426950408889634
_F64_MAGIC = 6755399441056767.0  # 1.5 * 2**52 + 1023
_F64_MINUS_LN2_HI = -0.6931471803691238
_F64_MINUS_LN2_LO = -1.9082149292705877e-10
_F64_FLOOR = -709.0  # rounds to n = -1023: the scale's bits are all zero
_F64_TAYLOR = tuple(1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(14))
_F64_T2, _F64_T3, _F64_T4, _F64_T5, _F64_T6, _F64_T7 = _F64_TAYLOR[2:8]
_F64_T8, _F64_T9, _F64_T10, _F64_T11, _F64_T12, _F64_T13 = _F64_TAYLOR[8:14]


@njit(fastmath=EXACT, cache=True)
def exp_f64(x: float) -> float:
    """``exp(x)`` for float64 ``x <= 0`` (see the module docstring for the range)."""
    x = _F64_FLOOR if x < _F64_FLOOR else x
    n = x * _F64_LOG2E + _F64_MAGIC
    scale = _float_from_bits_f64(_bits_f64(n) << np.int64(52))
    n = n - _F64_MAGIC
    t = n * _F64_MINUS_LN2_HI + x
    t = n * _F64_MINUS_LN2_LO + t
    p = _F64_T13 * t + _F64_T12
    p = p * t + _F64_T11
    p = p * t + _F64_T10
    p = p * t + _F64_T9
    p = p * t + _F64_T8
    p = p * t + _F64_T7
    p = p * t + _F64_T6
    p = p * t + _F64_T5
    p = p * t + _F64_T4
    p = p * t + _F64_T3
    p = p * t + _F64_T2
    p = p * t + 1.0
    return (t * p) * scale + scale


# log1p(s), s >= -1, in float64: Cephes' log of u = 1 + s (the exponent, and a rational
# function of the mantissa m - 1 for m in [sqrt(1/2), sqrt(2))) plus (s - (u - 1)) / u, the
# rounding of 1 + s, so that a tiny s keeps its relative accuracy. The Cython backend's
# fx_vlog1p is the same formula. The exponent becomes a double without an int64 -> float64
# conversion (AVX2 has none): its bits go under the mantissa of 2**52, which is then subtracted.
_LOG_P0, _LOG_P1, _LOG_P2 = 1.01875663804580931796e-4, 4.97494994976747001425e-1, 4.70579119878881725854e0
_LOG_P3, _LOG_P4, _LOG_P5 = 1.44989225341610930846e1, 1.79368678507819816313e1, 7.70838733755885391666e0
_LOG_Q0, _LOG_Q1, _LOG_Q2 = 1.12873587189167450590e1, 4.52279145837532221105e1, 8.29875266912776603211e1
_LOG_Q3, _LOG_Q4 = 7.11544750618563894466e1, 2.31251620126765340583e1
_LOG_LN2_HI, _LOG_LN2_LO = 0.693359375, -2.121944400546905827679e-4
_EXPONENT_BIAS = 4503599627370496.0 + 1023.0  # 2**52 + 1023
_TWO_POW_52_BITS = np.int64(0x4330000000000000)
_MANTISSA_BITS = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)


# error_model="numpy": u = 0 divides by zero (to -inf, then replaced), and a checked division does not vectorise.
@njit(fastmath=EXACT, error_model="numpy", cache=True)
def log1p_f64(s: float) -> float:
    """``log1p(s)`` for float64 ``s >= -1`` (``S'`` of a row); -1 gives -inf, NaN stays NaN, +inf stays +inf."""
    u = 1.0 + s
    bits = _bits_f64(u)
    e = _float_from_bits_f64((bits >> np.int64(52)) | _TWO_POW_52_BITS) - _EXPONENT_BIAS
    m = _float_from_bits_f64((bits & _MANTISSA_BITS) | _ONE_BITS)
    big = m > 1.4142135623730951
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    x = m - 1.0
    z = x * x
    p = _LOG_P0 * x + _LOG_P1
    p = p * x + _LOG_P2
    p = p * x + _LOG_P3
    p = p * x + _LOG_P4
    p = p * x + _LOG_P5
    q = x + _LOG_Q0
    q = q * x + _LOG_Q1
    q = q * x + _LOG_Q2
    q = q * x + _LOG_Q3
    q = q * x + _LOG_Q4
    y = x * ((z * p) / q)
    y = e * _LOG_LN2_LO + y
    y = y - 0.5 * z
    r = e * _LOG_LN2_HI + (x + y)
    r = r + (s - (u - 1.0)) / u
    r = -np.inf if u == 0.0 else r
    r = u if u == np.inf else r
    return s if s != s else r


def fast_exp(x):  # type: ignore[no-untyped-def]
    """``exp`` for arguments ``<= 0``, in the argument's precision; vectorises."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(fast_exp)
def _fast_exp_overload(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        return lambda x: exp_f32(x)
    if x == types.float64:
        return lambda x: exp_f64(x)
    return None


def typed(like, value):  # type: ignore[no-untyped-def]
    """``value`` in the float type of ``like`` (an array or a scalar); Numba literals are float64."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(typed)
def _typed_overload(like, value):  # type: ignore[no-untyped-def]
    kind = like.dtype if isinstance(like, types.Array) else like
    if kind == types.float32:
        return lambda like, value: np.float32(value)
    return lambda like, value: np.float64(value)
