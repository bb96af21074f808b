"""Partial sums of a cross-entropy and the one step that turns them into a result.

A cross-entropy over many rows reduces to four sums. Sums over disjoint sets
of rows combine by adding, so a loss computed block by block (the fused
linear cross-entropy, a Dask graph) finishes exactly like one in-memory call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: object) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`, else a ``ValueError`` naming it."""
    if reduction == "mean" or reduction == "sum" or reduction == "none":
        return str(reduction)
    raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with IEEE results (inf, nan) for a zero denominator."""
    if denominator:
        return numerator / denominator
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(numerator) / np.float64(denominator))


class Partials(NamedTuple):
    """The sums a reduced cross-entropy is made of, over some set of rows.

    Attributes
    ----------
    loss_sum : float
        Sum of the rows' (weighted, smoothed) cross-entropies.
    divisor : float
        What ``"mean"`` divides ``loss_sum`` by: the summed class weights of
        the non-ignored targets (their number without weights).
    lse_square_sum : float
        Sum of ``lse**2`` over the non-ignored rows (the z-loss before its coefficient).
    valid_rows : float
        Number of non-ignored rows: what ``"mean"`` divides the z-loss by.
    """

    loss_sum: float
    divisor: float
    lse_square_sum: float
    valid_rows: float

    def combine(self, other: Partials) -> Partials:
        """The partial sums of the union of two disjoint sets of rows."""
        return Partials(*(a + b for a, b in zip(self, other)))

    def finish(self, reduction: str, z_loss: float) -> float:
        """The ``"sum"`` or ``"mean"`` of the cross-entropy plus ``z_loss * lse**2``; see :func:`finish`."""
        return finish(reduction, z_loss, *self)


def finish(
    reduction: str, z_loss: float, loss_sum: float, divisor: float, lse_square_sum: float, valid_rows: float
) -> float:
    """The ``"sum"`` or ``"mean"`` of a cross-entropy plus ``z_loss * lse**2`` from its partial sums.

    The arguments after ``z_loss`` are the fields of :class:`Partials`, passed
    apart so that a single in-memory call builds no object. ``"mean"`` over no
    non-ignored row is NaN, as in torch.
    """
    if reduction == "sum":
        return loss_sum + z_loss * lse_square_sum if z_loss else loss_sum
    mean = safe_ratio(loss_sum, divisor)
    if z_loss:
        mean += z_loss * safe_ratio(lse_square_sum, valid_rows)
    return mean


def gradient_scale(
    reduction: str, upstream: float, divisor: float, valid_rows: float, z_loss: float
) -> tuple[float, float]:
    """``(scale, z_coef)`` for a reduced loss: every row's gradient is ``scale * d(xent + z_coef * lse**2)``.

    ``"mean"`` divides the cross-entropy by ``divisor`` but the z-loss by
    ``valid_rows``; one per-row scale carries both through ``z_coef``.
    """
    if reduction == "sum":
        return upstream, z_loss
    z_coef = z_loss * safe_ratio(divisor, valid_rows) if z_loss else 0.0
    return safe_ratio(upstream, divisor), z_coef
