"""Fused linear cross-entropy: the loss of ``hidden @ weight.T + bias`` without the logits.

``linear_cross_entropy(hidden, weight, target)`` equals
``cross_entropy(hidden @ weight.T + bias, target)``, but the ``(N, V)``
logits never exist: the rows go through in blocks, and for each block

1. ``block = hidden[i:j] @ weight.T (+ bias)``, by BLAS, into one buffer that
   every block reuses;
2. the cross-entropy kernel of the backend in force reads the block and, for
   the gradient, overwrites it with ``d loss / d logits`` (the per-row scale of
   the reduction and ``grad_output`` included);
3. ``grad_hidden[i:j] = block @ weight`` and ``grad_weight += block.T @ hidden[i:j]``,
   the latter by BLAS ``gemm`` with ``beta=1``: no ``(V, H)`` temporary.

Each block's products read all of ``weight``. The loss alone needs no whole
row at once, so when ``N < V`` (a language-model head) it goes by chunks of
classes instead, reading all of the smaller ``hidden`` per chunk: the
backend's log-sum-exp kernel per chunk, combined with ``logaddexp``.

With SciPy, the products are SciPy's BLAS ``sgemm`` / ``dgemm`` on views
(no copies): ``beta=1`` is not in NumPy's API, and one BLAS library for all
three keeps a second thread pool (SciPy's wheels bundle their own OpenBLAS)
out of the way. Without SciPy, NumPy's ``matmul`` adds ``block.T @
hidden[i:j]`` through a scratch a chunk of classes at a time: correct, but
slower (one BLAS call per chunk; docs/linear.md).

The mean's divisor is known before the first block (from the whole target,
as :func:`fastxent.cross_entropy` gets it), so each block's gradient is final
when the kernel writes it; the blocks' losses are partial sums finished by
:func:`fastxent._reduction.finish`.

float16 / bfloat16 inputs are computed in float32 block by block: ``hidden``
a block of rows and ``weight`` a chunk of classes at a time, so no
full-size float32 copy of ``weight`` is made. With more than one block of
rows the weight gradient is summed in a float32 ``(V, H)`` array.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _dispatch
from ._backends._interface import LossParams
from ._linear_blocks import classes_per_chunk, linear_chunk_rows, weight_chunk_rows
from ._linear_call import LinearCall, prepare, upstream_gradient
from ._reduction import finish, gradient_scale
from ._xent import DEFAULT_IGNORE_INDEX, Reduction, loss_params

__all__ = ["linear_chunk_rows", "linear_cross_entropy", "linear_cross_entropy_and_grad"]


@functools.cache
def _scipy_gemm(dtype: np.dtype) -> Callable[..., np.ndarray] | None:
    """SciPy's BLAS ``?gemm`` for ``dtype`` (``c = alpha * op(a) @ op(b) + beta * c``); None without SciPy."""
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return blas.sgemm if dtype == np.float32 else blas.dgemm  # type: ignore[no-any-return]


@functools.cache
def _blas_pools() -> Any:
    """threadpoolctl's handle on the BLAS libraries (SciPy's included); None without threadpoolctl."""
    _scipy_gemm(np.dtype(np.float32))  # loads SciPy's BLAS, if any, before the libraries are listed
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def blas_threads(n_threads: int) -> Iterator[None]:
    """Run BLAS on ``n_threads`` threads inside the block, so that BLAS and the kernels use the same cores.

    BLAS pools are process-wide: other threads calling BLAS meanwhile get the same limit.
    """
    pools = _blas_pools()
    if pools is None:
        yield
        return
    with pools.limit(limits=n_threads):
        yield


def accumulate_products(total: np.ndarray, a: np.ndarray, b: np.ndarray, first: bool, scratch: np.ndarray) -> None:
    """``total = a.T @ b`` when ``first``, else ``total += a.T @ b``, through ``scratch``: NumPy only.

    ``total (V, H)``, ``a (r, V)``, ``b (r, H)``, ``scratch (rows, H)``: one
    float dtype. The sum goes a chunk of ``total``'s rows at a time, so no
    temporary of ``total``'s size is made.
    """
    if first:
        np.matmul(a.T, b, out=total)
        return
    step = scratch.shape[0]
    for start in range(0, total.shape[0], step):
        stop = min(start + step, total.shape[0])
        part = scratch[: stop - start]
        np.matmul(a[:, start:stop].T, b, out=part)
        total[start:stop] += part


class _Outputs(NamedTuple):
    grad_hidden: np.ndarray  # (N, H), the caller's dtype
    grad_weight: np.ndarray  # (V, H), the caller's dtype
    grad_bias: np.ndarray | None  # (V,), the caller's dtype


class _Products:
    """The three matrix products of a block for float32/float64 inputs: BLAS reads them as they are.

    SciPy's ``gemm`` gets every operand as a Fortran-order view: ``x.T`` of a
    C-contiguous ``x``, or ``x`` itself with ``trans=1``.
    """

    def __init__(self, call: LinearCall, outputs: _Outputs | None) -> None:
        self.hidden = call.hidden
        self.weight = call.weight
        self.bias = call.bias
        self.outputs = outputs
        # f2py rejects some empty operands; NumPy's matmul takes them.
        self.gemm = _scipy_gemm(call.compute) if call.weight.size else None
        if call.weight.flags.c_contiguous:
            self.weight_as_is, self.weight_transposed = (call.weight.T, 1), (call.weight.T, 0)
        else:
            self.weight_as_is, self.weight_transposed = (call.weight, 0), (call.weight, 1)
        if outputs is not None and self.gemm is None:
            n_classes, n_hidden = call.weight.shape
            rows = weight_chunk_rows(n_classes, n_hidden, call.compute.itemsize, call.chunk_rows)
            self.scratch = np.empty((rows, n_hidden), call.compute)

    def rows(self, start: int, stop: int) -> np.ndarray:
        rows = self.hidden[start:stop]
        return rows if rows.flags.c_contiguous else np.ascontiguousarray(rows)

    def logits(self, rows: np.ndarray, out: np.ndarray, low: int = 0, high: int | None = None) -> None:
        """``out = rows @ weight[low:high].T (+ bias[low:high])``; ``out`` C-contiguous."""
        classes = slice(low, high)
        weight, trans = self.weight_as_is
        # Some rows of an F-order weight are not a Fortran array: f2py would copy them.
        if self.gemm is None or (high is not None and not trans):
            np.matmul(rows, self.weight[classes].T, out=out)
        else:  # out.T (V, r) = weight @ rows.T
            operand = weight[:, classes] if trans else weight[classes]
            self.gemm(1.0, operand, rows.T, c=out.T, trans_a=trans, overwrite_c=1)
        if self.bias is not None:
            out += self.bias[classes]

    def backward(self, grad: np.ndarray, rows: np.ndarray, start: int, stop: int) -> None:
        assert self.outputs is not None
        grad_hidden, grad_weight, grad_bias = self.outputs
        first = start == 0
        if self.gemm is None:
            np.matmul(grad, self.weight, out=grad_hidden[start:stop])
            accumulate_products(grad_weight, grad, rows, first, self.scratch)
        else:
            # grad_hidden[i:j].T (H, r) = weight.T @ grad.T; grad_weight.T (H, V) (+)= rows.T @ grad
            weight, trans = self.weight_transposed
            self.gemm(1.0, weight, grad.T, c=grad_hidden[start:stop].T, trans_a=trans, overwrite_c=1)
            self.gemm(1.0, rows.T, grad.T, beta=0.0 if first else 1.0, c=grad_weight.T, trans_b=1, overwrite_c=1)
        if grad_bias is not None:
            if first:
                np.sum(grad, axis=0, out=grad_bias)
            else:
                grad_bias += np.sum(grad, axis=0)

    def finish(self) -> None:
        """Nothing to do: the outputs were written in place."""


class _ConvertedProducts:
    """The products for float16/bfloat16 inputs: float32 BLAS on converted blocks and weight chunks."""

    def __init__(self, call: LinearCall, outputs: _Outputs | None, rows: int) -> None:
        self.hidden = call.hidden
        self.weight = call.weight
        self.bias = call.bias
        self.outputs = outputs
        n_classes, n_hidden = call.weight.shape
        f32 = np.dtype(np.float32)
        self.step = weight_chunk_rows(n_classes, n_hidden, call.compute.itemsize, call.chunk_rows)
        self.chunk = np.empty((self.step, n_hidden), f32)
        if outputs is None:
            return
        self.grad_hidden = np.empty((rows, n_hidden), f32)
        self.part = np.empty((self.step, n_hidden), f32)
        single = rows >= call.hidden.shape[0]
        # One block writes the weight gradient chunk by chunk; several sum it in float32.
        self.grad_weight = None if single else np.empty((n_classes, n_hidden), f32)
        self.grad_bias = None if call.bias is None else np.zeros(n_classes, f32)

    def _chunks(self, low: int = 0, high: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, weight[start:stop] in float32)`` over the classes ``low:high``."""
        end = self.weight.shape[0] if high is None else high
        for start in range(low, end, self.step):
            stop = min(start + self.step, end)
            chunk = self.chunk[: stop - start]
            np.copyto(chunk, self.weight[start:stop])
            yield start, stop, chunk

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.hidden[start:stop].astype(np.float32)

    def logits(self, rows: np.ndarray, out: np.ndarray, low: int = 0, high: int | None = None) -> None:
        """``out = rows @ weight[low:high].T (+ bias[low:high])``, a chunk of ``weight`` converted at a time."""
        for start, stop, chunk in self._chunks(low, high):
            np.matmul(rows, chunk.T, out=out[:, start - low : stop - low])
        if self.bias is not None:
            out += self.bias[low:high]

    def backward(self, grad: np.ndarray, rows: np.ndarray, start: int, stop: int) -> None:
        assert self.outputs is not None
        grad_hidden = self.grad_hidden[: stop - start]
        grad_hidden.fill(0.0)  # for V == 0; otherwise the first chunk overwrites it
        first = start == 0
        for low, high, chunk in self._chunks():
            grad_hidden += grad[:, low:high] @ chunk
            part = self.part[: high - low]
            if self.grad_weight is None:
                np.matmul(grad[:, low:high].T, rows, out=part)
                self.outputs.grad_weight[low:high] = part
            elif first:
                np.matmul(grad[:, low:high].T, rows, out=self.grad_weight[low:high])
            else:
                np.matmul(grad[:, low:high].T, rows, out=part)
                self.grad_weight[low:high] += part
        self.outputs.grad_hidden[start:stop] = grad_hidden
        if self.grad_bias is not None:
            self.grad_bias += np.sum(grad, axis=0)

    def finish(self) -> None:
        """Round the float32 sums into the caller's dtype."""
        if self.outputs is None:
            return
        if self.grad_weight is not None:
            self.outputs.grad_weight[...] = self.grad_weight
        if self.grad_bias is not None and self.outputs.grad_bias is not None:
            self.outputs.grad_bias[...] = self.grad_bias


def _sweep(
    call: LinearCall, params: LossParams, outputs: _Outputs | None, grad_scale: np.ndarray | float | None
) -> np.ndarray | np.floating:
    """Run every block through the products and the kernel; return the loss.

    With ``outputs``, the kernel turns each block into its gradient in place
    and the backward products fill ``outputs``.
    """
    n_rows = call.hidden.shape[0]
    n_classes = call.weight.shape[0]
    step = call.chunk_rows
    buffer = np.empty((min(step, n_rows), n_classes), call.compute)
    products: _Products | _ConvertedProducts
    if call.compute == call.hidden.dtype:
        products = _Products(call, outputs)
    else:
        products = _ConvertedProducts(call, outputs, step)
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


def _loss_by_classes(call: LinearCall, step: int) -> np.ndarray | np.floating:
    """The loss alone, ``step`` classes of every row at a time (no gradient, so rows need not be whole).

    Each chunk of logits gives its log-sum-exp (the backend's kernel), the
    rows' target logits and, for label smoothing, its class-weighted sum;
    the chunks combine with ``logaddexp`` and sums. The loss is then the
    kernels' formula, ``(1 - eps) * w[y] * (lse - x[y]) + eps / V * sum_c w[c] * (lse - x[c])``.
    """
    n_rows = call.hidden.shape[0]
    n_classes = call.weight.shape[0]
    eps, cap = call.params.label_smoothing, call.params.softcap
    products: _Products | _ConvertedProducts
    if call.compute == call.hidden.dtype:
        products = _Products(call, None)
    else:
        products = _ConvertedProducts(call, None, n_rows)
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
            call.backend.logsumexp(block.reshape(n_rows, high - low, 1), chunk_lse, n_threads)
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


def linear_cross_entropy(
    hidden: npt.ArrayLike,
    weight: npt.ArrayLike,
    target: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    *,
    class_weight: npt.ArrayLike | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int | None = None,
) -> np.ndarray | np.floating:
    """Cross-entropy of the logits ``hidden @ weight.T + bias``, without making them.

    Equal to ``cross_entropy(hidden @ weight.T + bias, target,
    weight=class_weight, ...)`` with every option as in
    :func:`fastxent.cross_entropy` (torch's weighted mean included), but the
    ``(N, V)`` logits are computed, reduced and dropped a block of rows at a
    time (or, when ``N < V`` and ``chunk_rows`` is not given, a chunk of
    classes of every row at a time): besides the inputs, a call holds one
    block of logits, within 10% of all of them (at least 16 rows and 1 MiB).

    Parameters
    ----------
    hidden : array_like of float16, bfloat16, float32 or float64, shape (..., H)
        Every leading axis is a row: ``N`` is their product.
    weight : array_like of shape (V, H)
        One row per class, as ``torch.nn.Linear.weight``; ``hidden``'s dtype.
    target : array_like of integers, of ``hidden``'s shape without the last axis
        Class indices in ``[0, V)`` or equal to ``ignore_index``.
    bias : array_like of shape (V,), optional
        Added to every row of logits; ``hidden``'s dtype.
    class_weight : array_like of shape (V,), optional
        A weight per class (``cross_entropy``'s ``weight``).
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As :func:`fastxent.cross_entropy`.
    chunk_rows : int, optional
        Rows per block; :func:`linear_chunk_rows` by default. Giving it
        also makes the loss alone go by blocks of rows. Results do not
        depend on it beyond rounding.

    Returns
    -------
    ndarray or scalar
        ``hidden``'s dtype; of ``target``'s shape for ``"none"``, else a
        scalar. float32 and float64 are computed in their own precision,
        float16 and bfloat16 in float32.

    Raises
    ------
    TypeError
        For non-float ``hidden``, dtypes that differ between ``hidden``,
        ``weight`` and ``bias``, non-integer targets or arguments of the wrong type.
    ValueError
        For shapes that do not fit together (the message shows both) and
        out-of-range options.
    IndexError
        For a target outside ``[0, V)`` other than ``ignore_index``, with its position.

    See Also
    --------
    linear_cross_entropy_and_grad : the loss and its gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent._linear import linear_cross_entropy
    >>> hidden = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> weight = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    >>> round(float(linear_cross_entropy(hidden, weight, np.array([0, 2]))), 5)
    0.66908
    """
    call = prepare(
        hidden, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        chunk_rows,
    )  # fmt: skip
    if not call.chunk_rows_given:
        step = classes_per_chunk(call.hidden.shape[0], call.weight.shape[0], call.compute.itemsize)
        if step is not None:
            return _loss_by_classes(call, step)
    return _sweep(call, call.params, None, None)


def linear_cross_entropy_and_grad(
    hidden: npt.ArrayLike,
    weight: npt.ArrayLike,
    target: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    *,
    class_weight: npt.ArrayLike | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int | None = None,
    grad_output: npt.ArrayLike | float | None = None,
) -> tuple[np.ndarray | np.floating, np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`linear_cross_entropy` and its gradients with respect to ``hidden``, ``weight`` and ``bias``.

    Each block of logits is turned into its gradient in place and multiplied
    back right away, so the call holds one block of logits besides its inputs
    and outputs (plus, for float16/bfloat16 over several blocks, a float32
    sum of the weight gradient).

    Parameters
    ----------
    hidden, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_rows
        As :func:`linear_cross_entropy`.
    grad_output : float or array_like, optional
        The upstream gradient: a scalar, or for ``reduction="none"`` an array
        of the loss's shape (broadcastable to it). Defaults to 1.

    Returns
    -------
    loss : ndarray or scalar
        As :func:`linear_cross_entropy`.
    grad_hidden : ndarray of ``hidden``'s shape and dtype
    grad_weight : ndarray of shape (V, H), ``hidden``'s dtype
    grad_bias : ndarray of shape (V,), or None when ``bias`` is None

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent._linear import linear_cross_entropy_and_grad
    >>> hidden = np.array([[1.0, 0.0]])
    >>> weight = np.zeros((2, 2))
    >>> loss, grad_hidden, grad_weight, grad_bias = linear_cross_entropy_and_grad(
    ...     hidden, weight, np.array([0]), np.zeros(2))
    >>> float(loss), grad_bias
    (0.6931471805599453, array([-0.5,  0.5]))
    >>> grad_weight
    array([[-0.5,  0. ],
           [ 0.5,  0. ]])
    """
    call = prepare(
        hidden, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        chunk_rows,
    )  # fmt: skip
    upstream = upstream_gradient(grad_output, call)
    grad_scale, z_coef = upstream, call.z_loss
    if isinstance(upstream, float) and call.reduction != "none":
        grad_scale, z_coef = gradient_scale(call.reduction, upstream, call.divisor, call.valid_rows, call.z_loss)
    params = call.params
    if z_coef:
        params = loss_params(params.ignore_index, params.label_smoothing, params.softcap, z_coef)
    n_rows, n_hidden = call.hidden.shape
    n_classes = call.weight.shape[0]
    dtype = call.result_dtype
    outputs = _Outputs(
        grad_hidden=np.empty((n_rows, n_hidden), dtype),
        # With no rows the products never run: the weight and bias gradients are zero.
        grad_weight=(np.empty if n_rows else np.zeros)((n_classes, n_hidden), dtype),
        grad_bias=None if call.bias is None else (np.empty if n_rows else np.zeros)(n_classes, dtype),
    )
    loss = _sweep(call, params, outputs, grad_scale)
    hidden_shape = (*call.loss_shape, n_hidden)
    return loss, outputs.grad_hidden.reshape(hidden_shape), outputs.grad_weight, outputs.grad_bias
