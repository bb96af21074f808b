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
from fastxent import _dispatch

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
    expected = [_loss_in_child((backend, seed)) for seed in range(4)]  # the parent uses the kernels first
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
        monkeypatch.setattr(_dispatch, "_process_threads", n_threads)
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
def test_float32_accuracy_at_a_million_classes(backend, scale):
    rng = np.random.default_rng(7)
    n_classes = 1_000_000
    logits64 = rng.uniform(-scale, scale, (2, n_classes))
    logits = logits64.astype(np.float32)
    target = np.array([int(np.argmax(logits64[0])), 12345])
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
            [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
        )
    finally:
        for path in [install, *install.rglob("*")]:
            path.chmod(0o755)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok") and str(install) in result.stdout
