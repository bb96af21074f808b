"""What the block functions of :mod:`fastxent.dask` share, and the steps that reduce across blocks.

A block function is what one Dask task computes: NumPy blocks in, NumPy
blocks (or partial sums) out; they call nothing of Dask, so they run on
plain arrays. Blocks keep the user's layout: logits
``(B, C, d1, ..., dK)`` (or ``(C,)``), class-index targets without the class
axis. The cross-entropy's blocks are in :mod:`fastxent.dask._row_blocks`
(the class axis in one chunk) and :mod:`fastxent.dask._class_blocks` (the
class axis in chunks); the softmax family's are here, with the steps of
``dask.array.reduction`` that add blocks' :class:`~fastxent._reduction.Partials`.
"""

from __future__ import annotations

from functools import reduce
from typing import NamedTuple

import numpy as np

from .. import _normalize
from .._reduction import Partials, gradient_scale
from .._xent import Reduction

F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)


class Options(NamedTuple):
    """The scalar options of a cross-entropy, already checked by an in-memory call."""

    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    reduction: Reduction


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype fastxent computes ``dtype`` in: float32 / float64 as they are, 16-bit floats in float32."""
    return dtype if dtype in (_F32, F64) else _F32


def softcapped(x: np.ndarray, softcap: float | None) -> np.ndarray:
    """``softcap * tanh(x / softcap)`` in float64, rounded once to ``x``'s dtype (as the reference backend)."""
    if softcap is None:
        return x
    return (softcap * np.tanh(x.astype(F64) / softcap)).astype(x.dtype)


def object_block(value: object, ndim: int) -> np.ndarray:
    """A ``(1,) * ndim`` object array holding ``value`` (a tuple stays one element)."""
    out = np.empty((1,) * ndim, dtype=object)
    out[(0,) * ndim] = value
    return out


def compute_weight(weight: np.ndarray | None, dtype: np.dtype) -> np.ndarray | None:
    """Class weights as the kernels see them (rounded to the compute dtype), in float64."""
    return None if weight is None else np.asarray(weight, dtype=dtype).astype(F64)


def index_totals(
    target: np.ndarray, weight: np.ndarray | None, ignore_index: int, dtype: np.dtype
) -> tuple[float, float]:
    """``(divisor, valid rows)`` of a block of class indices whose range has been checked."""
    valid = target != ignore_index
    count = int(np.count_nonzero(valid))
    w = compute_weight(weight, dtype)
    divisor = float(count) if w is None else float(np.sum(w[target[valid]]))
    return divisor, float(count)


def grad_scale(opts: Options, totals: Partials | None, upstream: object) -> tuple[np.ndarray | float, float]:
    """``(per-row scale, z coefficient)`` of the gradient, as :func:`fastxent.cross_entropy_and_grad` forms them."""
    if upstream is None:
        upstream = 1.0
    elif isinstance(upstream, np.ndarray):
        upstream = float(upstream) if upstream.ndim == 0 else upstream.astype(F64)
    if totals is None:  # reduction="none"
        return upstream, opts.z_loss  # type: ignore[return-value]
    return gradient_scale(opts.reduction, float(upstream), totals.divisor, totals.valid_rows, opts.z_loss)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Partial sums across blocks (dask.array.reduction's chunk / combine / aggregate)


def keep(x: np.ndarray, axis: object = None, keepdims: bool = True, computing_meta: bool = False) -> np.ndarray:
    """The ``chunk`` step of a reduction over blocks that already hold one :class:`Partials` each."""
    return x


def combine_partials(
    x: np.ndarray, axis: object = None, keepdims: bool = True, computing_meta: bool = False
) -> np.ndarray:
    """Add the :class:`Partials` of a group of blocks into one (a ``(1, ..., 1)`` object array)."""
    if computing_meta:
        return x
    return object_block(reduce(Partials.combine, x.flat), x.ndim if keepdims else 0)


def finish_partials(
    x: np.ndarray,
    axis: object = None,
    keepdims: bool = False,
    computing_meta: bool = False,
    *,
    reduction: str,
    z_loss: float,
    dtype: np.dtype,
) -> np.ndarray:
    """The ``"mean"`` or ``"sum"`` from the last group of :class:`Partials`, as a 0-d ``dtype`` array."""
    if computing_meta:
        return np.empty((), dtype)
    total = reduce(Partials.combine, x.flat)
    return np.asarray(total.finish(reduction, z_loss), dtype=dtype)


# ---------------------------------------------------------------------------
# The softmax family


def lse_block(x: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> np.ndarray:
    """:func:`fastxent.logsumexp` of a block as an array, in the compute dtype (the reduction's every step)."""
    if computing_meta:
        return x
    return np.asarray(_normalize.logsumexp(x.astype(compute_dtype(x.dtype), copy=False), axis=axis, keepdims=keepdims))


def lse_whole(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """:func:`fastxent.logsumexp` of a block that holds the reduced axes whole, as an array."""
    return np.asarray(_normalize.logsumexp(x, axis=axis, keepdims=keepdims))


def lse_final(
    x: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False, *, dtype: np.dtype
) -> np.ndarray:
    """The last step of a chunked log-sum-exp: combine, then round to the result dtype."""
    if computing_meta:
        return x
    return lse_block(x, axis, keepdims).astype(dtype, copy=False)


def from_lse(x: np.ndarray, lse: np.ndarray, *, log: bool, dtype: np.dtype) -> np.ndarray:
    """``x - lse`` (``log``) or ``exp(x - lse)`` with ``lse`` broadcast over the reduced axes."""
    compute = compute_dtype(x.dtype)
    with np.errstate(all="ignore"):
        shifted = x.astype(compute, copy=False) - lse.astype(compute, copy=False)
        return (shifted if log else np.exp(shifted)).astype(dtype, copy=False)
