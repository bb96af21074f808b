"""Row blocks: the class axis in one chunk, one in-memory fastxent call per block of rows.

For :func:`fastxent.dask.cross_entropy` / ``cross_entropy_and_grad`` with
logits chunked by rows only, and for :func:`fastxent.dask.linear_cross_entropy`
(``hidden`` by rows). ``"none"`` blocks are the in-memory results of their
rows; ``"mean"`` / ``"sum"`` blocks become :class:`~fastxent._reduction.Partials`.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .. import _linear, _normalize, _xent
from .._reduction import Partials
from .._validate import check_index_range
from ._blocks import F64, Options, compute_dtype, grad_scale, index_totals, object_block, softcapped


def row_losses(x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, *, opts: Options) -> np.ndarray:
    """Per-row losses of a block: :func:`fastxent.cross_entropy` with ``reduction="none"``."""
    return _xent.cross_entropy(  # type: ignore[return-value]
        x, target, weight, opts.ignore_index, "none", opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap
    )


def whole(x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, *, opts: Options) -> np.ndarray:
    """The in-memory loss of the only block there is, reduced as asked, as an array."""
    loss = _xent.cross_entropy(
        x, target, weight, opts.ignore_index, opts.reduction, opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap,
    )  # fmt: skip
    return np.asarray(loss)


def row_partials(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, *, opts: Options, probabilities: bool, ndim: int
) -> np.ndarray:
    """The :class:`Partials` of a block of rows, in a ``(1,) * ndim`` object array.

    The cross-entropy comes from one in-memory ``reduction="none"`` call (in
    float32 for 16-bit inputs), summed in float64; with a z-loss the rows'
    log-sum-exp comes from :func:`fastxent.logsumexp` of the softcapped logits.
    """
    compute = compute_dtype(x.dtype)
    x = x.astype(compute, copy=False)
    losses = _xent.cross_entropy(
        x, target, weight, opts.ignore_index, "none", opts.label_smoothing, softcap=opts.softcap
    )  # fmt: skip
    loss_sum = float(np.sum(losses, dtype=F64))
    if probabilities:
        rows = float(losses.size)
        divisor, valid_rows, valid = rows, rows, None
    else:
        divisor, valid_rows = index_totals(target, weight, opts.ignore_index, compute)
        valid = target != opts.ignore_index
    square_sum = 0.0
    if opts.z_loss:
        lse = np.asarray(_normalize.logsumexp(softcapped(x, opts.softcap), axis=0 if x.ndim == 1 else 1), F64)
        if valid is not None:
            lse = np.where(valid, lse, 0.0)
        square_sum = float(np.sum(np.square(lse)))
    return object_block(Partials(loss_sum, divisor, square_sum, valid_rows), ndim)


def target_partials(
    target: np.ndarray, weight: np.ndarray | None, *, ignore_index: int, dtype: np.dtype, n_classes: int
) -> np.ndarray:
    """``Partials(0, divisor, 0, valid rows)`` of a block of class indices: what a gradient's scale needs."""
    check_index_range(target, n_classes, "target", ignore_index)
    divisor, valid_rows = index_totals(target, weight, ignore_index, dtype)
    return object_block(Partials(0.0, divisor, 0.0, valid_rows), target.ndim)


def row_loss_and_grad(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    upstream: object,
    totals: np.ndarray | None,
    *,
    opts: Options,
    probabilities: bool,
    ndim: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(per-row losses or Partials, gradient)`` of a block of rows, from one in-memory call.

    ``reduction="none"``: the in-memory call itself, with the block's
    ``grad_output``. ``"mean"`` / ``"sum"``: the scale of the whole loss
    (from ``totals``, the divisor over every block) goes in as a scalar
    ``grad_output`` of a ``"none"`` call, which gives the in-memory gradient;
    the losses become the block's :class:`Partials`.
    """
    total = None if totals is None else totals.item()
    scale, z_coef = grad_scale(opts, total, upstream)
    loss, grad = _xent.cross_entropy_and_grad(
        x, target, weight, opts.ignore_index, "none", opts.label_smoothing,
        z_loss=z_coef, softcap=opts.softcap, grad_output=scale,  # type: ignore[arg-type]
    )  # fmt: skip
    if total is None:
        return loss, grad  # type: ignore[return-value]
    if opts.z_loss:
        return row_partials(x, target, weight, opts=opts, probabilities=probabilities, ndim=ndim), grad
    if probabilities:
        divisor = valid_rows = float(np.size(loss))
    else:
        divisor, valid_rows = index_totals(target, weight, opts.ignore_index, compute_dtype(x.dtype))
    partials = Partials(float(np.sum(loss, dtype=F64)), divisor, 0.0, valid_rows)
    return object_block(partials, ndim), grad


def whole_loss_and_grad(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, upstream: object, *, opts: Options
) -> tuple[np.ndarray, np.ndarray]:
    """The in-memory loss and gradient of the only block there is."""
    loss, grad = _xent.cross_entropy_and_grad(
        x, target, weight, opts.ignore_index, opts.reduction, opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap, grad_output=upstream,  # type: ignore[arg-type]
    )  # fmt: skip
    return np.asarray(loss), grad


# ---------------------------------------------------------------------------
# Linear cross-entropy: one in-memory call per block of hidden rows


def linear_rows(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    bias: np.ndarray | None,
    class_weight: np.ndarray | None,
    *,
    opts: Options,
    chunk_rows: int | None,
    partials: bool,
) -> np.ndarray:
    """The in-memory linear cross-entropy of a block of rows, reduced as ``opts.reduction`` says, or its Partials.

    With ``partials``, the block's :class:`~fastxent._reduction.Partials` in a
    ``(1,) * target.ndim`` object array. Their z-loss part is the difference
    of two ``"none"`` calls, with and without it: the linear layer never
    holds its logits, so there is no log-sum-exp to take apart; the
    difference is exact up to the rounding of each row's loss.
    """
    call = partial(
        _linear.linear_cross_entropy, hidden, weight, target, bias, class_weight=class_weight,
        ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing, softcap=opts.softcap,
        chunk_rows=chunk_rows,
    )  # fmt: skip
    if not partials:
        return np.asarray(call(reduction=opts.reduction, z_loss=opts.z_loss))
    losses = np.asarray(call(reduction="none", z_loss=0.0), F64)
    square_sum = 0.0
    if opts.z_loss:
        with_z = np.asarray(call(reduction="none", z_loss=opts.z_loss), F64)
        square_sum = float(np.sum(with_z - losses)) / opts.z_loss
    divisor, valid_rows = index_totals(target, class_weight, opts.ignore_index, compute_dtype(hidden.dtype))
    return object_block(Partials(float(np.sum(losses)), divisor, square_sum, valid_rows), target.ndim)
