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


def _exact_loss_grad(logits: np.ndarray, target: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """lse, loss and gradient from S' (the sum but for the first maximum) in long double, the class axis last."""
    x = np.moveaxis(logits, axis, -1).astype(np.longdouble)
    top = np.argmax(x, axis=-1)[..., None]
    shifted = x - np.take_along_axis(x, top, axis=-1)
    exps = np.exp(shifted)
    np.put_along_axis(exps, top, 0, axis=-1)
    rest = exps.sum(axis=-1)
    lse = np.take_along_axis(x, top, axis=-1)[..., 0] + np.log1p(rest)
    y = target[..., None]
    loss = np.log1p(rest) - np.take_along_axis(shifted, y, axis=-1)[..., 0]
    grad = exps / (1 + rest)[..., None]
    np.put_along_axis(grad, top, (1 / (1 + rest))[..., None], axis=-1)
    at_top = (y == top)[..., 0]
    target_grad = np.where(at_top, -rest / (1 + rest), np.take_along_axis(grad, y, axis=-1)[..., 0] - 1)
    np.put_along_axis(grad, y, target_grad[..., None], axis=-1)
    return lse, loss, np.moveaxis(grad, -1, axis)


class TestDominantClassEveryPath:
    """S = 1 + S' is summed whole where S >= 2 and S' is summed apart where the maximum dominates:
    rows and tiles mixing both, every result relatively accurate against long double."""

    @staticmethod
    def _logits(shape: tuple[int, ...], axis: int, dtype: type, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        n_classes = shape[axis]
        logits = rng.standard_normal(shape) * 2
        target = rng.integers(0, n_classes, np.delete(np.array(shape), axis))
        moved = np.moveaxis(logits, axis, -1)
        # A third of the positions: the target dominates by 2..40 (S from ~2 down to 1 + 1e-17).
        lift = rng.uniform(2, 40, target.shape) * (rng.random(target.shape) < 1 / 3)
        np.put_along_axis(moved, target[..., None], moved.max(axis=-1, keepdims=True) + lift[..., None], axis=-1)
        return logits.astype(dtype), target

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize(
        ("shape", "axis"),
        [
            ((64, 10), 1),
            ((64, 40), 1),
            ((8, 5000), 1),
            ((3, 2, 37), 1),
            ((3, 40, 37), 1),
            ((2, 300, 19), 1),
            # Tiles of both Cython tile paths: wide tiles with a long stride (class by class; float64's
            # 21-class tile is narrow, by groups) and narrow ones (by groups), with tails.
            ((2, 21, 1100), 1),
            ((2, 3, 1500), 1),
            ((2, 40, 600), 1),
            # Groups over three blocks of classes (the blocks' sums are scaled to the final maximum).
            ((1, 700, 40), 1),
        ],
    )
    def test_loss_gradient_and_normalisers(self, backend, dtype, shape, axis):
        logits, target = self._logits(shape, axis, dtype, seed=sum(shape))
        lse, loss, grad = _exact_loss_grad(logits, target, axis)
        # exp(x - M) of a rounded x - M down to -50 is off by up to 50 ulps (exp's condition number); a
        # gradient also by the rounding of the sum of C terms, absolute.
        eps = np.finfo(dtype).eps
        close = {"rtol": 64 * eps, "atol": 0}
        got_loss, got_grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
        np.testing.assert_allclose(got_loss, loss.astype(np.float64), **close)
        alone = fastxent.cross_entropy(logits, target, reduction="none")
        np.testing.assert_allclose(alone, loss.astype(np.float64), **close)
        np.testing.assert_allclose(got_grad, grad.astype(np.float64), rtol=64 * eps, atol=shape[axis] * eps / 4)
        # lse = M + log(S) cancels where M ~ -log(S): a result in the logits' precision is then off by ulps
        # of M, not of lse (torch's and SciPy's too).
        top = np.max(logits, axis=axis).astype(np.float64)
        bound = np.maximum(64 * eps * np.abs(lse.astype(np.float64)), 4 * eps * np.abs(top))
        error = np.abs(fastxent.logsumexp(logits, axis=axis) - lse.astype(np.float64))
        np.testing.assert_array_less(error, bound + np.finfo(np.float64).tiny)
        log_probs = np.moveaxis(fastxent.log_softmax(logits, axis=axis), axis, -1)
        got = np.take_along_axis(log_probs, target[..., None], -1)[..., 0]
        np.testing.assert_allclose(got, -loss.astype(np.float64), **close)
        in_place = logits.copy()
        fastxent.cross_entropy_and_grad(in_place, target, reduction="none", inplace=True)
        np.testing.assert_array_equal(in_place, got_grad)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize(("shape", "axis"), [((64, 12), 1), ((8, 300), 1), ((3, 40, 37), 1)])
    def test_probability_targets(self, backend, dtype, shape, axis):
        logits, target = self._logits(shape, axis, dtype, seed=7 + sum(shape))
        _, loss, grad = _exact_loss_grad(logits, target, axis)
        one_hot = np.moveaxis(np.eye(shape[axis], dtype=dtype)[target], -1, axis)
        eps = np.finfo(dtype).eps
        got_loss, got_grad = fastxent.cross_entropy_and_grad(logits, one_hot, reduction="none")
        np.testing.assert_allclose(got_loss, loss.astype(np.float64), rtol=64 * eps, atol=0)
        np.testing.assert_allclose(got_grad, grad.astype(np.float64), rtol=64 * eps, atol=shape[axis] * eps / 4)


class TestShortRowAccuracy:
    """Rows of up to 32 classes (lanes across rows in the Cython backend, with a vectorised log1p): the loss of a
    target on the maximum, log1p(S'), within a few ulps for S' from 1e-26 to C - 1."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("n_classes", [2, 5, 10, 20, 32])
    def test_log1p_of_the_rest(self, backend, dtype, n_classes):
        rng = np.random.default_rng(n_classes)
        rows = 20_003  # not a multiple of a block of rows
        logits = np.zeros((rows, n_classes), dtype)
        logits[:, 1:] = -(rng.uniform(0, 60, (rows, n_classes - 1)) * rng.random((rows, 1)) ** 3)
        loss, grad = fastxent.cross_entropy_and_grad(logits, np.zeros(rows, np.int64), reduction="none")
        exact = np.log1p(np.exp(logits[:, 1:].astype(np.longdouble)).sum(axis=1))
        ulps = np.abs(loss.astype(np.longdouble) - exact) / np.spacing(exact.astype(dtype)).astype(np.longdouble)
        # Measured (Cython, this machine kind): float32 3-7 ulps, float64 2-7, most of it the sum of the exps.
        assert ulps.max() <= 8
        # The loss alone may take another path than the loss with its gradient: equal within rounding.
        alone = fastxent.cross_entropy(logits, np.zeros(rows, np.int64), reduction="none")
        np.testing.assert_allclose(alone, loss, rtol=8 * np.finfo(dtype).eps)
        np.testing.assert_allclose(grad[:, 0], np.expm1(-exact).astype(np.float64), rtol=16 * np.finfo(dtype).eps)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("n_classes", [1, 2, 3, 5, 7, 8, 9, 12, 16, 20, 31, 32, 33])
    def test_gradient_stays_in_its_rows(self, backend, dtype, n_classes):
        """The gradient of short rows (stored a block of rows at a time, stores spilling into the next row)
        matches the reference, allocated, into ``grad_out`` and in place, and writes nothing outside."""
        rng = np.random.default_rng(n_classes)
        for rows in (1, 3, 7, 9, 67, 1003):
            logits = (rng.standard_normal((rows, n_classes)) * 3).astype(dtype)
            target = rng.integers(0, n_classes, rows)
            target[::5] = -100
            want_loss, want_grad = _reference(logits, target)
            eps = np.finfo(dtype).eps
            loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
            np.testing.assert_allclose(loss, want_loss, rtol=16 * eps, atol=eps)
            np.testing.assert_allclose(grad, want_grad, rtol=16 * eps, atol=eps)
            fenced = np.full(rows * n_classes + 64, np.nan, dtype)
            inside = fenced[32 : 32 + rows * n_classes].reshape(rows, n_classes)
            fastxent.cross_entropy_and_grad(logits, target, reduction="sum", grad_out=inside)
            np.testing.assert_array_equal(inside, fastxent.cross_entropy_and_grad(logits, target, reduction="sum")[1])
            assert np.isnan(fenced[:32]).all() and np.isnan(fenced[32 + rows * n_classes :]).all()
            inside[...] = logits
            fastxent.cross_entropy_and_grad(inside, target, reduction="sum", inplace=True)
            np.testing.assert_array_equal(inside, fastxent.cross_entropy_and_grad(logits, target, reduction="sum")[1])
            assert np.isnan(fenced[:32]).all() and np.isnan(fenced[32 + rows * n_classes :]).all()

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_non_finite_rows_among_finite_ones(self, backend, dtype):
        rng = np.random.default_rng(3)
        logits = rng.standard_normal((13, 6)).astype(dtype)
        logits[1, 2] = -np.inf
        logits[2, :] = -np.inf
        logits[3, 4] = np.inf
        logits[4, 0] = np.nan
        target = np.array([0, 1, 2, 4, 1, 5, 0, 3, 2, 1, 0, 5, -100])
        want_loss, want_grad = _reference(logits, target)
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
        np.testing.assert_allclose(loss, want_loss, rtol=8 * np.finfo(dtype).eps)
        np.testing.assert_allclose(grad, want_grad, rtol=8 * np.finfo(dtype).eps, atol=np.finfo(dtype).eps)
        np.testing.assert_allclose(fastxent.cross_entropy(logits, target, reduction="none"), loss, rtol=4e-7)


class TestTilesNonFinite:
    """Class axis 1: -inf, +inf and NaN positions among finite ones, on both Cython tile paths (a short
    stride goes by groups of positions, a long one class by class), against the NumPy reference."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("positions", [37, 1100])
    def test_positions(self, backend, dtype, positions):
        rng = np.random.default_rng(positions)
        logits = rng.standard_normal((2, 6, positions)).astype(dtype)
        target = rng.integers(0, 6, (2, positions))
        logits[0, 2, 5] = -np.inf
        logits[0, :, 6] = -np.inf
        logits[1, 4, 7] = np.inf
        logits[1, 0, positions - 1] = np.nan
        target[1, 8] = -100
        with fastxent.use_backend("numpy"):
            want_loss, want_grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
            want_lse = fastxent.logsumexp(logits, axis=1)
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(loss, want_loss, rtol=8 * eps, equal_nan=True)
        np.testing.assert_allclose(grad, want_grad, rtol=8 * eps, atol=eps, equal_nan=True)
        np.testing.assert_allclose(fastxent.logsumexp(logits, axis=1), want_lse, rtol=8 * eps, equal_nan=True)
        assert np.isnan(loss[1, positions - 1]) and np.isfinite(np.delete(loss[0], [6])).all()


class TestTilePathsAgree:
    """A position's results do not depend on its tile: the Cython backend sweeps a wide tile with a long stride
    class by class and a narrow one (or a short stride) by groups of positions; both take one position through
    the same operations, so a slice whose stride changes the path (and a Dask chunk) gives the same bits."""

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_slices_match_the_whole(self, backend, dtype):
        rng = np.random.default_rng(11)
        logits = (rng.standard_normal((2, 21, 1100)) * 4).astype(dtype)
        target = rng.integers(0, 21, (2, 1100))
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
        lse = fastxent.logsumexp(logits, axis=1)
        # 1000 positions: a 4000-byte float32 stride (groups); 37: a narrow tile; an odd offset: another tail.
        for part in (slice(0, 1000), slice(0, 37), slice(5, 1100)):
            piece = np.ascontiguousarray(logits[:, :, part])
            piece_loss, piece_grad = fastxent.cross_entropy_and_grad(piece, target[:, part], reduction="none")
            np.testing.assert_array_equal(piece_loss, loss[:, part])
            np.testing.assert_array_equal(piece_grad, grad[:, :, part])
            np.testing.assert_array_equal(fastxent.logsumexp(piece, axis=1), lse[:, part])


def _reference(logits: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with fastxent.use_backend("numpy"):
        return fastxent.cross_entropy_and_grad(logits, target, reduction="none")


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

    def test_every_backend_has_its_own(self, backend):
        from fastxent import _dispatch

        rows = np.zeros((1, 10, 1))
        assert _dispatch.backend_with("logsumexp_scaled", "logsumexp", rows).name == backend

    def test_a_backend_without_the_operation_hands_it_on(self, monkeypatch):
        from fastxent import _dispatch

        class Lacking:
            name = "lacking"

        monkeypatch.setattr(_dispatch, "current_backend", lambda operation, rows: Lacking())
        chosen = _dispatch.backend_with("logsumexp_scaled", "logsumexp", np.zeros((1, 10, 1)))
        assert chosen.name in _dispatch.AUTO_ORDER and hasattr(chosen, "logsumexp_scaled")

    @pytest.mark.parametrize(("shape", "axis", "b_shape"), [((40, 7), -1, (7,)), ((3, 5, 4, 6), 1, (5, 1, 1))])
    def test_a_broadcast_scale_is_not_laid_out_at_full_size(self, backend, shape, axis, b_shape, monkeypatch):
        from fastxent import _layout

        scipy_special = pytest.importorskip("scipy.special")
        rng = np.random.default_rng(5)
        x = rng.standard_normal(shape)
        b = rng.uniform(-1, 2, b_shape)
        seen = []
        strided_rows = _layout.RowLayout.strided_rows
        monkeypatch.setattr(
            _layout.RowLayout, "strided_rows", lambda self, a: seen.append(strided_rows(self, a)) or seen[-1]
        )
        got, sign = fastxent.logsumexp(x, axis=axis, b=b, return_sign=True)
        want, want_sign = scipy_special.logsumexp(x, axis=axis, b=np.broadcast_to(b, shape), return_sign=True)
        np.testing.assert_allclose(got, want, rtol=1e-13)
        np.testing.assert_array_equal(sign, want_sign)
        assert 0 in seen[0].strides and not seen[0].flags.owndata


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
