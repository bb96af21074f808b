"""cross_entropy and cross_entropy_and_grad against PyTorch, finite differences and each other."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from peers import torch_cross_entropy

import fastxent

SHAPES = [(7,), (5, 7), (4, 6, 3), (2, 5, 3, 2)]
TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=3e-5, atol=3e-6)}


def class_axis(shape: tuple[int, ...]) -> int:
    return 0 if len(shape) == 1 else 1


def make_logits(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return (3 * rng.standard_normal(shape)).astype(dtype)


def make_target(
    rng: np.random.Generator, shape: tuple[int, ...], kind: str, dtype: type, ignore_index: int = -100
) -> np.ndarray:
    axis = class_axis(shape)
    n_classes = shape[axis]
    if kind == "probs":
        target = rng.random(shape).astype(dtype)
        return target / target.sum(axis=axis, keepdims=True)
    index_shape = shape[:axis] + shape[axis + 1 :]
    target = rng.integers(0, n_classes, size=index_shape)
    if kind == "ignored" and target.size > 1:
        flat = target.reshape(-1)
        flat[:: max(2, flat.size // 3)] = ignore_index
    return target


def assert_close(actual: object, expected: object, dtype: type) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), equal_nan=True, **TOLERANCE[dtype])


CASES = list(
    itertools.product(
        SHAPES,
        ["index", "ignored", "probs"],
        [False, True],  # weighted
        ["none", "mean", "sum"],
        [0.0, 0.2],  # label_smoothing
    )
)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("shape", "kind", "weighted", "reduction", "smoothing"), CASES)
def test_matches_torch(backend, dtype, shape, kind, weighted, reduction, smoothing):
    # crc32, not hash(): str hashes are salted per process, so a failure would not reproduce.
    rng = np.random.default_rng(zlib.crc32(repr((shape, kind, weighted, reduction, smoothing)).encode()))
    logits = make_logits(rng, shape, dtype)
    target = make_target(rng, shape, kind, dtype)
    weight = rng.random(shape[class_axis(shape)]).astype(dtype) + 0.5 if weighted else None
    before = logits.copy(), target.copy()
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)

    expected_loss, expected_grad = torch_cross_entropy(logits, target, **kwargs)
    loss = fastxent.cross_entropy(logits, target, **kwargs)
    fused_loss, grad = fastxent.cross_entropy_and_grad(logits, target, **kwargs)

    assert_close(loss, expected_loss, dtype)
    assert_close(fused_loss, expected_loss, dtype)
    assert_close(grad, expected_grad, dtype)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype
    assert np.shape(loss) == np.shape(expected_loss)
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(target, before[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(9,), (6, 9), (3, 9, 4)])
@pytest.mark.parametrize("kind", ["ignored", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("z_loss", "softcap"), [(1e-2, None), (0.0, 2.5), (0.5, 1.5)])
def test_extras_match_torch_composition(backend, dtype, shape, kind, reduction, z_loss, softcap):
    rng = np.random.default_rng(7)
    logits = make_logits(rng, shape, dtype)
    target = make_target(rng, shape, kind, dtype)
    weight = rng.random(shape[class_axis(shape)]).astype(dtype) + 0.5
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=z_loss, softcap=softcap)
    expected_loss, expected_grad = torch_cross_entropy(logits, target, **kwargs)
    loss, grad = fastxent.cross_entropy_and_grad(logits, target, **kwargs)
    assert_close(loss, expected_loss, dtype)
    assert_close(fastxent.cross_entropy(logits, target, **kwargs), expected_loss, dtype)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("kind", ["ignored", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradient_matches_finite_differences(backend, kind, reduction):
    rng = np.random.default_rng(3)
    shape = (3, 5, 2)
    logits = make_logits(rng, shape, np.float64)
    target = make_target(rng, shape, kind, np.float64)
    weight = rng.random(5) + 0.5
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=0.15, z_loss=0.05, softcap=4.0)
    upstream = rng.standard_normal((3, 2)) if reduction == "none" else 0.7

    def objective(x: np.ndarray) -> float:
        return float(np.sum(upstream * fastxent.cross_entropy(x, target, **kwargs)))

    _, grad = fastxent.cross_entropy_and_grad(logits, target, grad_output=upstream, **kwargs)
    step = 1e-6
    numeric = np.zeros_like(logits)
    for position in np.ndindex(shape):
        bumped = logits.copy()
        bumped[position] += step
        up = objective(bumped)
        bumped[position] -= 2 * step
        numeric[position] = (up - objective(bumped)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_grad_output_scales_gradient(backend, reduction):
    rng = np.random.default_rng(5)
    logits = make_logits(rng, (6, 4), np.float64)
    target = make_target(rng, (6, 4), "ignored", np.float64)
    upstream = rng.standard_normal(6) if reduction == "none" else -2.5
    expected = torch_cross_entropy(logits, target, reduction=reduction, grad_output=upstream)
    loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction=reduction, grad_output=upstream)
    assert_close(loss, expected[0], np.float64)
    assert_close(grad, expected[1], np.float64)


@pytest.mark.parametrize("target_dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint16, np.uint64])
def test_any_integer_target_dtype(backend, target_dtype):
    rng = np.random.default_rng(0)
    logits = make_logits(rng, (8, 5), np.float32)
    target = rng.integers(0, 5, 8)
    expected = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
    actual = fastxent.cross_entropy_and_grad(logits, target.astype(target_dtype), reduction="none")
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_array_equal(actual[1], expected[1])


def test_big_endian_and_strided_inputs(backend):
    rng = np.random.default_rng(1)
    base = make_logits(rng, (6, 10), np.float64)
    target = rng.integers(0, 5, 6)
    expected = torch_cross_entropy(np.ascontiguousarray(base[:, ::2]), target, reduction="none")
    for logits in (base[:, ::2], np.asfortranarray(base[:, ::2]), base[:, ::2].astype(">f8")):
        loss, grad = fastxent.cross_entropy_and_grad(logits, target.astype(">i8"), reduction="none")
        assert_close(loss, expected[0], np.float64)
        assert_close(grad, expected[1], np.float64)


class TestOutputs:
    def test_grad_out_is_filled_and_returned(self, backend):
        rng = np.random.default_rng(2)
        logits = make_logits(rng, (4, 6, 3), np.float32)
        target = make_target(rng, (4, 6, 3), "index", np.float32)
        expected = torch_cross_entropy(logits, target)
        for grad_out in (np.empty_like(logits), np.empty_like(logits, order="F")):
            _, grad = fastxent.cross_entropy_and_grad(logits, target, grad_out=grad_out)
            assert grad is grad_out
            assert_close(grad, expected[1], np.float32)

    @pytest.mark.parametrize("order", ["C", "F"])
    @pytest.mark.parametrize("kind", ["index", "probs"])
    def test_inplace_overwrites_input_with_gradient(self, backend, order, kind):
        rng = np.random.default_rng(4)
        logits = np.array(make_logits(rng, (5, 7), np.float64), order=order)
        target = make_target(rng, (5, 7), kind, np.float64)
        expected = torch_cross_entropy(logits, target, label_smoothing=0.1)
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, label_smoothing=0.1, inplace=True)
        assert grad is logits
        assert_close(loss, expected[0], np.float64)
        assert_close(logits, expected[1], np.float64)

    def test_grad_out_may_be_the_input(self, backend):
        rng = np.random.default_rng(6)
        logits = make_logits(rng, (5, 7), np.float64)
        target = make_target(rng, (5, 7), "index", np.float64)
        expected = torch_cross_entropy(logits, target)
        _, grad = fastxent.cross_entropy_and_grad(logits, target, grad_out=logits)
        assert grad is logits
        assert_close(logits, expected[1], np.float64)


class TestLowPrecision:
    def test_float16_is_computed_in_float32(self, backend):
        rng = np.random.default_rng(8)
        logits16 = make_logits(rng, (6, 9), np.float16)
        target = rng.integers(0, 9, 6)
        loss, grad = fastxent.cross_entropy_and_grad(logits16, target, reduction="none")
        loss32, grad32 = fastxent.cross_entropy_and_grad(logits16.astype(np.float32), target, reduction="none")
        assert loss.dtype == np.float16 and grad.dtype == np.float16
        np.testing.assert_array_equal(loss, loss32.astype(np.float16))
        np.testing.assert_array_equal(grad, grad32.astype(np.float16))

    def test_bfloat16_when_available(self, backend):
        ml_dtypes = pytest.importorskip("ml_dtypes")
        rng = np.random.default_rng(9)
        logits = make_logits(rng, (6, 9), np.float32).astype(ml_dtypes.bfloat16)
        target = rng.integers(0, 9, 6)
        loss = fastxent.cross_entropy(logits, target, reduction="none")
        expected = fastxent.cross_entropy(logits.astype(np.float32), target, reduction="none")
        assert loss.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(loss, expected.astype(ml_dtypes.bfloat16))


class TestNonFinite:
    """Non-finite logits give exactly what torch gives."""

    @staticmethod
    def check(logits: np.ndarray, target: np.ndarray, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        expected = torch_cross_entropy(logits, target, reduction="none", **kwargs)
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none", **kwargs)
        assert_close(loss, expected[0], np.float64)
        assert_close(grad, expected[1], np.float64)
        return loss, grad

    def test_minus_inf_non_target_is_masked(self, backend):
        logits = np.array([[1.0, -np.inf, 0.5], [0.0, 0.0, 0.0]])
        loss, grad = self.check(logits, np.array([0, 1]))
        assert np.isfinite(loss).all() and grad[0, 1] == 0

    def test_minus_inf_target_gives_inf(self, backend):
        loss, _ = self.check(np.array([[1.0, -np.inf, 0.5]]), np.array([1]))
        assert loss[0] == np.inf

    def test_nan_stays_in_its_row(self, backend):
        logits = np.array([[1.0, np.nan, 0.5], [0.0, 1.0, 2.0]])
        loss, grad = self.check(logits, np.array([0, 1]), label_smoothing=0.1)
        assert np.isnan(loss[0]) and np.isfinite(loss[1]) and np.isfinite(grad[1]).all()

    @pytest.mark.parametrize("row", [[-np.inf] * 3, [np.inf, 0.0, 1.0], [1e308, -1e308, 0.0]])
    def test_extreme_rows(self, backend, row):
        self.check(np.array([row, [0.0, 1.0, 2.0]]), np.array([1, 2]))

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_large_logits_are_stable(self, backend, dtype):
        rng = np.random.default_rng(11)
        logits = (1e4 + 3 * rng.standard_normal((4, 50))).astype(dtype)
        target = rng.integers(0, 50, 4)
        expected = torch_cross_entropy(logits.astype(np.float64), target, reduction="none")
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
        np.testing.assert_allclose(loss, expected[0], rtol=1e-3 if dtype == np.float32 else 1e-9)
        assert np.isfinite(grad).all()


class TestReductionEdges:
    def test_all_ignored_mean_is_nan(self, backend):
        logits = np.zeros((3, 4))
        target = np.full(3, -100)
        expected = torch_cross_entropy(logits, target)
        loss, grad = fastxent.cross_entropy_and_grad(logits, target)
        assert np.isnan(loss) and np.isnan(expected[0])
        np.testing.assert_array_equal(grad, expected[1])
        assert fastxent.cross_entropy(logits, target, reduction="sum") == 0

    def test_empty_batch(self, backend):
        logits = np.zeros((0, 4))
        assert fastxent.cross_entropy(logits, np.zeros(0, dtype=np.int64), reduction="none").shape == (0,)
        assert np.isnan(fastxent.cross_entropy(logits, np.zeros(0, dtype=np.int64)))
        assert np.isnan(fastxent.cross_entropy(logits, np.zeros((0, 4))))

    def test_custom_ignore_index(self, backend):
        rng = np.random.default_rng(12)
        logits = make_logits(rng, (6, 4), np.float64)
        target = np.array([0, 3, 3, 1, 2, 3])
        expected = torch_cross_entropy(logits, target, ignore_index=3, label_smoothing=0.3)
        actual = fastxent.cross_entropy_and_grad(logits, target, ignore_index=3, label_smoothing=0.3)
        assert_close(actual[0], expected[0], np.float64)
        assert_close(actual[1], expected[1], np.float64)

    def test_scalar_results_are_numpy_scalars(self, backend):
        loss = fastxent.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 1]))
        assert isinstance(loss, np.float32)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_softcap_slope_far_in_the_tail(backend, kind):
    """|x| >> softcap: a float32 tanh rounds to 1 and 1 - tanh**2 cancels; the slope needs float64."""
    logits = np.array([[46.0, -40.0, 3.0]], dtype=np.float32)
    target = np.array([0]) if kind == "index" else np.array([[0.2, 0.3, 0.5]], dtype=np.float32)
    kwargs = dict(reduction="none", z_loss=1.0, softcap=5.0)
    _, grad = fastxent.cross_entropy_and_grad(logits, target, **kwargs)
    expected = torch_cross_entropy(
        logits.astype(np.float64), target.astype(np.float64) if kind == "probs" else target, **kwargs
    )[1]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
