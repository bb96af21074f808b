"""``python -m fastxent bench`` and ``info`` on generated data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastxent
from fastxent import _cli
from fastxent._version import __version__

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["bench", "--quick", "--shapes", "64x10", "--repeats", "1", "--backends", "numpy"]


def run_cli(*arguments: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m fastxent ARGUMENTS`` in a fresh process, with the modules in ``hide`` unimportable."""
    # A None entry in sys.modules makes find_spec return None and import raise ImportError.
    hidden = f"import sys, runpy; sys.modules.update(dict.fromkeys({hide!r})); "
    command = ["-c", hidden + "runpy.run_module('fastxent', run_name='__main__')"] if hide else ["-m", "fastxent"]
    return subprocess.run([sys.executable, *command, *arguments], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    # Peers run in a subprocess below: importing JAX here would make later fork tests warn.
    output = tmp_path / "bench.json"
    arguments = ["bench", "--quick", "--shapes", "64x100", "2x5x8x8", "--repeats", "1", "--no-peers"]
    assert _cli.main([*arguments, "--json", str(output)]) == 0
    printed = capsys.readouterr().out
    for name in fastxent.available_backends():
        assert name in printed
    assert "loss+grad" in printed and "64x100" in printed and "2x5x8x8" in printed
    if len(fastxent.available_backends()) > 1:
        assert "x numpy" in printed
    data = json.loads(output.read_text())
    assert {case["operation"] for case in data["cases"]} == {"loss", "loss+grad"}
    for case in data["cases"]:
        assert case["read_gbs"] > 0 and all(value > 0 for value in case["backends"].values())


def test_bench_measures_torch_as_a_peer(tmp_path):
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "fastxent", "bench", "--shapes", "64x100", "--repeats", "1", "--json", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "x torch" in result.stdout
    assert all(case["peers"]["torch"] > 0 for case in json.loads(output.read_text())["cases"])


def test_bench_rejects_a_bad_shape(capsys):
    with pytest.raises(SystemExit):
        _cli.main(["bench", "--shapes", "64by100"])
    assert "a shape looks like 8192x1000" in capsys.readouterr().err


def test_bench_command_line_runs():
    result = subprocess.run(
        [sys.executable, "-m", "fastxent", "bench", "--quick", "--shapes", "32x50", "--repeats", "1", "--no-peers",
         "--backends", "numpy"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "32x50" in result.stdout and "[1/1]" in result.stderr


def test_no_command_prints_the_help():
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m fastxent") and "bench" in result.stdout
    assert "info" in result.stdout and result.stderr == ""


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fastxent {__version__}\n"


@pytest.mark.parametrize("command", [[], ["bench"], ["info"]], ids=["main", "bench", "info"])
def test_help_is_plain_text(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "`" not in result.stdout


def test_progress_lines_show_the_case_and_the_time():
    result = run_cli(*QUICK, "--dtypes", "float32", "float64", "--no-peers")
    assert result.returncode == 0, result.stderr
    progress = re.findall(r"^\[(\d)/2\] 64x10 (float\d\d) \.\.\. [\d.]+ s; ([\d.]+) s elapsed$", result.stderr, re.M)
    assert [(i, dtype) for i, dtype, _ in progress] == [("1", "float32"), ("2", "float64")], result.stderr
    assert float(progress[0][2]) <= float(progress[1][2])


def test_missing_peers_are_named_with_how_to_install_them():
    result = run_cli(*QUICK, hide=("torch", "jax", "tensorflow"))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "skipped" in line]
    assert len(notes) == 1, result.stdout
    assert "torch, jax, tensorflow" in notes[0]
    assert "pip install torch==2.13.0" in notes[0] and "pip install jax" in notes[0]
    assert "x torch" not in result.stdout


def test_only_missing_peers_are_named(monkeypatch):
    monkeypatch.setattr(_cli.importlib.util, "find_spec", lambda name: None if name == "jax" else object())
    assert _cli._missing_peers() == ["jax"]


def test_no_peers_is_silent_about_peers():
    result = run_cli(*QUICK, "--no-peers", hide=("torch", "jax", "tensorflow"))
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout
