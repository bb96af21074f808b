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
