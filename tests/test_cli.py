"""``python -m fastxent bench`` and ``info`` on generated data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fastxent
from fastxent import _cli

ROOT = Path(__file__).resolve().parent.parent


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
