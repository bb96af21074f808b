"""The loss alone of a fused linear cross-entropy, a chunk of classes of every row at a time.

Without a gradient no whole row of logits is needed at once, so when
``N < V`` (a language-model head) reading all of the smaller ``hidden`` per
chunk of classes costs less than reading all of ``weight`` per block of rows.
"""

from __future__ import annotations

import numpy as np

from . import _dispatch
from ._linear_blas import blas_threads
from ._linear_call import LinearCall
from ._linear_products import products_for
from ._reduction import finish

__all__ = ["loss_by_classes"]


def loss_by_classes(call: LinearCall, step: int) -> np.ndarray | np.floating:
    """The loss alone, ``step`` classes of every row at a time (no gradient, so rows need not be whole).

    Each chunk of logits gives its log-sum-exp (the backend's kernel), the
    rows' target logits and, for label smoothing, its class-weighted sum;
    the chunks combine with ``logaddexp`` and sums. The loss is then the
    kernels' formula, ``(1 - eps) * w[y] * (lse - x[y]) + eps / V * sum_c w[c] * (lse - x[c])``.
    """
    n_rows = call.hidden.shape[0]
    n_classes = call.weight.shape[0]
    eps, cap = call.params.label_smoothing, call.params.softcap
    products = products_for(call, None, n_rows)
    rows = products.rows(0, n_rows)
    flat = np.empty(n_rows * step, call.compute)
    chunk_lse = np.empty((n_rows, 1), call.compute)
    lse = np.full(n_rows, -np.inf)
    picked = np.zeros(n_rows)
    smoothed = np.zeros(n_rows) if eps else None
    target = call.target[:, 0]
    valid = (target != call.params.ignore_index) & (target >= 0) & (target < n_classes)
    n_threads = _dispatch.get_num_threads()
    with blas_threads(n_threads), np.errstate(all="ignore"):
        for low in range(0, n_classes, step):
            high = min(low + step, n_classes)
            block = flat[: n_rows * (high - low)].reshape(n_rows, high - low)
            products.logits(rows, block, low, high)
            if cap:
                np.divide(block, cap, out=block)
                np.tanh(block, out=block)
                block *= cap
            chunk = block.reshape(n_rows, high - low, 1)
            _dispatch.current_backend("logsumexp", chunk).logsumexp(chunk, chunk_lse, n_threads)
            np.logaddexp(lse, chunk_lse[:, 0], out=lse)
            here = np.flatnonzero(valid & (target >= low) & (target < high))
            picked[here] = block[here, target[here] - low]
            if smoothed is not None:
                weights = None if call.class_weight is None else call.class_weight[low:high]
                smoothed += block.sum(axis=1) if weights is None else block @ weights
        weight_of_target = 1.0 if call.class_weight is None else call.class_weight[np.where(valid, target, 0)]
        loss = (1.0 - eps) * weight_of_target * (lse - picked)
        if smoothed is not None:
            weight_sum = (
                float(n_classes) if call.class_weight is None else float(np.sum(call.class_weight, dtype=np.float64))
            )
            loss += eps / n_classes * (weight_sum * lse - smoothed)
        loss = np.where(valid, loss, 0.0)
        lse = np.where(valid, lse, 0.0)
        if call.reduction != "none":
            total = finish(
                call.reduction,
                call.z_loss,
                float(np.sum(loss)),
                call.divisor,
                float(np.sum(lse * lse)),
                call.valid_rows,
            )
            return call.result_dtype.type(total)  # type: ignore[no-any-return]
        if call.z_loss:
            loss += call.z_loss * lse * lse
    return loss.astype(call.compute).reshape(call.loss_shape).astype(call.result_dtype, copy=False)
