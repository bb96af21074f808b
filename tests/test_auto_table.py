"""``auto``'s measured table: its shape classes, its contents, and that calls follow it."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import fastxent
from fastxent import _auto_measure, _dispatch
from fastxent._backends import AUTO_ORDER, _auto


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


@pytest.mark.parametrize("level", sorted(_auto.TABLE_MODULES))
def test_each_committed_table_covers_every_class_and_names_its_measured_winner(level):
    """Every class with a sample is measured, for every operation; each winner is what pick() makes of its
    numbers (so an entry edited by hand, or a table from an older layout of the classes, fails here)."""
    table = importlib.import_module(_auto.TABLE_MODULES[level]).TABLE
    expected = {
        (dtype, operation, layout, n_classes, _auto.SIZE_NAMES[size_index])
        for dtype, layout, n_classes, size_index, _ in _auto_measure.classes(_auto.DTYPES)
        for operation in _auto.OPERATIONS
    }
    assert set(table) == expected
    for key, (winner, speeds) in table.items():
        assert set(speeds) == {"cython", "numba"}, key
        assert all(value > 0 for value in speeds.values()), key
        assert winner == _auto.pick(speeds, AUTO_ORDER), key


@pytest.mark.parametrize(
    ("features", "level"),
    [("+avx,+avx2,+fma", "avx2"), ("+avx2,+fma,+avx512f", "avx512"), ("+avx,+avx2", None), ("", None)],
)
def test_the_table_follows_the_simd_level_numba_compiles_for(monkeypatch, features, level):
    monkeypatch.setenv("NUMBA_CPU_FEATURES", features)
    assert _auto.simd_level() == level


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
    monkeypatch.setattr(_dispatch, "_held_back", {})
    monkeypatch.setattr(_dispatch, "_jit_started", True)
    return monkeypatch


def _needs(*names):
    missing = [name for name in names if name not in fastxent.available_backends()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not available (FASTXENT_REQUIRE_BACKENDS guards CI)")


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


def _operation_calls(x, target):
    """The public call of each operation of the table, on ``x`` (class axis 1 for the losses, last else)."""
    return {
        "loss": lambda: fastxent.cross_entropy(x, target),
        "loss+grad": lambda: fastxent.cross_entropy_and_grad(x, target),
        "softmax": lambda: fastxent.softmax(x),
        "log_softmax": lambda: fastxent.log_softmax(x),
        "logsumexp": lambda: fastxent.logsumexp(x, axis=-1),
    }


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
        "log_softmax": (("float32", "log_softmax", "rows", 10, "small"), "log_softmax", -1),
        "logsumexp": (("float32", "logsumexp", "rows", 10, "small"), "logsumexp", -1),
    }
    calls = _operation_calls(x, target)
    other = next(name for name in (*AUTO_ORDER, "numpy") if name != table_winner and name in available)
    for operation, (key, kernel, axis) in keys.items():
        # The operation's own class names table_winner; every other operation's class names another backend.
        table = {other_key: (other, {}) for other_key, _, _ in keys.values()}
        table[key] = (table_winner, {})
        auto_choice.setattr(_auto, "_table", table)
        auto_choice.setattr(_dispatch, "_by_call", {})
        assert fastxent.get_backend(x, operation=operation, axis=axis) == table_winner
        assert _runs_on(auto_choice, calls[operation], [kernel]) == [table_winner], operation


def test_an_unavailable_winner_falls_back_to_the_auto_order(auto_choice):
    key = ("float32", "loss", "rows", 10, "small")
    auto_choice.setattr(_auto, "_table", {key: ("imaginary", {})})
    available = fastxent.available_backends()
    assert fastxent.get_backend(np.zeros((8, 10), np.float32)) == next(n for n in AUTO_ORDER if n in available)


def test_the_report_says_how_auto_chooses(auto_choice):
    lines = "\n".join(fastxent._config.config_lines())
    assert "selected auto: per call, from a table measured by shape class for " in lines
    assert f"of {len(_auto.table())} classes" in lines


def test_a_jit_pick_waits_until_its_savings_would_pay_for_the_start_up(auto_choice):
    """With Numba not started, calls its class would give it run on the fallback and count what Numba
    would have saved; once that reaches AUTO_JIT_AFTER_SECONDS, Numba starts and takes the class."""
    _needs("numba", "cython")
    x = np.zeros((64, 1000), np.float32)
    key = ("float32", "loss", "rows", 1000, "small")
    # 1 GB/s against 2 GB/s: each call of 256 KB would save 128 µs.
    auto_choice.setattr(_auto, "_table", {key: ("numba", {"cython": 1.0, "numba": 2.0})})
    auto_choice.setattr(_dispatch, "_jit_started", False)
    auto_choice.setattr(_dispatch, "_jit_saving", 0.0)
    auto_choice.setattr(_dispatch, "AUTO_JIT_AFTER_SECONDS", 2.5 * x.nbytes / 2e9)
    target = np.zeros(64, np.int64)
    fastxent.available_backends()  # loading a backend does not start it
    for expected in ("cython", "cython", "cython", "numba", "numba"):
        assert fastxent.get_backend(x) == expected
        ran = _runs_on(auto_choice, lambda: fastxent.cross_entropy(x, target), ["cross_entropy_index"])
        assert ran == [expected]
    assert _dispatch._jit_saving == pytest.approx(3 * x.nbytes / 2e9)


def test_a_call_that_names_numba_starts_it_for_auto(auto_choice):
    _needs("numba", "cython")
    x = np.zeros((64, 1000), np.float32)
    target = np.zeros(64, np.int64)
    key = ("float32", "loss", "rows", 1000, "small")
    auto_choice.setattr(_auto, "_table", {key: ("numba", {"cython": 1.0, "numba": 2.0})})
    auto_choice.setattr(_dispatch, "_jit_started", False)
    auto_choice.setattr(_dispatch, "_resolved", {})
    call = lambda: fastxent.cross_entropy(x, target)  # noqa: E731
    assert _runs_on(auto_choice, call, ["cross_entropy_index"]) == ["cython"]
    with fastxent.use_backend("numpy"):
        assert _runs_on(auto_choice, call, ["cross_entropy_index"]) == ["numpy"]
    assert _runs_on(auto_choice, call, ["cross_entropy_index"]) == ["cython"]
    with fastxent.use_backend("numba"):
        assert _runs_on(auto_choice, call, ["cross_entropy_index"]) == ["numba"]
    assert _runs_on(auto_choice, call, ["cross_entropy_index"]) == ["numba"]


def test_every_call_site_names_an_operation_of_the_table(auto_choice):
    """Each public function looks auto up under its own operation (a typo would fall back silently)."""
    seen = []
    original = _auto.table_key

    def recording(dtype, operation, *args):
        seen.append(operation)
        return original(dtype, operation, *args)

    auto_choice.setattr(_auto, "table_key", recording)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    hidden, weight = rng.standard_normal((6, 3)), rng.standard_normal((5, 3))
    calls = {
        **_operation_calls(x, labels),
        "tf loss": lambda: fastxent.sparse_softmax_cross_entropy_with_logits(labels, x),
        "linear loss": lambda: fastxent.linear_cross_entropy(hidden, weight, labels),
        "linear loss+grad": lambda: fastxent.linear_cross_entropy_and_grad(hidden, weight, labels),
    }
    for name, call in calls.items():
        seen.clear()
        auto_choice.setattr(_dispatch, "_by_call", {})
        call()
        assert seen and set(seen) <= set(_auto.OPERATIONS), name
        assert seen[0] == name.split()[-1], (name, seen)


def test_a_one_off_call_never_starts_numba():
    """A short script gets its result without waiting for the compiler, even where Numba is the table's
    pick, and even after something loaded the Numba backend (show_config does)."""
    import os
    import subprocess
    import sys

    _needs("numba", "cython")
    code = (
        "import sys, numpy as np, fastxent\n"
        "from fastxent._backends import _auto\n"
        "key = ('float32', 'loss', 'rows', 1000, 'huge')\n"
        "_auto._table = {key: ('numba', {'cython': 1.0, 'numba': 2.0})}\n"
        "x, y = np.zeros((8192, 1000), np.float32), np.zeros(8192, np.int64)\n"
        "fastxent.cross_entropy(x, y)\n"
        "print(fastxent.get_backend(x), 'numba' in sys.modules)\n"
        "fastxent.show_config(open('/dev/null', 'w'))\n"
        "from fastxent._backends.numba_backend import BACKEND\n"
        "BACKEND.cross_entropy_index = None  # a call that reached Numba would fail\n"
        "fastxent.cross_entropy(x, y)\n"
        "print(fastxent.get_backend(x))\n"
    )
    environment = {**os.environ, "FASTXENT_BACKEND": "auto"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=environment
    )
    assert result.stdout.split() == ["cython", "False", "cython"]
