"""The fused linear cross-entropy against its matrix products alone and against torch.

For each case (the issue's: ``N=2048, H=1024, V=32000`` forward and backward,
``N=512, H=2048, V=128256`` forward only, float32) it measures, on one
thread count for everything:

- ``fastxent``: :func:`fastxent._linear.linear_cross_entropy_and_grad` (or
  :func:`~fastxent._linear.linear_cross_entropy` forward only);
- ``matmuls``: the same matrix products at full size, into arrays made once
  (``hidden @ weight.T``, and for the backward ``logits @ weight`` and
  ``logits.T @ hidden``): the floor fastxent is held to (1.15x);
- ``kernel``: the cross-entropy kernel alone over the full ``(N, V)`` logits
  (the gradient written in place for the backward): the other part of the split;
- ``torch``: ``F.linear`` + ``F.cross_entropy`` (+ ``backward``), which holds
  the logits;

The calls take turns (median of ``--repeats`` rounds), so that a busy neighbour
slows them all alike. Also the peak resident memory of one call above its
inputs and outputs, in a
fresh process (``fastxent`` and ``torch``), against the size of the logits.

``python -m fastxent._bench_linear [--repeats 3] [--case 2048x1024x32000:fwd+bwd]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _dispatch, _linear, _linear_blas, _linear_blocks

OPERATIONS = ("fwd", "fwd+bwd")


@dataclass
class LinearCase:
    """One benchmarked call: sizes, what was timed (seconds) and the peak memory (bytes above inputs and outputs)."""

    n_rows: int
    n_hidden: int
    n_classes: int
    dtype: str = "float32"
    operation: str = "fwd+bwd"
    #: How the call is cut: "171 rows" per block, or (the loss alone) "11543 classes" per chunk.
    blocks: str = ""
    threads: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.n_rows}x{self.n_hidden}x{self.n_classes}"

    @property
    def logits_bytes(self) -> int:
        """Bytes of the ``(N, V)`` logits in the compute dtype: what the memory goal is a fraction of."""
        return self.n_rows * self.n_classes * max(np.dtype(self.dtype).itemsize, 4)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "label": self.label, "logits_bytes": self.logits_bytes}


#: The issue's cases.
DEFAULT_CASES: tuple[tuple[int, int, int, str, str], ...] = (
    (2048, 1024, 32000, "float32", "fwd+bwd"),
    (512, 2048, 128256, "float32", "fwd"),
)


def make_inputs(
    n_rows: int, n_hidden: int, n_classes: int, dtype: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``hidden (N, H)``, ``weight (V, H)`` scaled so that logits have unit variance, int64 targets ``(N,)``."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n_rows, n_hidden), dtype=np.float32).astype(dtype, copy=False)
    weight = rng.standard_normal((n_classes, n_hidden), dtype=np.float32)
    weight *= 1 / np.sqrt(max(n_hidden, 1))
    return hidden, weight.astype(dtype, copy=False), rng.integers(0, n_classes, n_rows)


def fastxent_call(operation: str, hidden: np.ndarray, weight: np.ndarray, target: np.ndarray) -> Callable[[], object]:
    """The fused call, mean reduction (torch's default)."""
    if operation == "fwd":
        return lambda: _linear.linear_cross_entropy(hidden, weight, target)
    return lambda: _linear.linear_cross_entropy_and_grad(hidden, weight, target)


def matmuls_call(operation: str, hidden: np.ndarray, weight: np.ndarray) -> Callable[[], object]:
    """The full-size matrix products of ``operation``, into arrays made once, on fastxent's BLAS thread count."""
    n_threads = _dispatch.get_num_threads()
    logits = np.empty((hidden.shape[0], weight.shape[0]), hidden.dtype)
    grad_hidden = np.empty_like(hidden)
    grad_weight = np.empty_like(weight)

    def products() -> object:
        with _linear_blas.blas_threads(n_threads):
            np.matmul(hidden, weight.T, out=logits)
            if operation != "fwd":
                np.matmul(logits, weight, out=grad_hidden)
                np.matmul(logits.T, hidden, out=grad_weight)
        return logits

    return products


def kernel_call(operation: str, hidden: np.ndarray, weight: np.ndarray, target: np.ndarray) -> Callable[[], object]:
    """The cross-entropy kernel alone over full-size logits (gradient in place for the backward)."""
    from . import _xent

    logits = np.matmul(hidden, weight.T)
    if operation == "fwd":
        return lambda: _xent.cross_entropy(logits, target)
    return lambda: _xent.cross_entropy_and_grad(logits, target, inplace=True)


def torch_call(
    operation: str, hidden: np.ndarray, weight: np.ndarray, target: np.ndarray, threads: int
) -> Callable[[], object] | None:
    """``F.linear`` + ``F.cross_entropy`` (+ backward) on ``threads`` threads; None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(threads)
    h = torch.from_numpy(hidden).requires_grad_(operation != "fwd")
    w = torch.from_numpy(weight).requires_grad_(operation != "fwd")
    t = torch.from_numpy(target)
    if operation == "fwd":

        def forward() -> object:
            with torch.no_grad():
                return F.cross_entropy(F.linear(h, w), t)

        return forward

    def forward_backward() -> object:
        h.grad = w.grad = None
        F.cross_entropy(F.linear(h, w), t).backward()
        return h.grad, w.grad

    return forward_backward


# Run in a fresh interpreter, with glibc returning every large block to the
# system when it is freed (so that a second call cannot hide in memory the
# first one kept): one call of the case's size first (Numba compiles, BLAS
# touches its buffers, modules import), then the peak resident size is reset
# and a second call measured. fastxent's NumPy allocations are also traced
# (tracemalloc), which counts exactly what the call allocates.
_MEMORY_SCRIPT = """
import json, resource, sys, tracemalloc
from fastxent import _bench_linear as bench
library, operation, n, h, v, dtype, threads = sys.argv[1:8]
n, h, v, threads = int(n), int(h), int(v), int(threads)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def hwm():
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

hidden, weight, target = bench.make_inputs(n, h, v, dtype)
if library == "fastxent":
    run = bench.fastxent_call(operation, hidden, weight, target)
else:
    run = bench.torch_call(operation, hidden, weight, target, threads)
outputs = 0 if operation == "fwd" else hidden.nbytes + weight.nbytes
run()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss()
traced = library == "fastxent"
if traced:
    tracemalloc.start()
result = run()
peak = {"rss": hwm() - before - outputs}
if traced:
    peak["traced"] = tracemalloc.get_traced_memory()[1] - outputs
print(json.dumps(peak))
"""


def peak_memory(library: str, case: LinearCase) -> dict[str, float]:
    """Peak bytes of one call above its inputs and outputs, in a fresh process: ``rss`` and (fastxent) ``traced``."""
    if not os.path.exists("/proc/self/clear_refs"):
        return {}
    args = [library, case.operation, case.n_rows, case.n_hidden, case.n_classes, case.dtype, case.threads]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**16)}
    completed = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
    )
    if completed.returncode != 0:
        return {}
    measured: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return measured


def blocks(n_rows: int, n_classes: int, dtype: str, operation: str) -> str:
    """How fastxent cuts the call by default: rows per block, or for the loss alone maybe classes per chunk."""
    itemsize = max(np.dtype(dtype).itemsize, 4)
    classes = _linear_blocks.classes_per_chunk(n_rows, n_classes, itemsize) if operation == "fwd" else None
    if classes is not None:
        return f"{classes} classes"
    return f"{_linear.linear_chunk_rows(n_rows, n_classes, dtype)} rows"


def interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of one call of each, the calls taking turns (a busy neighbour then slows all alike).

    Each is called once first, untimed (compilation, first-touch of buffers).
    """
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure_case(
    n_rows: int,
    n_hidden: int,
    n_classes: int,
    dtype: str = "float32",
    operation: str = "fwd+bwd",
    repeats: int = 3,
    torch: bool = True,
    memory: bool = True,
) -> LinearCase:
    """Time fastxent, the products alone, the kernel alone and torch; measure peak memory."""
    threads = _dispatch.get_num_threads()
    case = LinearCase(
        n_rows, n_hidden, n_classes, dtype, operation, blocks(n_rows, n_classes, dtype, operation), threads
    )
    hidden, weight, target = make_inputs(n_rows, n_hidden, n_classes, dtype)
    calls = {
        "fastxent": fastxent_call(operation, hidden, weight, target),
        "matmuls": matmuls_call(operation, hidden, weight),
        "kernel": kernel_call(operation, hidden, weight, target),
        "torch": torch_call(operation, hidden, weight, target, threads) if torch else None,
    }
    case.seconds = interleaved({name: call for name, call in calls.items() if call is not None}, repeats)
    if memory:
        for library in ("fastxent", "torch") if torch else ("fastxent",):
            for kind, value in peak_memory(library, case).items():
                case.peak_bytes[library if kind == "rss" else f"{library} traced"] = value
    return case


def format_table(cases: Sequence[LinearCase]) -> str:
    """Seconds per call, fastxent's time over the products' and torch's, peak memory as a share of the logits."""
    header = ["N x H x V", "dtype", "op", "block", "threads", "fastxent s", "matmuls s", "kernel s"]
    header += ["torch s", "/matmuls", "/torch", "peak fastxent", "(traced)", "peak torch"]
    rows = [header]

    def seconds(case: LinearCase, name: str) -> str:
        return f"{case.seconds[name]:.3f}" if name in case.seconds else "-"

    def ratio(case: LinearCase, name: str) -> str:
        return f"{case.seconds['fastxent'] / case.seconds[name]:.2f}" if name in case.seconds else "-"

    def peak(case: LinearCase, name: str) -> str:
        value = case.peak_bytes.get(name, float("nan"))
        if value != value:
            return "-"
        return f"{value / 2**20:.0f} MiB ({value / case.logits_bytes:.0%})"

    for case in cases:
        rows.append([
            case.label, case.dtype, case.operation, case.blocks, str(case.threads),
            seconds(case, "fastxent"), seconds(case, "matmuls"), seconds(case, "kernel"), seconds(case, "torch"),
            ratio(case, "matmuls"), ratio(case, "torch"), peak(case, "fastxent"), peak(case, "fastxent traced"),
            peak(case, "torch"),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    note = (
        "peak: resident bytes of one call above its inputs and outputs (share of the (N, V) logits); "
        "(traced): fastxent's NumPy allocations only"
    )
    return "\n".join([*lines, note])


def _parse_case(text: str) -> tuple[int, int, int, str, str]:
    sizes, _, operation = text.partition(":")
    try:
        n, h, v = (int(part) for part in sizes.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case looks like 2048x1024x32000:fwd+bwd; got {text!r}") from None
    operation = operation or "fwd+bwd"
    if operation not in OPERATIONS:
        raise argparse.ArgumentTypeError(f"the operation must be one of {', '.join(OPERATIONS)}; got {operation!r}")
    return n, h, v, "float32", operation


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastxent._bench_linear", description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=_parse_case, action="append", help="NxHxV[:fwd|fwd+bwd] (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="do not measure torch")
    parser.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    cases = [
        measure_case(n, h, v, dtype, operation, args.repeats, not args.no_torch, not args.no_memory)
        for n, h, v, dtype, operation in args.case or DEFAULT_CASES
    ]
    print(format_table(cases))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([case.as_dict() for case in cases], handle, indent=1)


if __name__ == "__main__":
    main()
