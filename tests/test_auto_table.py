"""``auto``'s measured table: its shape classes, its contents, and that calls follow it."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from fastxent import _auto_measure, _dispatch
from fastxent._backends import AUTO_ORDER, _auto, _auto_table


@pytest.mark.parametrize(
    ("dtype", "n_classes", "positions", "size", "expected"),
    [
        ("float64", 1, 1, 10, ("rows", 2, "small")),
        ("float64", 4, 1, (1 << 15) - 1, ("rows", 2, "small")),
        ("float64", 5, 1, 1 << 15, ("rows", 10, "medium")),
        ("float32", 5, 1, 1 << 15, ("rows", 10, "small")),
        ("float64", 32, 2, (1 << 19) - 1, ("tiles", 32, "medium")),
        ("float64", 33, 1, 1 << 19, ("rows", 100, "large")),
        ("float64", 1024, 7, (1 << 21) - 1, ("tiles", 1000, "large")),
        ("float64", 1024, 7, 1 << 21, ("tiles", 1000, "huge")),
        ("float32", 1000, 1, 4096 * 1000, ("rows", 1000, "large")),
        ("float32", 1000, 1, 8192 * 1000, ("rows", 1000, "huge")),
        ("float64", 3, 4095, 1 << 14, ("tiles", 2, "small")),
        ("float64", 3, 4096, 1 << 14, ("planes", 2, "small")),
        ("float32", 21, 65536, 8 * 21 * 65536, ("planes", 32, "huge")),
        ("float64", 1025, 1, 1 << 13, ("rows", 8192, "small")),
        ("float64", 8193, 1, 1 << 13, ("rows", 32000, "small")),
        ("float64", 128256, 1, 1 << 25, ("rows", 32000, "huge")),
    ],
)
def test_table_key_buckets(dtype, n_classes, positions, size, expected):
    """Classes and positions bucket by count, sizes by bytes (the caches see bytes)."""
    assert _auto.table_key(dtype, "softmax", n_classes, positions, size) == (dtype, "softmax", *expected)


def test_every_sample_shape_falls_in_its_own_class():
    samples = list(_auto_measure.classes(_auto.DTYPES))
    assert len(samples) > 120
    for dtype, layout, n_classes, size_index, shape in samples:
        positions = shape[2] if len(shape) == 3 else 1
        key = _auto.table_key(dtype, "loss", shape[1], positions, int(np.prod(shape)))
        assert key == (dtype, "loss", layout, n_classes, _auto.SIZE_NAMES[size_index]), shape


def test_the_committed_table_covers_every_class_and_names_its_measured_winner():
    """Every class with a sample is measured, for every operation; each winner is what pick() makes of its
    numbers (so an entry edited by hand, or a table from an older layout of the classes, fails here)."""
    expected = {
        (dtype, operation, layout, n_classes, _auto.SIZE_NAMES[size_index])
        for dtype, layout, n_classes, size_index, _ in _auto_measure.classes(_auto.DTYPES)
        for operation in _auto.OPERATIONS
    }
    assert set(_auto_table.TABLE) == expected
    for key, (winner, speeds) in _auto_table.TABLE.items():
        assert set(speeds) == {"cython", "numba"}, key
        assert all(value > 0 for value in speeds.values()), key
        assert winner == _auto.pick(speeds, AUTO_ORDER), key


def test_pick_keeps_the_preferred_backend_unless_another_is_clearly_faster():
    order = ("cython", "numba", "numpy")
    assert _auto.pick({"cython": 1.0, "numba": 1.04}, order) == "cython"
    assert _auto.pick({"cython": 1.0, "numba": 1.06}, order) == "numba"
    assert _auto.pick({"cython": 2.0, "numba": 1.0}, order) == "cython"
    assert _auto.pick({"numba": 1.0, "numpy": 3.0}, order) == "numpy"


@pytest.fixture
def auto_choice(monkeypatch):
    """``auto`` in force, with no choice remembered from before the test."""
    monkeypatch.setattr(_dispatch, "_process_choice", "auto")
    monkeypatch.setattr(_dispatch, "_resolved", {})
    monkeypatch.setattr(_dispatch, "_by_call", {})
    return monkeypatch


def _runs_on(monkeypatch, call, kernels, backends=None):
    """Names of the backends (by default every available one) whose ``kernels`` run during ``call()``."""
    ran = []
    if backends is None:
        backends = {name: _dispatch._loaded[name] for name in fastxent.available_backends()}
    for name, backend in backends.items():
        for kernel in kernels:
            original = getattr(backend, kernel)

            def spy(*args, _original=original, _name=name):
                ran.append(_name)
                return _original(*args)

            monkeypatch.setattr(backend, kernel, spy)
    call()
    return ran


@pytest.mark.parametrize("table_winner", ["numba", "cython", "numpy"])
def test_calls_run_on_the_backend_the_table_names(auto_choice, table_winner):
    """Each operation's call follows the table for its own class (the loss and its gradient apart)."""
    available = fastxent.available_backends()
    if table_winner not in available:
        pytest.skip(f"{table_winner} is not available (FASTXENT_REQUIRE_BACKENDS guards CI)")
    x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    target = np.zeros((3, 7), np.int64)
    keys = {
        "loss": (("float32", "loss", "tiles", 10, "small"), "cross_entropy_index", 1),
        "loss+grad": (("float32", "loss+grad", "tiles", 10, "small"), "cross_entropy_index", 1),
        "softmax": (("float32", "softmax", "rows", 10, "small"), "softmax", -1),
        "logsumexp": (("float32", "logsumexp", "rows", 10, "small"), "logsumexp", -1),
    }
    calls = {
        "loss": lambda: fastxent.cross_entropy(x, target),
        "loss+grad": lambda: fastxent.cross_entropy_and_grad(x, target),
        "softmax": lambda: fastxent.softmax(x),
        "logsumexp": lambda: fastxent.logsumexp(x, axis=-1),
    }
    other = next(name for name in (*AUTO_ORDER, "numpy") if name != table_winner and name in available)
    for operation, (key, kernel, axis) in keys.items():
        # The operation's own class names table_winner; every other operation's class names another backend.
        table = {other_key: (other, {}) for other_key, _, _ in keys.values()}
        table[key] = (table_winner, {})
        auto_choice.setattr(_auto_table, "TABLE", table)
        auto_choice.setattr(_dispatch, "_by_call", {})
        assert fastxent.get_backend(x, operation=operation, axis=axis) == table_winner
        assert _runs_on(auto_choice, calls[operation], [kernel]) == [table_winner], operation


def test_an_unavailable_winner_falls_back_to_the_auto_order(auto_choice):
    key = ("float32", "loss", "rows", 10, "small")
    auto_choice.setattr(_auto_table, "TABLE", {key: ("imaginary", {})})
    available = fastxent.available_backends()
    assert fastxent.get_backend(np.zeros((8, 10), np.float32)) == next(n for n in AUTO_ORDER if n in available)


def test_the_report_says_how_auto_chooses(auto_choice):
    lines = "\n".join(fastxent._config.config_lines())
    assert "selected auto: per call, from a table measured by shape class" in lines
    assert f"of {len(_auto_table.TABLE)} classes" in lines


def test_a_jit_pick_waits_until_its_savings_would_pay_for_the_start_up(auto_choice):
    """With Numba not started, calls its class would give it run on the fallback and count what Numba
    would have saved; once that reaches AUTO_JIT_AFTER_SECONDS, Numba starts and takes the class."""
    if "numba" not in fastxent.available_backends():
        pytest.skip("numba is not available (FASTXENT_REQUIRE_BACKENDS guards CI)")
    x = np.zeros((64, 1000), np.float32)
    key = ("float32", "loss", "rows", 1000, "small")
    fallback = next(name for name in AUTO_ORDER if name != "numba" and name in fastxent.available_backends())
    backends = dict(_dispatch._loaded)
    # 1 GB/s against 2 GB/s: each call of 256 KB would save 128 µs.
    auto_choice.setattr(_auto_table, "TABLE", {key: ("numba", {"cython": 1.0, "numba": 2.0})})
    auto_choice.setattr(_dispatch, "_loaded", {k: v for k, v in _dispatch._loaded.items() if k != "numba"})
    auto_choice.setattr(_dispatch, "_jit_saving", 0.0)
    auto_choice.setattr(_dispatch, "AUTO_JIT_AFTER_SECONDS", 2.5 * x.nbytes / 2e9)
    target = np.zeros(64, np.int64)
    for expected in (fallback, fallback, fallback, "numba", "numba"):
        assert fastxent.get_backend(x) == expected
        ran = _runs_on(auto_choice, lambda: fastxent.cross_entropy(x, target), ["cross_entropy_index"], backends)
        assert ran == [expected]
    assert _dispatch._jit_saving == pytest.approx(3 * x.nbytes / 2e9)


def test_a_one_off_call_never_starts_numba():
    """A short script gets its result without waiting for the compiler, even where Numba is the table's pick."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, fastxent\n"
        "from fastxent._backends import _auto_table\n"
        "key = ('float32', 'loss', 'rows', 1000, 'large')\n"
        "_auto_table.TABLE[key] = ('numba', {'cython': 1.0, 'numba': 2.0})\n"
        "x = np.zeros((2048, 1000), np.float32)\n"
        "fastxent.cross_entropy(x, np.zeros(2048, np.int64))\n"
        "print(fastxent.get_backend(x), 'numba' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    fallback = next(name for name in AUTO_ORDER if name != "numba" and name in fastxent.available_backends())
    assert result.stdout.split() == [fallback, "False"]
