"""Numerical rules every backend follows: zero classes, relative accuracy, SciPy's logsumexp options."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent


class TestZeroClasses:
    """An empty sum of losses is 0.0 (TF 2.21 gives 0, torch -0 for probabilities); an empty log-sum-exp is -inf."""

    @pytest.mark.parametrize("shape", [(3, 0), (0,), (2, 0, 4)])
    def test_probability_targets_give_positive_zero(self, backend, shape):
        logits = np.zeros(shape)
        loss = fastxent.cross_entropy(logits, np.zeros(shape), reduction="none")
        assert np.all(loss == 0) and not np.any(np.signbit(loss))
        loss, grad = fastxent.cross_entropy_and_grad(logits, np.zeros(shape), reduction="none")
        assert np.all(loss == 0) and not np.any(np.signbit(loss)) and grad.shape == shape

    def test_tensorflow_dense_loss_is_zero(self, backend):
        loss = fastxent.softmax_cross_entropy_with_logits(np.zeros((3, 0)), np.zeros((3, 0)))
        np.testing.assert_array_equal(loss, np.zeros(3))
        assert not np.any(np.signbit(loss))

    def test_means_and_sums(self, backend):
        logits = np.zeros((3, 0))
        assert fastxent.cross_entropy(logits, np.zeros((3, 0))) == 0.0
        assert fastxent.cross_entropy(logits, np.zeros((3, 0)), reduction="sum") == 0.0
        # Every class-index target must be ignored: the mean over no target is NaN, the sum 0.
        assert np.isnan(fastxent.cross_entropy(logits, np.full(3, -100)))
        assert fastxent.cross_entropy(logits, np.full(3, -100), reduction="sum") == 0.0

    def test_z_loss_of_an_empty_row_is_inf(self, backend):
        # lse = log(0) = -inf, so z_loss * lse**2 = +inf (never NaN).
        loss = fastxent.cross_entropy(np.zeros((3, 0)), np.zeros((3, 0)), reduction="none", z_loss=1e-3)
        np.testing.assert_array_equal(loss, np.full(3, np.inf))

    def test_softmax_family(self, backend):
        logits = np.zeros((3, 0), np.float32)
        np.testing.assert_array_equal(fastxent.logsumexp(logits, axis=-1), np.full(3, -np.inf, np.float32))
        assert fastxent.logsumexp(np.zeros(0)) == -np.inf
        assert fastxent.softmax(logits).shape == (3, 0)
        assert fastxent.log_softmax(logits).shape == (3, 0)


class TestDominantClass:
    """When one class dominates, S = 1 + S' with S' below one ulp of 1: results come from log1p(S') and -S'/S."""

    def test_scipy_gh_18295_logsumexp(self, backend):
        # scipy/special/tests/test_logsumexp.py: logsumexp([0, -40]) is log1p(exp(-40)), not 0.
        np.testing.assert_allclose(fastxent.logsumexp(np.array([0.0, -40.0])), np.log1p(np.exp(-40.0)), rtol=1e-15)
        np.testing.assert_allclose(fastxent.logsumexp(np.array([0.0, -20.0])), np.log1p(np.exp(-20.0)), rtol=6e-16)
        result = fastxent.logsumexp(np.array([0.0, -20.0], np.float32))
        np.testing.assert_allclose(result, np.float32(np.log1p(np.exp(-20.0))), rtol=2e-7)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("n_classes", [2, 40, 3000])
    def test_loss_and_gradient_of_a_confident_row(self, backend, dtype, n_classes):
        logits = np.full((1, n_classes), -30.0, dtype)
        logits[0, n_classes // 2] = 8.0
        rest = (n_classes - 1) * np.exp(np.float64(-38.0))
        loss, grad = fastxent.cross_entropy_and_grad(logits, np.array([n_classes // 2]), reduction="sum")
        tolerance = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(loss, np.log1p(rest), rtol=tolerance)
        np.testing.assert_allclose(grad[0, n_classes // 2], -rest / (1 + rest), rtol=tolerance)
        np.testing.assert_allclose(fastxent.log_softmax(logits)[0, n_classes // 2], -np.log1p(rest), rtol=tolerance)

    def test_tensorflow_dominant_class_gradient(self, backend):
        # TensorFlow's xent_op_test (newer than 2.21): the float64 gradient of a dominant class is -e^-37.4.
        logits = np.array([[0.0, -37.4]])
        expected = -np.exp(-37.4) / (1 + np.exp(-37.4))
        _, grad = fastxent.cross_entropy_and_grad(logits, np.array([[1.0, 0.0]]), reduction="sum")
        np.testing.assert_allclose(grad[0, 0], expected, rtol=1e-13)
        _, grad = fastxent.cross_entropy_and_grad(logits, np.array([0]), reduction="sum")
        np.testing.assert_allclose(grad[0, 0], expected, rtol=1e-13)
        np.testing.assert_allclose(
            fastxent.softmax_cross_entropy_with_logits(np.array([[1.0, 0.0]]), logits),
            np.log1p(np.exp(-37.4)),
            rtol=1e-13,
        )

    def test_ties_count_once_each(self, backend):
        # Two maxima: S' = 1 + exp(-40), so lse = log(2 + exp(-40)).
        logits = np.array([[5.0, 5.0, -35.0]])
        np.testing.assert_allclose(fastxent.logsumexp(logits), 5.0 + np.log(2.0 + np.exp(-40.0)), rtol=1e-15)
        _, grad = fastxent.cross_entropy_and_grad(logits, np.array([1]), reduction="sum")
        np.testing.assert_allclose(grad[0], [0.5, -0.5, np.exp(-40.0) / 2], rtol=1e-12)


class TestLogsumexpScaleAndSign:
    """SciPy's ``b`` and ``return_sign``, checked against scipy.special.logsumexp."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize(
        ("shape", "axis", "b_shape"),
        [
            ((6, 9), -1, (6, 9)),
            ((6, 9), -1, (9,)),
            ((6, 9), 0, (6, 1)),
            ((3, 4, 5), 1, ()),
            ((3, 4, 5), (0, 2), (3, 4, 5)),
        ],
    )
    def test_matches_scipy(self, backend, dtype, shape, axis, b_shape):
        scipy_special = pytest.importorskip("scipy.special")
        rng = np.random.default_rng(sum(shape) + len(b_shape))
        x = rng.standard_normal(shape).astype(dtype) * 3
        b = rng.standard_normal(b_shape)
        for return_sign in (False, True):
            got = fastxent.logsumexp(x, axis=axis, b=b, return_sign=return_sign)
            want = scipy_special.logsumexp(x.astype(np.float64), axis=axis, b=b, return_sign=return_sign)
            if not return_sign:
                got, want = (got,), (want,)
            for value, expected in zip(got, want):
                assert np.asarray(value).dtype == dtype
                np.testing.assert_allclose(value, expected, rtol=2e-5 if dtype == np.float32 else 1e-12, equal_nan=True)

    def test_zero_weights_exclude_even_inf_and_nan(self, backend):
        x = np.array([[np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0], [-np.inf, 0.0, np.nan]])
        b = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
        expected = [np.logaddexp(1.0, 2.0), np.logaddexp(1.0, 2.0), 0.0]
        np.testing.assert_allclose(fastxent.logsumexp(x, b=b), expected, rtol=1e-15)

    def test_signs_and_edge_cases(self, backend):
        res, sgn = fastxent.logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, -1.0]), return_sign=True)
        np.testing.assert_allclose(res, np.log(np.e**2 - np.e), rtol=1e-15)
        assert sgn == -1.0
        assert np.isnan(fastxent.logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, -1.0])))
        res, sgn = fastxent.logsumexp(np.array([3.0, 3.0]), b=np.array([1.0, -1.0]), return_sign=True)
        assert res == -np.inf and sgn == 0.0
        res, sgn = fastxent.logsumexp(np.array([1.0, -np.inf]), return_sign=True)
        assert res == 1.0 and sgn == 1.0
        # The dominant-class precision holds with weights too.
        np.testing.assert_allclose(
            fastxent.logsumexp(np.array([0.0, -40.0]), b=2.0), np.log(2) + np.log1p(np.exp(-40.0))
        )

    def test_bad_b(self):
        with pytest.raises(ValueError, match=r"b must broadcast to x's shape \(2, 3\); got shape \(4,\)"):
            fastxent.logsumexp(np.zeros((2, 3)), b=np.ones(4))
        with pytest.raises(TypeError, match="b must hold real numbers; got dtype complex128"):
            fastxent.logsumexp(np.zeros(3), b=np.ones(3, complex))

    def test_a_backend_without_the_operation_hands_it_on(self):
        from fastxent import _dispatch

        with fastxent.use_backend("numpy"):
            assert _dispatch.backend_with("logsumexp_scaled", 10).name == "numpy"
        if "numba" in fastxent.available_backends():
            with fastxent.use_backend("numba"):
                chosen = _dispatch.backend_with("logsumexp_scaled", 10)
            assert chosen.name != "numba" and hasattr(chosen, "logsumexp_scaled")


class TestInPlaceIsBitwiseEqual:
    """In place (gradient over the logits, softmax over its input) gives the allocating call's bits."""

    @pytest.mark.parametrize("softcap", [None, 3.0])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("target_kind", ["index", "probs"])
    def test_gradient(self, backend, dtype, target_kind, softcap):
        rng = np.random.default_rng(11)
        logits = rng.standard_normal((64, 5000)).astype(dtype)  # rows longer than a chunk, enough to run in parallel
        target = rng.integers(0, 5000, 64) if target_kind == "index" else rng.dirichlet(np.ones(5000), 64).astype(dtype)
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="sum", softcap=softcap)
        scratch = logits.copy()
        loss_in_place, grad_in_place = fastxent.cross_entropy_and_grad(
            scratch, target, reduction="sum", softcap=softcap, inplace=True
        )
        assert grad_in_place is scratch
        assert loss_in_place == loss
        np.testing.assert_array_equal(grad_in_place, grad)

    def test_softmax(self, backend):
        logits = np.random.default_rng(12).standard_normal((64, 5000)).astype(np.float32)
        expected = fastxent.softmax(logits)
        np.testing.assert_array_equal(fastxent.softmax(logits, out=logits), expected)
