"""The softmax family: softmax, log_softmax and logsumexp over any axes.

Each call validates, lays the input out as canonical ``(B, C, K)`` rows and
calls one kernel of the backend :func:`fastxent._dispatch.current_backend`
picks; it never knows which backend that is.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

from . import _dispatch
from ._backends._interface import ScaledLogsumexp
from ._layout import RowLayout, check_out, deliver, direct_output
from ._validate import float_input

__all__ = ["log_softmax", "logsumexp", "softmax"]


def _elementwise(kernel_name: str, x: npt.ArrayLike, axis: object, out: object) -> np.ndarray:
    """Shared body of :func:`softmax` and :func:`log_softmax`."""
    inp = float_input(x, "x")
    layout = RowLayout(inp.array.shape, axis)
    rows = layout.rows(inp.array, inp.compute_dtype)
    out_array = None if out is None else check_out(out, "out", inp.array.shape, inp.result_dtype)
    direct = out_array is not None and not layout.moved and direct_output(out_array, inp.compute_dtype, (inp.array,))
    if direct and out_array is not None:
        out_rows = out_array.reshape(layout.bck)
    else:
        out_rows = np.empty(layout.bck, dtype=inp.compute_dtype)
    backend = _dispatch.current_backend(kernel_name, rows)
    getattr(backend, kernel_name)(rows, out_rows, _dispatch.get_num_threads())
    return deliver(layout.unrows(out_rows), out_array, inp.result_dtype, direct)


def softmax(x: npt.ArrayLike, axis: int | tuple[int, ...] | None = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax along ``axis``: ``exp(x) / sum(exp(x), axis)``, computed stably.

    Parameters
    ----------
    x : array_like of float16, bfloat16, float32 or float64
        Logits of any shape.
    axis : int, tuple of int or None, default -1
        Axis or axes to normalise over; None means all of them.
    out : ndarray, optional
        Array of ``x``'s shape and dtype to write the result into. It may be
        ``x`` itself.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``; ``out`` when given.

    Raises
    ------
    TypeError
        If ``x`` is not a floating array, or ``out`` has the wrong dtype.
    ValueError
        If ``out`` has the wrong shape or is read-only.

    See Also
    --------
    scipy.special.softmax : the same values.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.softmax(np.array([1e4, 1e4, 1e4]))
    array([0.33333333, 0.33333333, 0.33333333])
    """
    return _elementwise("softmax", x, axis, out)


def log_softmax(
    x: npt.ArrayLike, axis: int | tuple[int, ...] | None = -1, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Log of the softmax along ``axis``: ``x - logsumexp(x, axis)``.

    Parameters
    ----------
    x : array_like of float16, bfloat16, float32 or float64
        Logits of any shape.
    axis : int, tuple of int or None, default -1
        Axis or axes to normalise over; None means all of them.
    out : ndarray, optional
        Array of ``x``'s shape and dtype to write into; may be ``x``.

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``; ``out`` when given.

    See Also
    --------
    scipy.special.log_softmax : the same values.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.log_softmax(np.array([[0.0, 0.0], [1e4, 1e4]]))
    array([[-0.69314718, -0.69314718],
           [-0.69314718, -0.69314718]])
    """
    return _elementwise("log_softmax", x, axis, out)


def _sign_of(result: np.ndarray) -> np.ndarray:
    """The sign of ``sum(exp(x))`` from its log: 0 for an empty sum, NaN for NaN, else 1."""
    return np.where(result == -np.inf, 0.0, np.where(np.isnan(result), np.nan, 1.0)).astype(result.dtype)


def logsumexp(
    x: npt.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    b: npt.ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray | np.floating | tuple[np.ndarray | np.floating, np.ndarray | np.floating]:
    """``log(sum(b * exp(x), axis))``, computed without overflow, as ``scipy.special.logsumexp``.

    Parameters
    ----------
    x : array_like of float16, bfloat16, float32 or float64
        Any shape.
    axis : int, tuple of int or None, default -1
        Axis or axes to reduce; None means all of them (SciPy's default).
    b : array_like, optional
        Scale factors, broadcastable to ``x``'s shape; may be negative.
        Entries with ``b == 0`` take no part, even where ``x`` is infinite or
        NaN. Computed in one sweep with ``x`` (no ``x + log(b)`` array).
    keepdims : bool, default False
        Keep the reduced axes with length 1.
    return_sign : bool, default False
        Also return the sign of the sum; the result is then ``log(|sum|)``.
        Without it, a negative sum gives NaN.
    out : ndarray, optional
        Array of the result's shape and ``x``'s dtype to write into.

    Returns
    -------
    res : ndarray or scalar
        ``x``'s dtype; a NumPy scalar when the result is 0-d and ``out`` is
        not given. An empty sum gives ``-inf``.
    sgn : ndarray or scalar
        With ``return_sign``: 1, -1, 0 (empty sum) or NaN, in ``res``'s dtype.

    See Also
    --------
    scipy.special.logsumexp : the same values.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> float(fastxent.logsumexp(np.array([1e4, 1e4])))
    10000.69314718056
    >>> res, sgn = fastxent.logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, -1.0]), return_sign=True)
    >>> round(float(res), 6), float(sgn)
    (1.541325, -1.0)
    """
    inp = float_input(x, "x")
    layout = RowLayout(inp.array.shape, axis)
    rows = layout.rows(inp.array, inp.compute_dtype)
    result_shape = layout.reduced_shape(bool(keepdims))
    n_rows, _, k = layout.bck
    out_array = None if out is None else check_out(out, "out", result_shape, inp.result_dtype)
    direct = out_array is not None and b is None and direct_output(out_array, inp.compute_dtype, (inp.array,))
    if direct and out_array is not None:
        out_rows = out_array.reshape(n_rows, k)
    else:
        out_rows = np.empty((n_rows, k), dtype=inp.compute_dtype)
    threads = _dispatch.get_num_threads()
    if b is None:
        _dispatch.current_backend("logsumexp", rows).logsumexp(rows, out_rows, threads)
        sign_rows = _sign_of(out_rows) if return_sign else None
    else:
        scale = np.asarray(b)
        if scale.dtype.kind not in "biuf":
            raise TypeError(f"b must hold real numbers; got dtype {scale.dtype}")
        if scale.dtype != inp.compute_dtype:
            scale = scale.astype(inp.compute_dtype)  # at b's own size, before it is broadcast
        try:
            scale = np.broadcast_to(scale, inp.array.shape)
        except ValueError:
            raise ValueError(f"b must broadcast to x's shape {inp.array.shape}; got shape {scale.shape}") from None
        sign_rows = np.empty((n_rows, k), dtype=inp.compute_dtype)
        backend = cast(ScaledLogsumexp, _dispatch.backend_with("logsumexp_scaled", "logsumexp", rows))
        backend.logsumexp_scaled(rows, layout.strided_rows(scale), out_rows, sign_rows, threads)
        if not return_sign:
            out_rows[sign_rows < 0] = np.nan
    result = deliver(out_rows.reshape(result_shape), out_array, inp.result_dtype, direct)
    result = result[()] if out_array is None and result.ndim == 0 else result
    if not return_sign:
        return result
    assert sign_rows is not None
    sign = sign_rows.reshape(result_shape).astype(inp.result_dtype, copy=False)
    return result, sign[()] if sign.ndim == 0 else sign
