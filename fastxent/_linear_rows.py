"""The fused linear cross-entropy a block of rows at a time: the loss, and the gradients if asked.

Steps 1 to 3 of :mod:`fastxent._linear` for every block, in one buffer of
logits that every block reuses. The blocks' losses are partial sums,
finished once by :func:`fastxent._reduction.finish`.
"""

from __future__ import annotations

import numpy as np

from . import _dispatch
from ._backends._interface import LossParams
from ._linear_blas import blas_threads
from ._linear_call import LinearCall
from ._linear_products import Outputs, products_for
from ._reduction import finish

__all__ = ["sweep_rows"]


def sweep_rows(
    call: LinearCall, params: LossParams, outputs: Outputs | None, grad_scale: np.ndarray | float | None
) -> np.ndarray | np.floating:
    """Run every block through the products and the kernel; return the loss.

    With ``outputs``, the kernel turns each block into its gradient in place
    and the backward products fill ``outputs``.
    """
    n_rows = call.hidden.shape[0]
    n_classes = call.weight.shape[0]
    step = call.chunk_rows
    buffer = np.empty((min(step, n_rows), n_classes), call.compute)
    products = products_for(call, outputs, step)
    loss_rows = lse_rows = totals = None
    if call.reduction == "none":
        loss_rows = np.empty((n_rows, 1), call.compute)
        lse_rows = np.empty((n_rows, 1), call.compute) if call.z_loss else None
    else:
        totals = np.empty(2)
    loss_sum = square_sum = 0.0
    n_threads = _dispatch.get_num_threads()
    kernel = call.backend.cross_entropy_index
    with blas_threads(n_threads):
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            block = buffer[: stop - start]
            rows = products.rows(start, stop)
            products.logits(rows, block)
            logits = block.reshape(stop - start, n_classes, 1)
            kernel(
                logits,
                call.target[start:stop],
                call.class_weight,
                params,
                None if loss_rows is None else loss_rows[start:stop],
                None if lse_rows is None else lse_rows[start:stop],
                None if outputs is None else logits,
                grad_scale[start:stop] if isinstance(grad_scale, np.ndarray) else grad_scale,
                totals,
                n_threads,
            )
            if totals is not None:
                loss_sum += float(totals[0])
                square_sum += float(totals[1])
            if outputs is not None:
                products.backward(block, rows, start, stop)
    products.finish()
    if loss_rows is None:
        total = finish(call.reduction, call.z_loss, loss_sum, call.divisor, square_sum, call.valid_rows)
        return call.result_dtype.type(total)  # type: ignore[no-any-return]
    if lse_rows is not None:
        with np.errstate(all="ignore"):
            loss_rows = (loss_rows + call.z_loss * np.square(lse_rows, dtype=np.float64)).astype(call.compute)
    return loss_rows.reshape(call.loss_shape).astype(call.result_dtype, copy=False)
