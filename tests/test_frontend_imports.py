"""The front-ends stay optional: ``import fastxent`` imports neither torch nor jax; ``require_frontend``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from frontends import ENV, require_frontend


def test_import_fastxent_imports_no_framework():
    code = "import fastxent, sys; assert 'torch' not in sys.modules and 'jax' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_require_frontend_returns_the_module():
    assert require_frontend("json") is sys.modules["json"]


def test_require_frontend_skips_when_not_required(monkeypatch):
    monkeypatch.setenv(ENV, "jax")
    with pytest.raises(pytest.skip.Exception, match="fastxent_no_such_module"):
        require_frontend("torch", "fastxent_no_such_module")


@pytest.mark.parametrize("listed", ["torch", "jax, torch", " torch ,dask"])
def test_require_frontend_fails_when_required(monkeypatch, listed):
    monkeypatch.setenv(ENV, listed)
    with pytest.raises(pytest.fail.Exception, match=r"requires the torch front-end.*fastxent_no_such_module"):
        require_frontend("torch", "fastxent_no_such_module")
