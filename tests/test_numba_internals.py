"""The Numba backend's building blocks: exp and log1p accuracy, NaN-safe max, vectorised machine code."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the Numba backend is not installed")  # FASTXENT_REQUIRE_BACKENDS guards CI

from numba import njit

from fastxent._backends.numba_backend import _rows, _tiles
from fastxent._backends.numba_backend._simd import fast_exp, log1p_f64, typed, vector_max
from fastxent._config import cpu_simd_features


@njit(fastmath=_rows.FAST)
def _exp_all(x, out):  # type: ignore[no-untyped-def]
    for i in range(x.size):
        out[i] = fast_exp(x[i])


@njit(fastmath=_rows.FAST)
def _sum_exp(x, shift):  # type: ignore[no-untyped-def]
    total = typed(x, 0.0)
    for i in range(x.size):
        total += fast_exp(x[i] - shift)
    return total


@njit(fastmath=_rows.FAST)
def _log1p_all(x, out):  # type: ignore[no-untyped-def]
    for i in range(x.size):
        out[i] = log1p_f64(x[i])


@njit(fastmath=_rows.FAST)
def _online_sweep(x, run, part):  # type: ignore[no-untyped-def]
    _tiles._online_classes(x, 0, 0, x.shape[2], 1, x.shape[1], 0.0, run, part)


@njit
def _max(x):  # type: ignore[no-untyped-def]
    return vector_max(x)


def ulps(actual: np.ndarray, expected: np.ndarray, dtype: type) -> np.ndarray:
    spacing = np.spacing(np.abs(expected).astype(dtype)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - expected) / spacing


@pytest.mark.parametrize(
    ("dtype", "low", "exact_ulps", "numpy_ulps"), [(np.float32, -87.3, 2.0, 3.0), (np.float64, -708.3, 1.0, 1.0)]
)
def test_exp_accuracy(dtype, low, exact_ulps, numpy_ulps):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(low, 0, 400_001), -rng.exponential(5, 200_000)]).astype(dtype)
    x = x[x >= low]
    out = np.empty_like(x)
    _exp_all(x, out)
    exact = np.exp(x.astype(np.float64)) if dtype == np.float32 else np.exp(x)
    assert ulps(out, exact, dtype).max() <= exact_ulps
    # NumPy's float32 exp is itself up to ~2.45 ulp from exact, so the two may differ by 3.
    assert ulps(out, np.exp(x).astype(np.float64), dtype).max() <= numpy_ulps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(dtype):
    x = np.array([-np.inf, np.nan, 0.0, -0.0, -1e4, -1e30], dtype=dtype)
    out = np.empty_like(x)
    _exp_all(x, out)
    np.testing.assert_array_equal(out, [0.0, np.nan, 1.0, 1.0, 0.0, 0.0])


def test_log1p_accuracy():
    """S' of a tile's positions spans [0, C - 1] and, where one class dominates, down to the smallest double."""
    rng = np.random.default_rng(2)
    s = np.concatenate(
        [np.geomspace(1e-300, 1e300, 200_001), rng.uniform(0, 1, 100_000), rng.uniform(0, 1000, 100_000)]
    )
    s = np.concatenate([s, -rng.uniform(0, 1, 10_000), [0.4142135623730951, 2**-52, 1e-20]])
    out = np.empty_like(s)
    _log1p_all(s, out)
    exact = np.log1p(s.astype(np.longdouble))
    ulps = np.abs(out.astype(np.longdouble) - exact) / np.spacing(np.abs(exact).astype(np.float64))
    # Measured: 1.25 ulps at most (libm's log1p: under 1).
    assert ulps.max() <= 1.5


def test_log1p_special_values():
    s = np.array([-1.0, 0.0, np.inf, np.nan, 5e-324])
    out = np.empty_like(s)
    _log1p_all(s, out)
    np.testing.assert_array_equal(out, [-np.inf, 0.0, np.inf, np.nan, 5e-324])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_max(dtype):
    x = np.random.default_rng(1).standard_normal(1001).astype(dtype)
    assert _max(x) == x.max()
    assert _max(np.full(7, -np.inf, dtype)) == -np.inf
    assert _max(np.zeros(0, dtype)) == -np.inf
    y = x.copy()
    y[500] = np.inf
    assert _max(y) == np.inf
    y[3] = np.nan
    assert np.isnan(_max(y))


def _wide(line: str) -> bool:
    """An instruction on 256- or 512-bit registers (LLVM takes AVX-512 where the CPU has it)."""
    return "ymm" in line or "zmm" in line


def test_hot_loops_are_vectorised():
    if "avx2" not in cpu_simd_features():
        pytest.skip("the AVX2 check needs an AVX2 CPU")
    x = np.zeros(64, np.float32)
    _sum_exp(x, np.float32(0.0))
    _max(x)
    exp_lines = _sum_exp.inspect_asm(_sum_exp.signatures[0]).splitlines()
    # The polynomial exp is inlined into the loop as 8-lane FMAs, not called per element.
    assert any("vfmadd" in line and _wide(line) for line in exp_lines)
    assert not any("call" in line and "exp" in line.lower() for line in exp_lines)
    _log1p_all(np.zeros(64), np.zeros(64))
    log1p_lines = _log1p_all.inspect_asm(_log1p_all.signatures[0]).splitlines()
    # The tiles' log1p of S' (one per position): 4-lane divisions and no libm call.
    assert any("vdivpd" in line and _wide(line) for line in log1p_lines)
    assert not any("call" in line and "log" in line.lower() for line in log1p_lines)
    max_asm = _max.inspect_asm(_max.signatures[0])
    assert any("vpmaxsd" in line and _wide(line) for line in max_asm.splitlines())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_sweep_is_vectorised(dtype):
    """The tiles' online sweep: vector FMAs, no libm call, plain stores."""
    if "avx2" not in cpu_simd_features():
        pytest.skip("the AVX2 check needs an AVX2 CPU")
    x = np.zeros((1, 20, 64), dtype)
    _online_sweep(x, np.zeros(64, dtype), np.zeros(64, dtype))
    lines = _online_sweep.inspect_asm(_online_sweep.signatures[0]).splitlines()
    assert any("vfmadd" in line and _wide(line) for line in lines)
    assert not any("call" in line and "exp" in line.lower() for line in lines)
    # The running maximum once became a masked store (vmaskmov), which Zen microcodes: 2x slower.
    assert not any("maskmov" in line for line in lines)


def test_cache_entries_are_stamped_with_the_whole_package():
    # A kernel inlines helpers from other files (_simd.py into _rows.py): a change to any of them must miss the cache.
    from fastxent._backends.numba_backend import _cache

    locator = _rows.row_store_exp._cache._impl.locator
    assert type(locator).__name__.startswith("PackageStamped")
    assert locator.get_source_stamp()[1] == _cache.PACKAGE_STAMP
    assert _cache.PACKAGE_STAMP == _cache._package_hash()
