"""Measure the compiled backends on every shape class and write ``auto``'s table.

``python -m fastxent._auto_measure --write`` times each backend on one
sample shape per class of :mod:`fastxent._backends._auto` (the bench's
calls and GB/s), in alternated rounds, and rewrites
``fastxent/_backends/_auto_table_<level>.py`` for the SIMD level Numba
compiles for here. Run it on an idle machine of the kind the table is for,
with the default thread count. On an AVX-512 machine,
``NUMBA_CPU_NAME=znver3 NUMBA_CPU_FEATURES=+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+lzcnt,+movbe``
makes Numba's code AVX2, for the AVX2 table.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from . import _bench, _dispatch
from ._backends import AUTO_ORDER, _auto

TABLE_DIRECTORY = Path(__file__).parent / "_backends"
#: Positions of the samples with positions after the class axis, by layout and size bucket.
SAMPLE_POSITIONS = {"tiles": (16, 256, 1024, 1024), "planes": (4096, 4096, 4096, 65536)}


def sample_shape(dtype: str, layout: str, n_classes: int, size_index: int) -> tuple[int, ...] | None:
    """A shape of ``size_index``'s sample size in the class (dtype, layout, classes); None if there is none."""
    size = _auto.SIZE_SAMPLES[size_index] // np.dtype(dtype).itemsize
    if layout == "rows":
        shape: tuple[int, ...] = (max(1, size // n_classes), n_classes)
        positions = 1
    else:
        positions = SAMPLE_POSITIONS[layout][size_index]
        rows = size // (n_classes * positions)
        if rows < 1:
            rows, positions = 1, max(2, size // n_classes)
        shape = (rows, n_classes, positions)
    elements = shape[0] * n_classes * positions
    key = _auto.table_key(dtype, "loss", n_classes, positions, elements)
    return shape if key[2:] == (layout, n_classes, _auto.SIZE_NAMES[size_index]) else None


def classes(dtypes: Sequence[str]) -> Iterator[tuple[str, str, int, int, tuple[int, ...]]]:
    """Every (dtype, layout, classes, size bucket, sample shape) with a sample."""
    for dtype, layout, n_classes, size_index in itertools.product(
        dtypes, _auto.LAYOUTS, _auto.CLASS_SAMPLES, range(len(_auto.SIZE_NAMES))
    ):
        shape = sample_shape(dtype, layout, n_classes, size_index)
        if shape is not None:
            yield dtype, layout, n_classes, size_index, shape


def measure(
    shape: tuple[int, ...], dtype: str, backends: Sequence[str], rounds: int, repeats: int
) -> dict[str, dict[str, float]]:
    """operation -> backend -> median GB/s over ``rounds`` alternated rounds."""
    logits, target = _bench.make_inputs(shape, dtype)
    result = {}
    for operation in _auto.OPERATIONS:
        samples: dict[str, list[float]] = {name: [] for name in backends}
        for round_index in range(rounds):
            # Alternate which backend goes first, so that a slow spell of the machine hits both.
            first = round_index % len(backends)
            turn = [*backends[first:], *backends[:first]]
            for name in turn:
                with _dispatch.use_backend(name):
                    call = _bench._fastxent_call(operation, logits, target)
                    samples[name].append(logits.nbytes / _bench.time_call(call, repeats, 0.01) / 1e9)
        result[operation] = {name: statistics.median(values) for name, values in samples.items()}
    return result


def table_path(level: str) -> Path:
    """Where the table of SIMD level ``level`` lives."""
    return TABLE_DIRECTORY / f"_auto_table_{level}.py"


def _header(level: str, threads: int, elapsed: float) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=TABLE_DIRECTORY, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return (
        '"""auto\'s table: the backend measured fastest on each shape class (generated; do not edit).\n\n'
        "Written by ``python -m fastxent._auto_measure --write``:\n\n"
        f"- on {datetime.date.today().isoformat()}, fastxent at {commit or 'an unknown commit'}, in {elapsed:.0f} s;\n"
        f"- CPU: {_cpu_model()} ({_cpu_family()}), {threads} threads;\n"
        f"- Numba's code for {level}, Cython's AVX2{_cpu_name_note()}.\n\n"
        "Keys are :func:`fastxent._backends._auto.table_key`'s; values are the winner\n"
        "(:func:`fastxent._backends._auto.pick`) and each backend's median GB/s of logits.\n"
        '"""\n\n'
    )


def _cpu_family() -> str:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


def _cpu_name_note() -> str:
    name, features = os.environ.get("NUMBA_CPU_NAME"), os.environ.get("NUMBA_CPU_FEATURES")
    return f";\n- NUMBA_CPU_NAME={name},\n  NUMBA_CPU_FEATURES={features}" if name or features else ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _literal(value: object) -> str:
    """``value`` as Python source in the formatter's style (double quotes)."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_literal, value)) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def write_table(table: _auto.Table, level: str, threads: int, elapsed: float) -> Path:
    """Write ``table`` as the generated module of SIMD level ``level``; return its path."""
    entries = "".join(f"    {_literal(key)}: {_literal(value)},\n" for key, value in table.items())
    path = table_path(level)
    path.write_text(
        _header(level, threads, elapsed)
        + "from __future__ import annotations\n\n"
        + "TABLE: dict[tuple[str, str, str, int, str], tuple[str, dict[str, float]]] = {\n"
        + entries
        + "}\n"
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every class; with ``--write``, rewrite the table of this machine's SIMD level."""
    parser = argparse.ArgumentParser(prog="python -m fastxent._auto_measure", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the table of this SIMD level")
    parser.add_argument("--dtypes", nargs="+", default=list(_auto.DTYPES), choices=_auto.DTYPES)
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds per class (median)")
    parser.add_argument("--repeats", type=int, default=5, help="samples per timing (median)")
    args = parser.parse_args(argv)
    backends = [name for name in AUTO_ORDER if name != "numpy" and name in _dispatch.available_backends()]
    if len(backends) < 2:
        parser.error(f"needs both compiled backends; available: {_dispatch.available_backends()}")
    level = _auto.simd_level()
    if args.write and level is None:
        parser.error("this CPU (or NUMBA_CPU_NAME) gives neither AVX-512 nor AVX2 code: no table to write")
    threads = _dispatch.get_num_threads()
    started = time.perf_counter()
    table: _auto.Table = {}
    for dtype, layout, n_classes, size_index, shape in classes(args.dtypes):
        for operation, speeds in measure(shape, dtype, backends, args.rounds, args.repeats).items():
            rounded = {name: round(value, 3) for name, value in speeds.items()}
            winner = _auto.pick(rounded, AUTO_ORDER)  # from the numbers written, so that they show why
            table[(dtype, operation, layout, n_classes, _auto.SIZE_NAMES[size_index])] = (winner, rounded)
            shown = "  ".join(f"{name} {value:7.2f}" for name, value in rounded.items())
            print(f"{dtype} {'x'.join(map(str, shape)):>16} {operation:>11}  {shown}  -> {winner}", flush=True)
    if args.write:
        assert level is not None
        print(f"wrote {write_table(table, level, threads, time.perf_counter() - started)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
