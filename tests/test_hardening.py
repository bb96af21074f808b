"""Attacks on inputs: layouts, extreme values, hostile arguments, every backend.

Each result is compared with the NumPy reference (and torch where their
semantics overlap), and every input is checked to be unmodified.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from peers import torch_cross_entropy

import fastxent


def reference(function, *args, **kwargs):  # type: ignore[no-untyped-def]
    with fastxent.use_backend("numpy"):
        return function(*args, **kwargs)


def assert_same_as_reference(function, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    snapshots = [np.array(a, copy=True) for a in args if isinstance(a, np.ndarray)]
    result = function(*args, **kwargs)
    expected = reference(function, *args, **kwargs)
    for got, want in zip(
        result if isinstance(result, tuple) else (result,), expected if isinstance(expected, tuple) else (expected,)
    ):
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                                   rtol=2e-5, atol=2e-6, equal_nan=True)  # fmt: skip
    for before, after in zip(snapshots, [a for a in args if isinstance(a, np.ndarray)]):
        np.testing.assert_array_equal(before, after)


def layouts(base: np.ndarray) -> dict[str, np.ndarray]:
    """The same values as ``base`` (2-D) in many memory layouts."""
    big = np.zeros((base.shape[0] * 2, base.shape[1] * 3), dtype=base.dtype)
    big[::2, ::3] = base
    reversed_ = np.ascontiguousarray(base[::-1, ::-1])[::-1, ::-1]
    unaligned_buffer = np.zeros(base.size * base.itemsize + 1, dtype=np.uint8)
    unaligned = unaligned_buffer[1:].view(base.dtype).reshape(base.shape)
    unaligned[...] = base
    read_only = base.copy()
    read_only.flags.writeable = False
    return {
        "C": base,
        "F": np.asfortranarray(base),
        "strided slice": big[::2, ::3],
        "negative strides": reversed_,
        "unaligned": unaligned,
        "read-only": read_only,
        "big-endian": base.astype(base.dtype.newbyteorder(">")),
    }


@pytest.mark.parametrize("layout", list(layouts(np.zeros((2, 2), np.float32))))
def test_memory_layouts(backend, layout):
    rng = np.random.default_rng(0)
    base = (3 * rng.standard_normal((7, 11))).astype(np.float32)
    logits = layouts(base)[layout]
    assert not logits.flags.aligned or layout != "unaligned"
    target = rng.integers(0, 11, 7)
    probs = np.abs(layouts(rng.random((7, 11)).astype(np.float32))[layout])
    assert_same_as_reference(fastxent.cross_entropy_and_grad, logits, target, reduction="none", label_smoothing=0.1)
    assert_same_as_reference(fastxent.cross_entropy_and_grad, logits, probs, reduction="sum")
    for function in (fastxent.softmax, fastxent.log_softmax, fastxent.logsumexp):
        assert_same_as_reference(function, logits, axis=0)
        assert_same_as_reference(function, logits, axis=1)


def test_memmap_input(backend, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "logits.dat"
    data = np.memmap(path, dtype=np.float32, mode="w+", shape=(50, 40))
    data[...] = rng.standard_normal((50, 40))
    data.flush()
    logits = np.memmap(path, dtype=np.float32, mode="r", shape=(50, 40))
    target = rng.integers(0, 40, 50)
    assert_same_as_reference(fastxent.cross_entropy_and_grad, logits, target)
    assert_same_as_reference(fastxent.softmax, logits)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "values",
    [
        [3e38, -3e38, 0.0, 1.0],
        [-3e38, -3e38, -3e38, -3e38],
        [1e-40, -1e-40, 0.0, 5e-45],
        [np.finfo(np.float32).tiny, 0.0, -np.finfo(np.float32).tiny, 1e-30],
        [-np.inf, -np.inf, -np.inf, -np.inf],
        [np.inf, -np.inf, 0.0, 1.0],
        [np.nan, 0.0, 1.0, 2.0],
        [1e4, -1e4, 1e4, -1e4],
    ],
)
def test_extreme_values_follow_torch(backend, dtype, values):
    logits = np.array([values, [0.5, 1.0, 1.5, 2.0]], dtype=dtype)
    for target in (np.array([0, 3]), np.array([2, 1])):
        expected = torch_cross_entropy(logits, target, reduction="none")
        loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
        np.testing.assert_allclose(loss, expected[0], rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(grad, expected[1], rtol=1e-5, atol=1e-6, equal_nan=True)
        # NaN only where the row itself holds a NaN or is degenerate: the second row is always finite.
        assert np.isfinite(loss[1]) and np.isfinite(grad[1]).all()
    t = torch.tensor(logits)
    np.testing.assert_allclose(
        fastxent.softmax(logits), torch.softmax(t, -1).numpy(), rtol=1e-5, atol=1e-30, equal_nan=True
    )
    np.testing.assert_allclose(fastxent.logsumexp(logits), torch.logsumexp(t, -1).numpy(), rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("where", ["first", "last", "random"])
@pytest.mark.parametrize("bad", [-1, 5, 2**40, -(2**40)])
def test_out_of_range_target_positions(backend, where, bad):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 5, 3))
    target = rng.integers(0, 5, (6, 3))
    position = {"first": (0, 0), "last": (5, 2), "random": (3, 1)}[where]
    target[position] = bad
    with pytest.raises(IndexError, match=rf"target value {bad} at position \({position[0]}, {position[1]}\)"):
        fastxent.cross_entropy_and_grad(logits, target)


@pytest.mark.parametrize("ignore_index", [2**62, -(2**62), 10**6])
def test_huge_ignore_index_is_just_a_value(backend, ignore_index):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4))
    target = np.array([0, 1, 2, 3, 0])
    expected = torch_cross_entropy(logits, target, ignore_index=ignore_index)
    loss, grad = fastxent.cross_entropy_and_grad(logits, target, ignore_index=ignore_index)
    np.testing.assert_allclose(loss, expected[0], rtol=1e-12)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-12, atol=1e-15)
    target[1] = ignore_index
    assert np.isfinite(fastxent.cross_entropy(logits, target, ignore_index=ignore_index))


@pytest.mark.parametrize("ignore_index", [2**63, -(2**63) - 1, 10**30])
def test_ignore_index_outside_int64_is_rejected(backend, ignore_index):
    with pytest.raises(ValueError, match="ignore_index must fit in a 64-bit integer"):
        fastxent.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), ignore_index=ignore_index)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ignore_index", [-100, -1, 3, 2**62])
def test_target_summary_matches_numpy(backend, dtype, ignore_index):
    """Each backend's count of valid and out-of-range targets (0/1 arithmetic, vectorised) and summed weight,
    against the NumPy version, with the extreme values of the dtype and an ignore_index that is a class."""
    from fastxent._backends._interface import index_target_stats
    from fastxent._dispatch import _load

    kernels = _load(backend)
    rng = np.random.default_rng(23)
    n_classes = 7
    target = rng.integers(-3, n_classes + 3, 1003).astype(dtype)
    limits = np.iinfo(dtype)
    target[5::101] = [limits.min, limits.max, -1, n_classes, 0, n_classes - 1, limits.min + 1, limits.max - 1, 1, 2]
    if ignore_index < limits.max:
        target[::97] = ignore_index
    for weight in (None, rng.random(n_classes).astype(np.float32), rng.random(n_classes)):
        for piece in (target, target[:1], target[:0], target[:17]):
            got = kernels.index_target_stats(piece.reshape(1, -1), weight, n_classes, ignore_index)
            want = index_target_stats(piece.reshape(1, -1), weight, n_classes, ignore_index)
            assert (got[0], got[2]) == (want[0], want[2])
            assert got[1] == pytest.approx(want[1], rel=1e-12)


def test_targets_of_int32_and_other_dtypes_with_ignore(backend):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((8, 6)).astype(np.float32)
    target = np.array([0, 5, -100, 2, 3, -100, 1, 4])
    expected = fastxent.cross_entropy_and_grad(logits, target)
    for dtype in (np.int32, np.int16, np.int8):
        got = fastxent.cross_entropy_and_grad(logits, target.astype(dtype))
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("n_classes", [1, 7, 8, 10, 16, 17, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_and_long_rows_with_special_values(backend, n_classes, dtype):
    """Row lengths on both sides of the short-row paths (Cython: <= 16 classes), with non-finite rows."""
    rng = np.random.default_rng(n_classes)
    logits = (rng.standard_normal((9, n_classes)) * 5).astype(dtype)
    logits[1] = -np.inf
    logits[2, -1] = np.inf
    logits[3, 0] = np.nan
    logits[4] = 1e4 + np.arange(n_classes)
    logits[5, : n_classes // 2] = -np.inf
    target = rng.integers(0, n_classes, 9)
    target[5] = n_classes - 1
    assert_same_as_reference(fastxent.cross_entropy_and_grad, logits, target, reduction="none")
    assert_same_as_reference(fastxent.cross_entropy, logits, target, reduction="none", label_smoothing=0.2)
    assert_same_as_reference(fastxent.logsumexp, logits)
    assert_same_as_reference(fastxent.softmax, logits)
    assert_same_as_reference(fastxent.log_softmax, logits)


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (3, 1), (1, 200_003), (2, 3, 0), (0, 3, 4)])
def test_degenerate_shapes(backend, shape):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(shape).astype(np.float32)
    index_shape = shape[:1] + shape[2:]
    target = rng.integers(0, max(shape[1], 1), index_shape) if shape[1] else np.full(index_shape, -100)
    assert_same_as_reference(fastxent.cross_entropy_and_grad, logits, target, reduction="none")
    assert_same_as_reference(fastxent.cross_entropy_and_grad, logits, target, reduction="sum", label_smoothing=0.3)
    assert_same_as_reference(fastxent.cross_entropy_and_grad, logits, np.ones(shape, np.float32), reduction="sum")
    assert_same_as_reference(
        fastxent.cross_entropy_and_grad, logits, np.ones(shape, np.float32), reduction="none", label_smoothing=0.3
    )
    for function in (fastxent.softmax, fastxent.log_softmax, fastxent.logsumexp):
        assert_same_as_reference(function, logits, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("compiled", ["numba", "cython"])
def test_more_than_two_to_the_31_elements(compiled):
    """Two rows of 2**30 + 1024 float32 (8.6 GB): every index needs 64 bits.

    Each row repeats a 1024-value pattern, so the exact log-sum-exp is
    ``logsumexp(pattern) + log(repeats)`` and nothing else has to be allocated.
    """
    if compiled not in fastxent.available_backends():
        pytest.skip(f"{compiled} is not available (FASTXENT_REQUIRE_BACKENDS guards CI)")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if memory < 20 * 2**30:
        pytest.skip(f"needs ~13 GB free of 20 GB of RAM; this machine has {memory / 2**30:.0f} GB")
    import scipy.special

    pattern = np.linspace(-3.0, 3.0, 1024, dtype=np.float32)
    repeats = 2**20 + 1
    logits = np.empty((2, 1024 * repeats), dtype=np.float32)
    assert logits.size > 2**31
    logits.reshape(-1, 1024)[...] = pattern
    target = np.array([5, logits.shape[1] - 1])
    lse = scipy.special.logsumexp(pattern.astype(np.float64)) + np.log(repeats)
    expected = lse - pattern[target % 1024].astype(np.float64)
    with fastxent.use_backend(compiled):
        loss = fastxent.cross_entropy(logits, target, reduction="none")
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        _, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none", inplace=True)
    assert grad is logits
    probs = np.exp(pattern.astype(np.float64) - lse)
    for row, y in enumerate(target):
        np.testing.assert_allclose(
            grad[row, [0, 1023, 2**31 // 2 + 17]], probs[[0, 1023, (2**31 // 2 + 17) % 1024]], rtol=1e-4
        )
        np.testing.assert_allclose(grad[row, y], probs[y % 1024] - 1, rtol=1e-4)
