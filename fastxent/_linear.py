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

The parts: :mod:`fastxent._linear_call` checks a call and
:mod:`fastxent._linear_blocks` sizes its blocks; :mod:`fastxent._linear_rows`
runs the blocks of rows and :mod:`fastxent._linear_classes` the chunks of
classes, both through :mod:`fastxent._linear_products` (the matrix products)
and :mod:`fastxent._linear_blas` (SciPy's ``gemm``, BLAS threads).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._linear_blocks import classes_per_chunk, linear_chunk_rows
from ._linear_call import prepare, upstream_gradient
from ._linear_classes import loss_by_classes
from ._linear_products import Outputs
from ._linear_rows import sweep_rows
from ._reduction import gradient_scale
from ._xent_call import DEFAULT_IGNORE_INDEX, Reduction, loss_params

__all__ = ["linear_chunk_rows", "linear_cross_entropy", "linear_cross_entropy_and_grad"]


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
            return loss_by_classes(call, step)
    return sweep_rows(call, call.params, None, None)


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
        chunk_rows, "loss+grad",
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
    outputs = Outputs(
        grad_hidden=np.empty((n_rows, n_hidden), dtype),
        # With no rows the products never run: the weight and bias gradients are zero.
        grad_weight=(np.empty if n_rows else np.zeros)((n_classes, n_hidden), dtype),
        grad_bias=None if call.bias is None else (np.empty if n_rows else np.zeros)(n_classes, dtype),
    )
    loss = sweep_rows(call, params, outputs, grad_scale)
    hidden_shape = (*call.loss_shape, n_hidden)
    return loss, outputs.grad_hidden.reshape(hidden_shape), outputs.grad_weight, outputs.grad_bias
