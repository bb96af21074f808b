"""optax's names and arguments over the fused losses: ``softmax_cross_entropy(_with_integer_labels)``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._vjp import dense_loss, sparse_loss

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]


def _check_cpu(array: jax.Array) -> None:
    """``ValueError`` for arrays (or, inside a trace, the default backend) off the CPU."""
    if isinstance(array, jax.core.Tracer):
        platform = jax.default_backend()
        where = f"the default JAX backend is {platform!r}"
    else:
        platforms = {device.platform for device in array.devices()}
        platform = "cpu" if platforms == {"cpu"} else ", ".join(sorted(platforms - {"cpu"}))
        where = f"logits are on {platform!r}"
    if platform != "cpu":
        raise ValueError(
            f"fastxent.jax computes on the CPU, but {where}; use optax's loss there or move the "
            f"computation to the CPU (jax.default_device(jax.devices('cpu')[0]))"
        )


def _class_axis(logits: jax.Array, axis: object) -> tuple[jax.Array, int]:
    """``(logits, axis)`` with ``axis`` one negative int; several axes are moved last and flattened, as optax."""
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        if not -logits.ndim <= axis < logits.ndim:
            raise ValueError(f"axis {axis} is out of bounds for logits of {logits.ndim} dimensions")
        return logits, int(axis) - logits.ndim if axis >= 0 else int(axis)
    if isinstance(axis, Sequence) and all(isinstance(a, (int, np.integer)) for a in axis) and len(axis):
        axes = sorted({int(a) % logits.ndim for a in axis})
        batch = tuple(i for i in range(logits.ndim) if i not in axes)
        moved = jnp.transpose(logits, batch + tuple(axes))
        return moved.reshape((*moved.shape[: len(batch)], -1)), -1
    raise ValueError(f"axis must be an int or a tuple of ints; got {axis!r}")


def _floating(logits: object) -> jax.Array:
    array = jnp.asarray(logits)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"logits must have a floating dtype; got {array.dtype}")
    return array


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """``optax.softmax_cross_entropy_with_integer_labels``, fused: per-example losses, no reduction.

    Parameters
    ----------
    logits : array of shape (..., C, ...)
        Unnormalised log-probabilities, class axis ``axis``.
    labels : int array of logits' shape without ``axis``
        Class indices in ``[0, C)``; an index outside raises an error when
        the computation runs (optax returns NaN or a wrong value instead).
    axis : int or tuple of ints, default -1
        The class axis (several axes are flattened into one, as optax).
    where : array of bool, optional
        optax's mask; when given, the loss is optax's plain JAX formula
        (not fused).

    Returns
    -------
    jax.Array of logits' shape without ``axis``, in logits' dtype.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fastxent.jax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> [round(float(v), 4) for v in fastxent.jax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))]
    [0.2761, 2.9518]
    >>> jax.grad(lambda x: fastxent.jax.softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 1])).sum())(
    ...     logits).shape
    (2, 3)
    """
    logits = _floating(logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype; got {labels.dtype}")
    if where is not None:
        return _masked_sparse(logits, labels, axis, jnp.asarray(where))
    logits, class_axis = _class_axis(logits, axis)
    expected = logits.shape[: logits.ndim + class_axis] + logits.shape[logits.ndim + class_axis + 1 :]
    if labels.shape != expected:
        raise ValueError(f"labels must have shape {expected} (logits' without the class axis); got {labels.shape}")
    _check_cpu(logits)
    return sparse_loss(logits, labels, class_axis)


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """``optax.softmax_cross_entropy``, fused: ``-sum(labels * log_softmax(logits), axis)`` per example.

    Differentiable with respect to both ``logits`` and ``labels`` (which need
    not sum to one).

    Parameters
    ----------
    logits : array of shape (..., C, ...)
        Unnormalised log-probabilities, class axis ``axis``.
    labels : array of logits' shape
        Class probabilities (one-hot or soft).
    axis : int, tuple of ints or None, default -1
        The class axis (several axes, or all for None, are flattened into one).
    where : array of bool, optional
        optax's mask; when given, the loss is optax's plain JAX formula
        (not fused).

    Returns
    -------
    jax.Array of logits' shape without ``axis``, in logits' dtype.

    Examples
    --------
    >>> import jax.numpy as jnp, fastxent.jax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> [round(float(v), 4) for v in fastxent.jax.softmax_cross_entropy(logits, labels)]
    [0.2761, 2.9518]
    """
    logits = _floating(logits)
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:
        raise ValueError(f"labels must have logits' shape {logits.shape}; got {labels.shape}")
    labels = labels.astype(logits.dtype)
    if where is not None:
        return _masked_dense(logits, labels, axis, jnp.asarray(where))
    if axis is None:
        axis = tuple(range(logits.ndim))
    labels, _ = _class_axis(labels, axis)
    logits, class_axis = _class_axis(logits, axis)
    _check_cpu(logits)
    return dense_loss(logits, labels, class_axis)


def _masked_sparse(logits: jax.Array, labels: jax.Array, axis: object, where: jax.Array) -> jax.Array:
    """optax's formula with ``where`` (plain JAX)."""
    if where.ndim != logits.ndim:
        where = jnp.expand_dims(where, axis)  # type: ignore[arg-type]
    logits, class_axis = _class_axis(logits, axis)
    if logits.ndim != where.ndim or where.shape[class_axis] != logits.shape[class_axis]:
        where, _ = _class_axis(where, axis)
    label_logits = jnp.take_along_axis(logits, jnp.expand_dims(labels, class_axis), axis=class_axis)
    out = jax.nn.logsumexp(logits, axis=class_axis, where=where) - label_logits.squeeze(class_axis)
    return jnp.where(jnp.any(where, class_axis), out, 0.0)


def _masked_dense(logits: jax.Array, labels: jax.Array, axis: object, where: jax.Array) -> jax.Array:
    """optax's formula with ``where`` (plain JAX)."""
    if where.ndim != logits.ndim:
        where = jnp.expand_dims(where, axis)  # type: ignore[arg-type]
    return -(labels * jax.nn.log_softmax(logits, axis, where)).sum(axis, where=where)  # type: ignore[arg-type]
