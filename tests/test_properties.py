"""Hypothesis properties of every public function, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastxent

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32)


def logits_arrays(dtype=np.float64, min_dims=2, max_dims=3):
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=9)
    return hnp.arrays(dtype, shapes, elements=finite)


@PROPERTY_SETTINGS
@given(x=logits_arrays(), shift=st.floats(-1e3, 1e3), axis=st.integers(-2, 1))
def test_softmax_is_shift_invariant_and_sums_to_one(backend, x, shift, axis):
    p = fastxent.softmax(x, axis=axis)
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(fastxent.softmax(x + shift, axis=axis), p, rtol=1e-9, atol=1e-12)
    assert ((p >= 0) & (p <= 1)).all()


@PROPERTY_SETTINGS
@given(x=logits_arrays(np.float32), axis=st.integers(-2, 1))
def test_log_softmax_is_x_minus_logsumexp(backend, x, axis):
    lse = fastxent.logsumexp(x, axis=axis, keepdims=True)
    np.testing.assert_allclose(fastxent.log_softmax(x, axis=axis), x - lse, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.exp(fastxent.log_softmax(x, axis=axis)), fastxent.softmax(x, axis=axis), atol=1e-6)


@PROPERTY_SETTINGS
@given(data=st.data(), x=logits_arrays(min_dims=2, max_dims=4))
def test_cross_entropy_is_minus_log_softmax_at_target(backend, data, x):
    n_classes = x.shape[1]
    target_shape = x.shape[:1] + x.shape[2:]
    target = data.draw(hnp.arrays(np.int64, target_shape, elements=st.integers(0, n_classes - 1)))
    loss = fastxent.cross_entropy(x, target, reduction="none")
    expected = -np.take_along_axis(fastxent.log_softmax(x, axis=1), target[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(loss, expected, rtol=1e-10, atol=1e-10)


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    x=logits_arrays(np.float32, min_dims=2, max_dims=3),
    weighted=st.booleans(),
    smoothing=st.floats(0, 1),
    z_loss=st.floats(0, 1),
    softcap=st.none() | st.floats(0.5, 30),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    probabilities=st.booleans(),
)
def test_backend_agrees_with_reference(
    backend, data, x, weighted, smoothing, z_loss, softcap, reduction, probabilities
):
    n_classes = x.shape[1]
    if probabilities:
        target = data.draw(hnp.arrays(np.float32, x.shape, elements=st.floats(0, 1, width=32)))
    else:
        target_shape = x.shape[:1] + x.shape[2:]
        target = data.draw(hnp.arrays(np.int64, target_shape, elements=st.integers(-1, n_classes - 1)))
    weight = np.linspace(0.5, 1.5, n_classes, dtype=np.float32) if weighted else None
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    if not probabilities:
        kwargs["ignore_index"] = -1
    loss, grad = fastxent.cross_entropy_and_grad(x, target, **kwargs)
    with fastxent.use_backend("numpy"):
        expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, target, **kwargs)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("n_classes", [1, 2])
def test_tiny_class_counts(backend, n_classes):
    x = np.random.default_rng(0).standard_normal((5, n_classes))
    target = np.zeros(5, dtype=np.int64)
    loss, grad = fastxent.cross_entropy_and_grad(x, target, reduction="none")
    if n_classes == 1:
        np.testing.assert_array_equal(loss, 0.0)
        np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_allclose(fastxent.softmax(x).sum(axis=1), 1.0)


def fuzz_logits(draw, dtype):  # type: ignore[no-untyped-def]
    """N-d logits with the class axis 1: 0 to 6 rows, 1 to 12 classes, up to two more axes."""
    rows = draw(st.integers(0, 6))
    classes = draw(st.integers(1, 12))
    extra = draw(st.lists(st.integers(1, 4), max_size=2))
    shape = (rows, classes, *extra)
    return draw(hnp.arrays(dtype, shape, elements=st.floats(-30, 30, width=32)))


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    target_dtype=st.sampled_from([np.int32, np.int64, np.uint8]),
    weighted=st.booleans(),
    smoothing=st.floats(0, 1),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    probabilities=st.booleans(),
)
def test_fuzz_against_torch(backend, data, dtype, target_dtype, weighted, smoothing, reduction, probabilities):
    """Where semantics overlap (no z-loss, no softcap), every backend gives torch's loss and gradient."""
    import torch  # noqa: F401  (the peer helper needs it)
    from peers import torch_cross_entropy

    logits = fuzz_logits(data.draw, dtype)
    n_classes = logits.shape[1]
    index_shape = logits.shape[:1] + logits.shape[2:]
    if probabilities:
        target = data.draw(hnp.arrays(np.float64, logits.shape, elements=st.floats(0, 2)))  # need not sum to 1
        ignore_index = -100
    else:
        target = data.draw(hnp.arrays(target_dtype, index_shape, elements=st.integers(0, n_classes - 1)))
        ignore_index = data.draw(st.sampled_from([-100, 0, n_classes - 1]))
    weight = np.linspace(0.5, 2.0, n_classes) if weighted else None
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, ignore_index=ignore_index)
    loss, grad = fastxent.cross_entropy_and_grad(logits, target, **kwargs)
    as64 = logits.astype(np.float64)
    torch_target = target.astype(np.int64) if not probabilities else target
    expected_loss, expected_grad = torch_cross_entropy(as64, torch_target, **kwargs)
    tolerance = {np.float16: 2e-2, np.float32: 2e-5, np.float64: 1e-9}[dtype]
    np.testing.assert_allclose(
        np.asarray(loss, np.float64), expected_loss, rtol=tolerance, atol=tolerance, equal_nan=True
    )
    np.testing.assert_allclose(grad.astype(np.float64), expected_grad, rtol=tolerance, atol=tolerance, equal_nan=True)
    assert grad.dtype == dtype and grad.shape == logits.shape
