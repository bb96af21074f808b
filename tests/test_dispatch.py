"""Backend selection, thread settings, configuration report and the test-session gate."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastxent
from fastxent import _dispatch, _threads

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120, cwd=ROOT
    )


def test_numpy_is_always_available():
    assert "numpy" in fastxent.available_backends()
    assert fastxent.available_backends()[-1] == "numpy"


def test_use_backend_restores_previous_choice(backend):
    with fastxent.use_backend("numpy") as name:
        assert name == fastxent.get_backend() == "numpy"
    assert fastxent.get_backend() == backend


def test_use_backend_is_local_to_its_thread():
    seen: list[str] = []
    outside = fastxent.get_backend()
    with fastxent.use_backend("numpy"):
        worker = threading.Thread(target=lambda: seen.append(fastxent.get_backend()))
        worker.start()
        worker.join()
    assert seen == [outside]


def test_set_backend_is_process_wide(monkeypatch):
    monkeypatch.setattr(_dispatch, "_process_choice", None)
    fastxent.set_backend("numpy")
    seen: list[str] = []
    worker = threading.Thread(target=lambda: seen.append(fastxent.get_backend()))
    worker.start()
    worker.join()
    assert seen == ["numpy"]
    fastxent.set_backend("auto")
    assert fastxent.get_backend() == fastxent.available_backends()[0]


def test_backend_choice_is_the_name_in_force_and_loads_nothing(monkeypatch):
    """What a Dask graph sends to its workers: the choice, ``auto`` unresolved, with no backend imported."""
    monkeypatch.setattr(_dispatch, "_process_choice", None)
    monkeypatch.setattr(_dispatch, "_ENV_BACKEND", "auto")
    monkeypatch.setattr(_dispatch, "_load", lambda name: pytest.fail(f"backend_choice loaded {name}"))
    assert _dispatch.backend_choice() == "auto"
    monkeypatch.setattr(_dispatch, "_ENV_BACKEND", "Cython")
    assert _dispatch.backend_choice() == "cython"
    monkeypatch.setattr(_dispatch, "_process_choice", "numba")
    assert _dispatch.backend_choice() == "numba"
    token = _dispatch._context_choice.set("numpy")
    try:
        assert _dispatch.backend_choice() == "numpy"
    finally:
        _dispatch._context_choice.reset(token)


@pytest.mark.parametrize("bad", ["tensorflow", "", None, 3])
def test_unknown_backend_lists_valid_and_available(bad):
    with pytest.raises(ValueError, match=r"name must be one of auto, .*numpy; got .*available here: .*numpy"):
        fastxent.set_backend(bad)
    with pytest.raises(ValueError, match="name must be one of"), fastxent.use_backend(bad):
        pass


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setitem(_dispatch.BACKEND_MODULES, "broken", "fastxent._no_such_module")
    monkeypatch.setattr(_dispatch, "_VALID_NAMES", (*_dispatch._VALID_NAMES, "broken"))
    monkeypatch.setattr(_dispatch, "_load_errors", dict(_dispatch._load_errors))
    with pytest.raises(fastxent.BackendUnavailableError, match=r"broken backend is unavailable.*ModuleNotFoundError"):
        fastxent.set_backend("broken")


def test_environment_variable_selects_backend():
    result = run_python("import fastxent; print(fastxent.get_backend())", FASTXENT_BACKEND="numpy")
    assert result.stdout.strip() == "numpy", result.stderr


def test_bad_environment_variable_fails_on_first_use_not_import():
    code = "import fastxent, numpy as np\nprint('imported')\nfastxent.softmax(np.zeros(3))"
    result = run_python(code, FASTXENT_BACKEND="fastest")
    assert "imported" in result.stdout
    assert "FASTXENT_BACKEND must be one of auto" in result.stderr and "got 'fastest'" in result.stderr


class TestThreads:
    def test_set_and_get(self, monkeypatch):
        monkeypatch.setattr(_threads, "_process_threads", None)
        fastxent.set_num_threads(1)
        assert fastxent.get_num_threads() == 1

    @pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
    def test_bad_values(self, bad):
        with pytest.raises(ValueError, match=f"n must be an integer >= 1; got {bad!r}"):
            fastxent.set_num_threads(bad)

    def test_environment_variable(self):
        result = run_python("import fastxent; print(fastxent.get_num_threads())", FASTXENT_NUM_THREADS="3")
        assert result.stdout.strip() == "3", result.stderr

    @pytest.mark.parametrize("bad", ["0", "many"])
    def test_bad_environment_variable(self, bad):
        result = run_python("import fastxent; fastxent.get_num_threads()", FASTXENT_NUM_THREADS=bad)
        assert f"FASTXENT_NUM_THREADS must be an integer >= 1; got {bad!r}" in result.stderr.replace('"', "'")

    # Both compiled backends run serially below 2**15 (Numba) and 2**13 (Cython) elements: these shapes are above both.
    # Short rows go lanes across rows in blocks of 8 (Cython): 4099 rows split unevenly between threads.
    @pytest.mark.parametrize(
        "shape", [(4096, 100), (4, 21, 64, 64), (4099, 10), (4097, 20)], ids=["2d", "class-axis-1", "short", "short-20"]
    )
    def test_results_do_not_depend_on_thread_count(self, backend, shape, monkeypatch):
        rng = np.random.default_rng(0)
        logits = rng.standard_normal(shape, dtype=np.float32)
        assert logits.size >= 2**15
        target = rng.integers(0, shape[1], shape[:1] + shape[2:])
        results = []
        for n in (1, 2, 3):
            monkeypatch.setattr(_threads, "_process_threads", n)
            per_row = fastxent.cross_entropy(logits, target, reduction="none")
            loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="sum")
            results.append((per_row, loss, grad))
        for per_row, loss, grad in results[1:]:
            np.testing.assert_array_equal(per_row, results[0][0])
            assert loss == results[0][1]
            np.testing.assert_array_equal(grad, results[0][2])


def test_show_config_lists_every_backend(capsys):
    fastxent.show_config()
    printed = capsys.readouterr().out
    for name in _dispatch.BACKEND_MODULES:
        assert f"  {name}" in printed
    assert "selected" in printed and "threads" in printed


def test_info_command():
    result = subprocess.run(
        [sys.executable, "-m", "fastxent", "info"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "backends:" in result.stdout and "numpy   available" in result.stdout


def test_required_backend_missing_fails_the_session(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_nothing():\n    pass\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            "-c",
            str(ROOT / "pyproject.toml"),
            "--confcutdir",
            str(ROOT / "tests"),
            str(ROOT / "tests" / "test_dispatch.py::test_numpy_is_always_available"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "FASTXENT_REQUIRE_BACKENDS": "numpy,imaginary"},
    )
    assert result.returncode != 0
    assert "FASTXENT_REQUIRE_BACKENDS asks for imaginary" in result.stdout + result.stderr


def test_auto_without_an_input_is_the_fallback_order(monkeypatch):
    monkeypatch.setattr(_dispatch, "_process_choice", "auto")
    available = fastxent.available_backends()
    assert fastxent.get_backend() == next(name for name in _dispatch.AUTO_ORDER if name in available)


def test_cython_build_is_the_expected_variant():
    """CI builds the extension with and without OpenMP and says which it expects."""
    expected = os.environ.get("FASTXENT_EXPECT_OPENMP")
    if "cython" not in fastxent.available_backends():
        pytest.skip("the Cython backend is not built (FASTXENT_REQUIRE_BACKENDS guards CI)")
    from fastxent._backends import cython_backend

    if expected is not None:
        assert cython_backend.OPENMP == (expected == "1")
    assert f"OpenMP {'on' if cython_backend.OPENMP else 'off'}" in "\n".join(fastxent._config.config_lines())


class TestCallDependentChoice:
    def test_get_backend_names_the_backend_of_a_given_input(self, monkeypatch):
        """Each call's backend is the table's for its shape class, found from the array (or its size)."""
        from fastxent._backends import _auto

        monkeypatch.setattr(_dispatch, "_process_choice", "auto")
        monkeypatch.setattr(_dispatch, "_jit_started", True)
        available = fastxent.available_backends()
        grid = np.zeros((4, 3, 100, 100))
        cases = [
            (np.zeros((128, 10), np.float32), {}, ("float32", "loss", "rows", 10, "small")),
            (grid, {"operation": "loss+grad"}, ("float64", "loss+grad", "planes", 2, "medium")),
            (grid, {"operation": "softmax"}, ("float64", "softmax", "rows", 100, "medium")),
            (grid, {"operation": "softmax", "axis": 1}, ("float64", "softmax", "planes", 2, "medium")),
            (grid, {"operation": "softmax", "axis": None}, ("float64", "softmax", "rows", 32000, "medium")),
            (grid, {"operation": "logsumexp", "axis": (0, 2)}, ("float64", "logsumexp", "rows", 1000, "medium")),
            (np.zeros(5000, np.float16), {"operation": "logsumexp"}, ("float32", "logsumexp", "rows", 8192, "small")),
            (2**21, {}, ("float32", "loss", "rows", 32000, "large")),
        ]
        for input, options, key in cases:
            axis = options.get("axis", _dispatch._DEFAULT_AXIS)
            assert _dispatch._key_of(input, None, options.get("operation", "loss"), axis) == key
            expected = next(name for name in (_auto.measured_choice(key), *_dispatch.AUTO_ORDER) if name in available)
            assert fastxent.get_backend(input, **options) == expected, (key, options)
        assert fastxent.get_backend(size=2**21) == fastxent.get_backend(2**21)
        with pytest.raises(ValueError, match=r"operation must be one of loss, loss\+grad, .*; got 'grad'"):
            fastxent.get_backend(np.zeros(3), operation="grad")

    def test_the_named_backend_is_the_one_that_runs(self, monkeypatch):
        calls = []
        small = np.zeros((128, 10), np.float32)
        name = fastxent.get_backend(small)
        backend = _dispatch._loaded[name]
        original = backend.cross_entropy_index

        def spy(*args):
            calls.append(name)
            return original(*args)

        monkeypatch.setattr(backend, "cross_entropy_index", spy)
        monkeypatch.setattr(_dispatch, "_resolved", {})
        monkeypatch.setattr(_dispatch, "_by_call", {})
        fastxent.cross_entropy(small, np.zeros(128, np.int64))
        assert calls == [name]


class TestThreadCountCache:
    def test_default_is_worked_out_once_and_again_after_set_num_threads_none(self, monkeypatch):
        monkeypatch.setattr(_threads, "_process_threads", None)
        monkeypatch.setattr(_threads, "_ENV_THREADS", "")
        monkeypatch.setattr(_threads, "_default_threads", None)
        reads = []
        monkeypatch.setattr(_threads, "_usable_cpus", lambda: reads.append(1) or 2)
        assert fastxent.get_num_threads() == 2 and fastxent.get_num_threads() == 2
        assert len(reads) == 1
        monkeypatch.setattr(_threads, "_usable_cpus", lambda: 1)
        assert fastxent.get_num_threads() == 2
        fastxent.set_num_threads(None)
        assert fastxent.get_num_threads() == 1

    def test_a_forked_child_works_the_default_out_again(self):
        code = (
            "import os, fastxent\n"
            "from fastxent import _threads\n"
            "fastxent.get_num_threads()\n"
            "assert _threads._default_threads is not None\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(0 if _threads._default_threads is None else 3)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "print(os.waitstatus_to_exitcode(status))\n"
        )
        result = run_python(code)
        assert result.stdout.strip() == "0", result.stderr
