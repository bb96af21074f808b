"""Programs around the kernels: forks, threads, thread counts, caches, import cost, accuracy at scale."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fastxent
from fastxent import _threads

ROOT = Path(__file__).resolve().parent.parent

# Large enough to take the parallel path of every backend.
BIG_SHAPE = (600, 300)


def big_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(BIG_SHAPE, dtype=np.float32) * 4, rng.integers(0, BIG_SHAPE[1], BIG_SHAPE[0])


def _loss_in_child(args: tuple[str, int]) -> np.ndarray:
    backend, seed = args
    logits, target = big_problem(seed)
    with fastxent.use_backend(backend):
        return fastxent.cross_entropy_and_grad(logits, target, reduction="none")[1]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_after_use_in_parent(backend, method):
    for name in fastxent.available_backends():  # the parent has used every backend, in parallel
        _loss_in_child((name, 99))
    expected = [_loss_in_child((backend, seed)) for seed in range(4)]
    context = multiprocessing.get_context(method)
    with context.Pool(2) as pool:
        results = pool.map_async(_loss_in_child, [(backend, seed) for seed in range(4)]).get(timeout=240)
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_concurrent_threads_give_serial_results(backend):
    problems = [big_problem(seed) for seed in range(8)]
    expected = [fastxent.cross_entropy_and_grad(x, t, reduction="none") for x, t in problems]

    def work(index: int) -> tuple[np.ndarray, np.ndarray]:
        x, t = problems[index % len(problems)]
        with fastxent.use_backend(backend):
            fastxent.softmax(x)
            fastxent.logsumexp(x)
            return fastxent.cross_entropy_and_grad(x, t, reduction="none")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(24)))
    for index, (loss, grad) in enumerate(results):
        np.testing.assert_array_equal(loss, expected[index % len(problems)][0])
        np.testing.assert_array_equal(grad, expected[index % len(problems)][1])


@pytest.mark.parametrize("layout", ["rows", "class_axis_1"])
def test_bitwise_identical_for_any_thread_count(backend, monkeypatch, layout):
    logits, target = big_problem(3)
    if layout == "class_axis_1":
        logits = np.ascontiguousarray(logits.reshape(6, 100, 300).transpose(0, 2, 1))
        target = target[:300].reshape(6, 50).repeat(2, axis=1) % 300
    outputs = []
    for n_threads in (1, 2, 3):
        monkeypatch.setattr(_threads, "_process_threads", n_threads)
        outputs.append(
            (
                fastxent.cross_entropy_and_grad(logits, target, reduction="none", label_smoothing=0.1),
                fastxent.softmax(logits, axis=1),
            )
        )
    for (loss, grad), probs in outputs[1:]:
        np.testing.assert_array_equal(loss, outputs[0][0][0])
        np.testing.assert_array_equal(grad, outputs[0][0][1])
        np.testing.assert_array_equal(probs, outputs[0][1])


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("layout", ["class axis last", "class axis 1"])
def test_float32_accuracy_at_a_million_classes(backend, scale, layout):
    rng = np.random.default_rng(7)
    n_classes = 1_000_000
    logits64 = rng.uniform(-scale, scale, (2, n_classes))
    target = np.array([int(np.argmax(logits64[0])), 12345])
    if layout == "class axis 1":
        logits64 = np.stack([logits64, logits64[::-1]], axis=-1)  # (2, C, 2): the tile kernels
        target = np.stack([target, target[::-1]], axis=-1)
    logits = logits64.astype(np.float32)
    loss, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="none")
    with fastxent.use_backend("numpy"):
        ref_loss, ref_grad = fastxent.cross_entropy_and_grad(logits.astype(np.float64), target, reduction="none")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-6)


def test_import_compiles_and_imports_nothing_heavy():
    code = "import sys, fastxent; print('numba' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_read_only_install_directory_still_works(tmp_path):
    pytest.importorskip("numba")
    install = tmp_path / "site"
    shutil.copytree(ROOT / "fastxent", install / "fastxent", ignore=shutil.ignore_patterns("__pycache__"))
    for path in sorted(install.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    (install).chmod(0o555)
    code = (
        "import numpy as np, fastxent\n"
        "x = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)\n"
        "t = np.arange(300) % 300\n"
        "with fastxent.use_backend('numba'):\n"
        "    a = fastxent.cross_entropy_and_grad(x, t, reduction='none')\n"
        "with fastxent.use_backend('numpy'):\n"
        "    b = fastxent.cross_entropy_and_grad(x, t, reduction='none')\n"
        "np.testing.assert_allclose(a[0], b[0], rtol=1e-5)\n"
        "print('ok', fastxent.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(install), "HOME": str(tmp_path / "home"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    try:
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", code],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env=env,
        )
    finally:
        for path in [install, *install.rglob("*")]:
            path.chmod(0o755)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok") and str(install) in result.stdout


def run_snippet(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=environment, cwd=ROOT
    )


CHECK_ALL_BACKENDS = (
    "import numpy as np, fastxent\n"
    "x = np.random.default_rng(0).standard_normal((600, 300)).astype(np.float32)\n"
    "t = np.arange(600) % 300\n"
    "with fastxent.use_backend('numpy'):\n"
    "    want = fastxent.cross_entropy_and_grad(x, t, reduction='none')\n"
    "for name in fastxent.available_backends():\n"
    "    with fastxent.use_backend(name):\n"
    "        got = fastxent.cross_entropy_and_grad(x, t, reduction='none')\n"
    "    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)\n"
    "    np.testing.assert_allclose(got[1], want[1], atol=1e-6)\n"
    "print(fastxent.get_num_threads(), ','.join(fastxent.available_backends()))\n"
)


@pytest.mark.parametrize(
    ("env", "threads"),
    [
        ({"OMP_NUM_THREADS": "1"}, "1"),
        ({"OMP_NUM_THREADS": "0"}, None),
        ({"OMP_NUM_THREADS": "many"}, None),
        ({"OMP_NUM_THREADS": "64"}, None),
        ({"FASTXENT_NUM_THREADS": "64"}, "64"),
        ({"FASTXENT_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}, "1"),
        ({"NUMBA_NUM_THREADS": "64"}, None),
        ({"NUMBA_NUM_THREADS": "many"}, None),
    ],
)
def test_odd_thread_settings_give_correct_results(env, threads):
    result = run_snippet(CHECK_ALL_BACKENDS, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    count, backends = result.stdout.split()
    if threads is not None:
        assert count == threads
    else:
        assert 1 <= int(count) <= (os.cpu_count() or 1)
    assert backends.endswith("numpy")


def test_numba_num_threads_zero_makes_numba_unavailable_with_the_reason():
    code = "import fastxent; print(fastxent._dispatch.backend_errors().get('numba', 'available'))"
    result = run_snippet(code, NUMBA_NUM_THREADS="0")
    assert result.returncode == 0, result.stderr
    if "numba" in fastxent.available_backends():
        assert "Number of threads specified must be > 0" in result.stdout


def test_set_num_threads_from_many_threads(backend, monkeypatch):
    monkeypatch.setattr(_threads, "_process_threads", None)
    logits, target = big_problem(4)
    expected = fastxent.cross_entropy_and_grad(logits, target, reduction="none")

    def work(n: int) -> tuple[np.ndarray, np.ndarray]:
        fastxent.set_num_threads(1 + n % 3)
        with fastxent.use_backend(backend):
            return fastxent.cross_entropy_and_grad(logits, target, reduction="none")

    with ThreadPoolExecutor(max_workers=8) as pool:
        for loss, grad in pool.map(work, range(16)):
            np.testing.assert_array_equal(loss, expected[0])
            np.testing.assert_array_equal(grad, expected[1])


def test_eight_threads_every_operation_mixed_backends():
    backends = fastxent.available_backends()
    logits, target = big_problem(5)
    probs = np.abs(logits) / np.abs(logits).sum(axis=1, keepdims=True)
    operations = {
        "loss": lambda: fastxent.cross_entropy(logits, target, reduction="none"),
        "grad": lambda: fastxent.cross_entropy_and_grad(logits, probs, z_loss=1e-3)[1],
        "softmax": lambda: fastxent.softmax(logits),
        "log_softmax": lambda: fastxent.log_softmax(logits, axis=0),
        "logsumexp": lambda: fastxent.logsumexp(logits),
        "sparse": lambda: fastxent.sparse_softmax_cross_entropy_with_logits(target, logits),
        "dense": lambda: fastxent.softmax_cross_entropy_with_logits(probs, logits),
    }
    expected = {}
    for name in backends:
        with fastxent.use_backend(name):
            expected[name] = {op: call() for op, call in operations.items()}

    def work(index: int) -> tuple[str, dict[str, np.ndarray]]:
        name = backends[index % len(backends)]
        with fastxent.use_backend(name):
            assert fastxent.get_backend() == name
            return name, {op: call() for op, call in operations.items()}

    with ThreadPoolExecutor(max_workers=8) as pool:
        for name, results in pool.map(work, range(32)):
            for op, value in results.items():
                np.testing.assert_array_equal(value, expected[name][op])


NUMBA_ONLY = CHECK_ALL_BACKENDS.replace("for name in fastxent.available_backends():", "for name in ['numba']:")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_numba_cache_still_gives_correct_results(tmp_path, damage):
    pytest.importorskip("numba")
    cache = tmp_path / "numba-cache"
    first = run_snippet(NUMBA_ONLY, NUMBA_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr[-2000:]
    files = [path for path in cache.rglob("*") if path.suffix in (".nbi", ".nbc")]
    assert files, "the first run wrote no cache"
    for path in files:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00garbage" * 7)
    second = run_snippet(NUMBA_ONLY, NUMBA_CACHE_DIR=str(cache))
    assert second.returncode == 0, second.stderr[-2000:]


def test_unwritable_numba_cache_still_gives_correct_results(tmp_path):
    pytest.importorskip("numba")
    cache = tmp_path / "read-only-cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        result = run_snippet(NUMBA_ONLY, NUMBA_CACHE_DIR=str(cache))
    finally:
        cache.chmod(0o755)
    assert result.returncode == 0, result.stderr[-2000:]
