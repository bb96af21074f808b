"""``python -m fastxent bench`` and ``info`` on generated data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastxent
from fastxent import _cli
from fastxent._version import __version__

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["bench", "--quick", "--shapes", "64x10", "--repeats", "1", "--backends", "numpy", "--no-latency"]
LATENCY = ["bench", "--latency-only", "--latency-shapes", "32x10", "--repeats", "1", "--quick"]


def run_cli(*arguments: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m fastxent ARGUMENTS`` in a fresh process, with the modules in ``hide`` unimportable."""
    # A None entry in sys.modules makes find_spec return None and import raise ImportError.
    hidden = f"import sys, runpy; sys.modules.update(dict.fromkeys({hide!r})); "
    command = ["-c", hidden + "runpy.run_module('fastxent', run_name='__main__')"] if hide else ["-m", "fastxent"]
    return subprocess.run([sys.executable, *command, *arguments], capture_output=True, text=True, timeout=300, cwd=ROOT)


def cells(line: str) -> list[str]:
    """The cells of a printed table row (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    # Peers run in a subprocess below: importing JAX here would make later fork tests warn.
    output = tmp_path / "bench.json"
    arguments = ["bench", "--quick", "--shapes", "64x100", "2x5x8x8", "--repeats", "1", "--no-peers", "--no-latency"]
    assert _cli.main([*arguments, "--json", str(output)]) == 0
    printed = capsys.readouterr().out
    header = cells(printed.splitlines()[printed.splitlines().index("") + 1])
    backends = [_cli._label(name) for name in fastxent.available_backends()]
    # The reference backend is a column of its own; speed-ups are over NumPy written by hand.
    expected = ["shape", "dtype", "op", "read", "copy", *backends, "auto", "auto/best", "best/bw", "numpy-hand"]
    assert header == [*expected, "x numpy-hand"]
    assert "x numpy-ref" not in printed and "µs per call" not in printed
    assert "loss+grad" in printed and "64x100" in printed and "2x5x8x8" in printed
    data = json.loads(output.read_text())
    operations = {case["operation"] for case in data["cases"]}
    assert operations == {"loss", "loss+grad", "softmax", "log_softmax", "logsumexp"} and data["latency_us"] == []
    for case in data["cases"]:
        assert case["read_gbs"] > 0 and all(value > 0 for value in case["backends"].values())
        assert case["peers"]["numpy-hand"] > 0
        key_axis = 0 if len(case["shape"]) == 1 else 1
        picked = fastxent.get_backend(
            np.empty(case["shape"], case["dtype"]), operation=case["operation"], axis=key_axis
        )
        assert case["auto"] == picked


def test_bench_measures_torch_as_a_peer(tmp_path):
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "fastxent", "bench", "--shapes", "64x100", "--repeats", "1", "--no-latency",
               "--json", str(output)]  # fmt: skip
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
    # The default latency shapes, both dtypes, after the GB/s table.
    assert result.stdout.index("µs per call") > result.stdout.index("32x50")
    assert "[latency 10/10] 1x50257 float64" in result.stderr
    for shape in ("32x10", "128x10", "256x100", "128x1000", "1x50257"):
        assert f"{shape}  float64  loss+grad" in result.stdout


def test_latency_table_has_fastxent_backends_and_numpy_by_hand(tmp_path, capsys):
    output = tmp_path / "bench.json"
    assert _cli.main([*LATENCY, "--no-peers", "--json", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "GB/s" not in printed and "µs per call" in printed
    lines = printed.splitlines()
    header = cells(lines[lines.index("") + 1])
    backends = [_cli._label(name) for name in fastxent.available_backends()]
    assert header == ["shape", "dtype", "op", "auto", *backends, "numpy-hand", "x numpy-hand"]
    rows = [cells(line) for line in lines[lines.index("") + 3 :] if line.strip()]
    assert [row[:3] for row in rows] == [["32x10", dtype, op] for dtype in ("float32", "float64")
                                         for op in ("loss", "loss+grad")]  # fmt: skip
    assert all(len(row) == len(header) and float(row[-1]) > 0 for row in rows)
    data = json.loads(output.read_text())
    assert data["cases"] == [] and len(data["latency_us"]) == 4
    for case in data["latency_us"]:
        assert list(case["backends"]) == ["auto", *fastxent.available_backends()]
        assert list(case["peers"]) == ["numpy-hand"] and all(v > 0 for v in case["backends"].values())


def test_latency_table_measures_torch():
    result = run_cli(*LATENCY, "--dtypes", "float32", "--backends", "numpy")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = cells(lines[lines.index("") + 1])
    assert header[3:7] == ["auto", "numpy-ref", "torch", "numpy-hand"]
    assert header.index("x torch") + 1 == header.index("x numpy-hand")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--latency-only", "--no-latency"], "not allowed with argument"),
        (["--latency-only", "--plot", "chart.png"], "--plot draws the GB/s table"),
        (["--latency-shapes", "32by10"], "a shape looks like 8192x1000"),
    ],
)
def test_bench_rejects_contradictory_latency_flags(arguments, message, capsys):
    with pytest.raises(SystemExit):
        _cli.main(["bench", *arguments])
    assert message in capsys.readouterr().err


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
