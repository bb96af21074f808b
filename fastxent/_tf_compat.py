"""TensorFlow's per-example losses: ``tf.nn.(sparse_)softmax_cross_entropy_with_logits``."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import _dispatch
from ._backends._interface import DEFAULT_PARAMS, LossParams
from ._layout import canonical, split_shape
from ._validate import float_input, index_target, normalize_axis
from ._xent_call import XentCall, index_summary, reduce, run_kernel

__all__ = ["softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits"]


def _per_example(call: XentCall) -> np.ndarray:
    result = reduce(call, *run_kernel(call, call.params, None, None))
    assert isinstance(result, np.ndarray)
    return result


def softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """Per-example cross-entropy with dense labels, as ``tf.nn.softmax_cross_entropy_with_logits``.

    Parameters
    ----------
    labels : array_like of float
        A distribution over classes per example (rows need not sum to 1),
        of ``logits``'s shape.
    logits : array_like of float16, bfloat16, float32 or float64
        Any shape with at least one axis.
    axis : int, default -1
        The class axis.

    Returns
    -------
    ndarray
        ``-sum(labels * log_softmax(logits, axis), axis)``: ``logits``'s
        shape without ``axis``, in ``logits``'s dtype.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.softmax_cross_entropy_with_logits(np.array([[0.5, 0.5]]), np.array([[0.0, 0.0]]))
    array([0.69314718])
    """
    inp = float_input(logits, "logits")
    if inp.array.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis); got a 0-d array")
    class_axis = normalize_axis(axis, inp.array.ndim)
    label_input = float_input(labels, "labels")
    if label_input.array.shape != inp.array.shape:
        raise ValueError(f"labels must have the shape of logits {inp.array.shape}; got {label_input.array.shape}")
    bck = split_shape(inp.array.shape, class_axis)
    rows = float(bck[0] * bck[2])
    logits_rows = canonical(inp.array, inp.compute_dtype, bck)
    return _per_example(
        XentCall(
            inp.array,
            logits_rows,
            canonical(label_input.array, inp.compute_dtype, bck),
            True,
            None,
            DEFAULT_PARAMS,
            inp.array.shape[:class_axis] + inp.array.shape[class_axis + 1 :],
            "none",
            0.0,
            inp.result_dtype,
            rows,
            rows,
            _dispatch.current_backend("loss", logits_rows),
        )
    )


def sparse_softmax_cross_entropy_with_logits(labels: npt.ArrayLike, logits: npt.ArrayLike) -> np.ndarray:
    """Per-example cross-entropy with class indices, as ``tf.nn.sparse_softmax_cross_entropy_with_logits``.

    Parameters
    ----------
    labels : array_like of int
        Class indices in ``[0, C)``, of shape ``logits.shape[:-1]``.
    logits : array_like of float16, bfloat16, float32 or float64
        Shape ``(..., C)``: the class axis is last.

    Returns
    -------
    ndarray
        Shape ``logits.shape[:-1]``, ``logits``'s dtype.

    Raises
    ------
    IndexError
        For a label outside ``[0, C)``, naming the value and its position.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.sparse_softmax_cross_entropy_with_logits(np.array([1]), np.array([[0.0, 0.0]]))
    array([0.69314718])
    """
    inp = float_input(logits, "logits")
    if inp.array.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis); got a 0-d array")
    shape = inp.array.shape
    label_array = np.asarray(labels)
    if label_array.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integer class indices; got dtype {label_array.dtype}")
    if label_array.shape != shape[:-1]:
        raise ValueError(
            f"labels must have shape {shape[:-1]} (logits' shape without the last axis); got {label_array.shape}"
        )
    bck = split_shape(shape, inp.array.ndim - 1)
    logits_rows = canonical(inp.array, inp.compute_dtype, bck)
    backend = _dispatch.current_backend("loss", logits_rows)
    indices = index_target(label_array, "labels").reshape(bck[0], bck[2])
    index_summary(backend, indices, None, bck[1], None, "labels", label_array.shape)
    rows = float(bck[0])
    return _per_example(
        XentCall(
            inp.array,
            logits_rows,
            indices,
            False,
            None,
            # Labels are checked to lie in [0, C): no label equals -1.
            LossParams(ignore_index=-1),
            shape[:-1],
            "none",
            0.0,
            inp.result_dtype,
            rows,
            rows,
            backend,
        )
    )
