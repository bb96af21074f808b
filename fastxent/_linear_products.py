"""The matrix products of the fused linear cross-entropy: steps 1 and 3 of :mod:`fastxent._linear`.

The forward fills a block of rows (or a chunk of classes of every row) of
logits; the backward multiplies the block's gradient into ``grad_hidden``,
``grad_weight`` and ``grad_bias``. :class:`Products` hands float32/float64
to BLAS as they are; :class:`ConvertedProducts` computes float16/bfloat16 in
float32, ``weight`` a chunk of classes at a time.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ._linear_blas import scipy_gemm
from ._linear_blocks import weight_chunk_rows
from ._linear_call import LinearCall

__all__ = ["ConvertedProducts", "Outputs", "Products", "add_bias_gradient", "products_for", "products_from"]

#: A front-end's own products for float32/float64 (the torch front-end's run
#: on torch's BLAS); None: :class:`Products`.
_FRONT_END_PRODUCTS: contextvars.ContextVar[Callable[..., Any] | None] = contextvars.ContextVar(
    "fastxent_linear_products", default=None
)


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


class Outputs(NamedTuple):
    """The gradients a call writes, block by block."""

    grad_hidden: np.ndarray  # (N, H), the caller's dtype
    grad_weight: np.ndarray  # (V, H), the caller's dtype
    grad_bias: np.ndarray | None  # (V,), the caller's dtype


class Products:
    """The three matrix products of a block for float32/float64 inputs: BLAS reads them as they are.

    SciPy's ``gemm`` gets every operand as a Fortran-order view: ``x.T`` of a
    C-contiguous ``x``, or ``x`` itself with ``trans=1``.
    """

    def __init__(self, call: LinearCall, outputs: Outputs | None) -> None:
        self.hidden = call.hidden
        self.weight = call.weight
        self.bias = call.bias
        self.outputs = outputs
        # f2py rejects some empty operands; NumPy's matmul takes them.
        self.gemm = scipy_gemm(call.compute) if call.weight.size else None
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
        add_bias_gradient(grad_bias, grad, first)

    def finish(self) -> None:
        """Nothing to do: the outputs were written in place."""


def add_bias_gradient(grad_bias: np.ndarray | None, grad: np.ndarray, first: bool) -> None:
    """``grad_bias = grad.sum(0)`` for the first block, else ``grad_bias += grad.sum(0)``; nothing without a bias."""
    if grad_bias is None:
        return
    if first:
        np.sum(grad, axis=0, out=grad_bias)
    else:
        grad_bias += np.sum(grad, axis=0)


class ConvertedProducts:
    """The products for float16/bfloat16 inputs: float32 BLAS on converted blocks and weight chunks."""

    def __init__(self, call: LinearCall, outputs: Outputs | None, rows: int) -> None:
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


@contextlib.contextmanager
def products_from(factory: Callable[[LinearCall, Outputs | None], Any]) -> Iterator[None]:
    """Inside the block, float32/float64 calls in this context make their products with ``factory(call, outputs)``.

    ``factory``'s objects have :class:`Products`' methods. A front-end uses
    this to run the products on its own framework's BLAS.
    """
    token = _FRONT_END_PRODUCTS.set(factory)
    try:
        yield
    finally:
        _FRONT_END_PRODUCTS.reset(token)


def products_for(call: LinearCall, outputs: Outputs | None, block_rows: int) -> Any:
    """The products for ``call``'s dtype, over blocks of at most ``block_rows`` rows."""
    if call.compute == call.hidden.dtype:
        factory = _FRONT_END_PRODUCTS.get()
        return (Products if factory is None else factory)(call, outputs)
    return ConvertedProducts(call, outputs, block_rows)
