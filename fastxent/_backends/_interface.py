"""The one interface every backend implements.

Kernels see only canonical arrays: logits of shape ``(B, C, K)``, C-contiguous,
float32 or float64, where ``C`` is the class axis, ``B`` the product of the
axes before it and ``K`` the product of the axes after it (``K == 1`` when the
class axis is last). Outputs are preallocated by the caller in the logits'
dtype. A kernel validates nothing and allocates nothing of the input's size;
the API layer has checked every argument before the call.

Reductions over rows (``totals``) are summed in a fixed order after every row
is computed, so no result depends on the thread count.

Row ``(b, k)`` means the ``C`` values ``logits[b, :, k]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]


@dataclass(frozen=True)
class LossParams:
    """Scalar options of the cross-entropy kernels.

    Attributes
    ----------
    ignore_index : int
        Rows whose target equals this value (index targets only) get zero loss,
        zero ``lse`` and zero gradient.
    label_smoothing : float
        In ``[0, 1]``; mixes the target with the uniform distribution.
    softcap : float
        ``0.0`` for none; otherwise logits are replaced by
        ``softcap * tanh(logits / softcap)`` before everything else.
    z_coef : float
        Gradient only: the kernel differentiates ``xent + z_coef * lse**2``.
        ``0.0`` must leave the gradient exactly as without a z-loss.
    """

    ignore_index: int = -100
    label_smoothing: float = 0.0
    softcap: float = 0.0
    z_coef: float = 0.0


#: The options of a call that sets none: shared, since building one costs a microsecond.
DEFAULT_PARAMS = LossParams()


def row_outputs(loss: FloatArray | None, lse: FloatArray | None, logits: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``loss`` and ``lse``, each replaced by a new ``(B, K)`` array when the caller does not want it."""
    b, _, k = logits.shape
    return (
        np.empty((b, k), logits.dtype) if loss is None else loss,
        np.empty((b, k), logits.dtype) if lse is None else lse,
    )


def fill_totals(loss: FloatArray, lse: FloatArray, totals: FloatArray | None) -> None:
    """Write ``totals`` as :meth:`Backend.cross_entropy_index` defines it, for backends that do not fuse it."""
    if totals is not None:
        totals[0] = np.sum(loss, dtype=np.float64)
        totals[1] = np.sum(np.square(lse, dtype=np.float64))


def row_scale(grad_scale: FloatArray | float, shape: tuple[int, int]) -> FloatArray:
    """``grad_scale`` as a float64 array of ``shape`` (B, K)."""
    if isinstance(grad_scale, np.ndarray):
        return grad_scale
    return np.full(shape, grad_scale)


def index_target_stats(
    target: IntArray, weight: FloatArray | None, n_classes: int, ignore_index: int
) -> tuple[int, float, int]:
    """:meth:`Backend.index_target_stats` in NumPy."""
    in_range = (target >= 0) & (target < n_classes)
    ignored = target == ignore_index
    valid = in_range & ~ignored
    count = int(np.count_nonzero(valid))
    weight_sum = float(count) if weight is None else float(np.sum(weight.astype(np.float64)[target[valid]]))
    return count, weight_sum, int(np.count_nonzero(~in_range & ~ignored))


class ScaledLogsumexp(Protocol):
    """An operation a backend may lack: the dispatcher then takes the next backend that has it."""

    def logsumexp_scaled(self, x: FloatArray, b: FloatArray, out: FloatArray, sign: FloatArray, n_threads: int) -> None:
        """SciPy's ``logsumexp(x, b=b, return_sign=True)`` over axis 1 of ``x (B, C, K)``.

        ``b`` has ``x``'s shape and dtype and any strides (a broadcast scale keeps
        its zero strides: it is never laid out at ``x``'s size); entries with ``b == 0`` take no part,
        even infinite or NaN ones. Writes ``log(|sum(b * exp(x))|)`` into
        ``out (B, K)`` and the sum's sign (1, -1, 0 or NaN) into ``sign``.
        """
        ...


class Backend(Protocol):
    """Kernels on canonical arrays; see the module docstring for the layout."""

    name: str

    def logsumexp(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        """Write ``log(sum(exp(x), axis=1))`` of ``x (B, C, K)`` into ``out (B, K)``."""
        ...

    def softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        """Write the softmax over axis 1 of ``x (B, C, K)`` into ``out``; ``out`` may be ``x``."""
        ...

    def log_softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        """Write the log-softmax over axis 1 of ``x`` into ``out``; ``out`` may be ``x``."""
        ...

    def index_target_stats(
        self, target: IntArray, weight: FloatArray | None, n_classes: int, ignore_index: int
    ) -> tuple[int, float, int]:
        """Summarise class-index targets before a kernel runs.

        Returns
        -------
        valid : int
            Targets in ``[0, n_classes)`` and not ``ignore_index``.
        weight_sum : float
            ``sum(weight[t])`` over the valid targets ``t`` (``valid`` without weights).
        out_of_range : int
            Targets outside ``[0, n_classes)`` that are not ``ignore_index``.
        """
        ...

    def cross_entropy_index(
        self,
        logits: FloatArray,
        target: IntArray,
        weight: FloatArray | None,
        params: LossParams,
        loss: FloatArray | None,
        lse: FloatArray | None,
        grad: FloatArray | None,
        grad_scale: FloatArray | float | None,
        totals: FloatArray | None,
        n_threads: int,
    ) -> None:
        """Cross-entropy with class-index targets, optionally with its gradient.

        Parameters
        ----------
        logits : array of shape (B, C, K)
        target : int32 or int64 array of shape (B, K)
            Class indices. A row whose target is ``params.ignore_index`` or
            outside ``[0, C)`` is ignored (the API has already rejected the
            latter; the kernel still never reads outside the row).
        weight : array of shape (C,) or None
            Per-class weights; None means every weight is 1.
        loss : array of shape (B, K) or None, OUT
            ``(1 - eps) * w[y] * (lse - x[y]) + eps / C * sum_c w[c] * (lse - x[c])``.
            None when only ``totals`` are wanted.
        lse : array of shape (B, K) or None, OUT
            Log-sum-exp of each row (after the softcap); None when not wanted.
        grad : array of shape (B, C, K) or None, OUT
            ``grad_scale[row] * d(loss[row] + z_coef * lse[row]**2) / d logits[row]``.
            May be ``logits`` itself (in-place gradient).
        grad_scale : float64 array of shape (B, K), float, or None
            Upstream gradient of each row, or one value for every row; given
            exactly when ``grad`` is.
        totals : float64 array of shape (2,) or None, OUT
            ``(sum of loss, sum of lse**2)`` over all rows, summed in row order
            after the rows are computed.
        """
        ...

    def cross_entropy_probs(
        self,
        logits: FloatArray,
        target: FloatArray,
        weight: FloatArray | None,
        params: LossParams,
        loss: FloatArray | None,
        lse: FloatArray | None,
        grad: FloatArray | None,
        grad_scale: FloatArray | float | None,
        totals: FloatArray | None,
        n_threads: int,
    ) -> None:
        """Cross-entropy with class-probability targets, optionally with its gradient.

        As :meth:`cross_entropy_index`, with ``target`` of shape ``(B, C, K)``
        in the logits' dtype, ``t' = (1 - eps) * t + eps / C`` and
        ``loss = sum_c w[c] * t'[c] * (lse - x[c])``. No row is ignored.
        """
        ...
