"""softmax, log_softmax and logsumexp against scipy.special and torch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

import fastxent

FUNCTIONS = {
    "softmax": (fastxent.softmax, scipy.special.softmax),
    "log_softmax": (fastxent.log_softmax, scipy.special.log_softmax),
    "logsumexp": (fastxent.logsumexp, scipy.special.logsumexp),
}
TOLERANCE = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-6, atol=1e-6)}
AXES = (
    [(3,), 0],
    [(3,), -1],
    [(4, 5), 0],
    [(4, 5), 1],
    [(3, 4, 5), 1],
    [(3, 4, 5), -1],
    [(3, 4, 5), 0],
    [
        (2, 3, 4, 5),
        (1, 2),
    ],
    [(2, 3, 4, 5), (0, 3)],
    [(2, 3, 4, 5), None],
    [(2, 3, 4), (2, 0)],
)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("shape", "axis"), AXES)
def test_matches_scipy(backend, name, dtype, shape, axis):
    ours, theirs = FUNCTIONS[name]
    rng = np.random.default_rng(0)
    x = (5 * rng.standard_normal(shape)).astype(dtype)
    before = x.copy()
    actual = ours(x, axis=axis)
    expected = theirs(x.astype(np.float64), axis=axis)
    np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype])
    assert np.asarray(actual).dtype == dtype
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1, (0, 2), None])
def test_logsumexp_keepdims(backend, keepdims, axis):
    x = np.random.default_rng(1).standard_normal((3, 4, 5))
    actual = fastxent.logsumexp(x, axis=axis, keepdims=keepdims)
    expected = scipy.special.logsumexp(x, axis=axis, keepdims=keepdims)
    assert np.shape(actual) == np.shape(expected)
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_large_logits(backend, name, dtype):
    rng = np.random.default_rng(2)
    x = (1e4 * rng.choice([-1.0, 1.0], (6, 40)) + rng.standard_normal((6, 40))).astype(dtype)
    ours, theirs = FUNCTIONS[name]
    result = ours(x)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, theirs(x.astype(np.float64), axis=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "row",
    [[-np.inf, -np.inf, -np.inf], [-np.inf, 0.0, 1.0], [np.inf, 0.0, 1.0], [np.nan, 0.0, 1.0], [3e38, -3e38, 0.0]],
)
def test_non_finite_rows_follow_torch(backend, row):
    x = np.array([row, [0.0, 1.0, 2.0]], dtype=np.float32)
    t = torch.tensor(x)
    np.testing.assert_allclose(fastxent.softmax(x), torch.softmax(t, -1).numpy(), rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(fastxent.log_softmax(x), torch.log_softmax(t, -1).numpy(), rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(fastxent.logsumexp(x), torch.logsumexp(t, -1).numpy(), rtol=1e-6, equal_nan=True)
    assert np.isfinite(fastxent.softmax(x)[1]).all()


@pytest.mark.parametrize(("shape", "axis"), [((0, 4), 1), ((4, 0), 0), ((4, 0), 1), ((0, 4), 0)])
def test_empty_arrays(backend, shape, axis):
    x = np.zeros(shape)
    assert fastxent.softmax(x, axis=axis).shape == shape
    assert fastxent.log_softmax(x, axis=axis).shape == shape
    # An empty sum is 0, its log -inf: what torch.logsumexp gives.
    expected = torch.logsumexp(torch.tensor(x), dim=axis).numpy()
    np.testing.assert_array_equal(fastxent.logsumexp(x, axis=axis), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [1, 2, 3, 7, 8, 9, 12, 20, 24, 25, 32, 33])
def test_short_rows_every_block_size(backend, dtype, n_classes):
    """Short rows go a block of rows at a time (lanes across rows, stores spilling into the next row): every
    row count, against the NumPy reference, into a fenced ``out`` and in place, nothing written outside."""
    rng = np.random.default_rng(n_classes)
    for rows in (1, 3, 5, 9, 67, 1003):
        x = (rng.standard_normal((rows, n_classes)) * 4).astype(dtype)
        x[rows // 2, 0] = -np.inf
        with fastxent.use_backend("numpy"):
            want = {name: fastxent.softmax(x) if name == "softmax" else fastxent.log_softmax(x)
                    for name in ("softmax", "log_softmax")}  # fmt: skip
            want_lse = fastxent.logsumexp(x, axis=-1)
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(fastxent.logsumexp(x, axis=-1), want_lse, rtol=8 * eps, atol=8 * eps)
        for name, function in (("softmax", fastxent.softmax), ("log_softmax", fastxent.log_softmax)):
            np.testing.assert_allclose(function(x), want[name], rtol=8 * eps, atol=8 * eps)
            fenced = np.full(rows * n_classes + 64, np.nan, dtype)
            inside = fenced[32 : 32 + rows * n_classes].reshape(rows, n_classes)
            function(x, out=inside)
            np.testing.assert_array_equal(inside, function(x))
            inside[...] = x
            function(inside, out=inside)
            np.testing.assert_array_equal(inside, function(x))
            assert np.isnan(fenced[:32]).all() and np.isnan(fenced[32 + rows * n_classes :]).all()


class TestOut:
    @pytest.mark.parametrize("name", ["softmax", "log_softmax"])
    def test_out_contiguous_strided_and_aliased(self, backend, name):
        ours, theirs = FUNCTIONS[name]
        x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
        expected = theirs(x.astype(np.float64), axis=-1)
        for out in (np.empty_like(x), np.empty_like(x, order="F"), np.empty((5, 12), np.float32)[:, ::2]):
            assert ours(x, out=out) is out
            np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-7)
        aliased = x.copy()
        assert ours(aliased, out=aliased) is aliased
        np.testing.assert_allclose(aliased, expected, rtol=2e-6, atol=1e-7)

    def test_out_overlapping_input_is_handled(self, backend):
        buffer = np.random.default_rng(4).standard_normal(12)
        x = buffer[:10].reshape(2, 5)
        expected = scipy.special.softmax(x.copy(), axis=-1)
        out = buffer[2:12].reshape(2, 5)
        fastxent.softmax(x, out=out)
        np.testing.assert_allclose(out, expected, rtol=1e-12)

    def test_logsumexp_out(self, backend):
        x = np.random.default_rng(5).standard_normal((4, 3))
        out = np.empty(4)
        assert fastxent.logsumexp(x, out=out) is out
        np.testing.assert_allclose(out, scipy.special.logsumexp(x, axis=-1), rtol=1e-12)
        keep = np.empty((4, 1))
        assert fastxent.logsumexp(x, keepdims=True, out=keep) is keep

    def test_float16_out(self, backend):
        x = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float16)
        out = np.empty_like(x)
        fastxent.softmax(x, out=out)
        np.testing.assert_array_equal(out, fastxent.softmax(x.astype(np.float32)).astype(np.float16))


def test_scalar_logsumexp_is_numpy_scalar(backend):
    result = fastxent.logsumexp(np.array([1.0, 2.0], dtype=np.float32))
    assert isinstance(result, np.float32)


def test_accepts_array_likes(backend):
    np.testing.assert_allclose(fastxent.softmax([[1.0, 2.0], [3.0, 3.0]]), [[0.26894142, 0.73105858], [0.5, 0.5]])


class TestTensorFlowLosses:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize(("shape", "axis"), [((5, 7), -1), ((5, 7), 0), ((3, 7, 4), 1), ((7,), 0)])
    def test_dense_labels(self, backend, dtype, shape, axis):
        rng = np.random.default_rng(7)
        logits = (3 * rng.standard_normal(shape)).astype(dtype)
        labels = rng.random(shape).astype(dtype)
        expected = -np.sum(labels * scipy.special.log_softmax(logits.astype(np.float64), axis=axis), axis=axis)
        actual = fastxent.softmax_cross_entropy_with_logits(labels, logits, axis=axis)
        np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype])
        assert actual.dtype == dtype

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (7,)])
    def test_sparse_labels(self, backend, dtype, shape):
        rng = np.random.default_rng(8)
        logits = (3 * rng.standard_normal(shape)).astype(dtype)
        labels = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
        log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
        expected = -np.take_along_axis(log_probs, labels[..., None].astype(np.intp), axis=-1)[..., 0]
        actual = fastxent.sparse_softmax_cross_entropy_with_logits(labels, logits)
        np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype])
        assert actual.shape == shape[:-1] and actual.dtype == dtype

    @pytest.mark.parametrize("position", [(0, 0), (3, 1), (4, 2)])
    def test_sparse_label_out_of_range_names_value_and_position(self, backend, position):
        labels = np.zeros((5, 3), dtype=np.int64)
        labels[position] = 9
        with pytest.raises(IndexError, match=rf"labels value 9 at position \({position[0]}, {position[1]}\)"):
            fastxent.sparse_softmax_cross_entropy_with_logits(labels, np.zeros((5, 3, 4)))
