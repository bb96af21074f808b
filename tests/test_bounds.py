"""Kernels never read or write outside their arrays, even with targets the API would reject."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import fastxent

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "bounds_probe.py"


def run_probe(backend: str, env: dict[str, str], python_path: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(python_path), **env}
    return subprocess.run(
        [sys.executable, str(PROBE), backend],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
        cwd=python_path,
    )


@pytest.mark.parametrize("backend", fastxent.available_backends())
def test_probe_in_process_agrees(backend):
    """The probe itself, without a detector: every backend survives it."""
    result = run_probe(backend, {})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_numba_kernels_under_boundscheck(tmp_path):
    if "numba" not in fastxent.available_backends():
        pytest.skip("Numba is not available (FASTXENT_REQUIRE_BACKENDS guards CI)")
    # A fresh cache directory: the bounds-checked code must be compiled, not loaded.
    result = run_probe("numba", {"NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("calls")


def _asan_runtime() -> str | None:
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        return None
    path = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_cython_kernels_under_address_sanitizer(tmp_path):
    if "cython" not in fastxent.available_backends():
        pytest.skip("the Cython backend is not built (FASTXENT_REQUIRE_BACKENDS guards CI)")
    runtime = _asan_runtime()
    if runtime is None:
        pytest.skip("no AddressSanitizer runtime (libasan) for this compiler")
    package = tmp_path / "pkg"
    shutil.copytree(
        ROOT / "fastxent", package / "fastxent", ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.c")
    )
    shutil.copy(ROOT / "setup.py", package / "setup.py")
    shutil.copy(ROOT / "pyproject.toml", package / "pyproject.toml")
    (package / "README.md").write_text("probe build\n")
    flags = "-fsanitize=address -fno-omit-frame-pointer -g -O1"
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        capture_output=True, text=True, timeout=900, cwd=package,
        env={
            **os.environ,
            "CFLAGS": flags,
            "LDFLAGS": "-fsanitize=address",
            "LDSHARED": sysconfig.get_config_var("LDSHARED") + " -fsanitize=address",
        },
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    built = list((package / "fastxent" / "_backends" / "cython_backend").glob("_kernels*.so"))
    assert len(built) == 1
    if shutil.which("nm"):
        symbols = subprocess.run(["nm", "-D", str(built[0])], capture_output=True, text=True).stdout
        assert "__asan" in symbols, "the extension was not built with AddressSanitizer"
    result = run_probe(
        "cython",
        {"LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1"},
        python_path=package,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "AddressSanitizer" not in result.stderr
    assert result.stdout.startswith("calls")
