"""The front-ends' goals, measured: fastxent.torch and fastxent.jax against torch's and optax's own losses.

Every torch row times two (or three) calls *interleaved* (sample after sample, in
turn), so that the ratio in a row compares calls that saw the same load; the
ratios, not the times, are what to compare across runs and machines.

- ``torch xent``: ``fastxent.torch.cross_entropy(x, t).backward()`` against
  ``F.cross_entropy(x, t).backward()`` at the bench shapes (float32);
- ``torch latency``: the same at (128, 10), forward + backward and forward
  only under ``torch.no_grad()``;
- ``torch MLP step``: one SGD step of a 2-layer MLP classifier, 8192 rows of
  1000 classes;
- ``torch LM head``: ``LinearCrossEntropyLoss`` against ``nn.Linear`` +
  ``F.cross_entropy`` at N=2048, H=1024, V=32000, forward + backward, with
  the peak resident memory of one call in a fresh process;
- ``jax``: ``jax.jit(jax.value_and_grad(mean loss))`` against optax's, and
  against the same custom VJP over ``jax.pure_callback`` (the alternative to
  the FFI call, docs/frontends.md); each contender in processes of its own,
  alternated round after round (``fastxent._bench_jax``).

``python -m fastxent._bench_frontends [--repeats 5] [--only torch|jax] [--threads N] [--no-memory] [--json FILE]``

On a machine shared with other work, compare at ``--threads 1`` too: torch's
OpenMP threads wait at barriers by spinning, so an oversubscribed machine
slows torch's multi-threaded calls far more than fastxent's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from . import _dispatch

#: The bench's default shapes (``python -m fastxent bench``), float32.
XENT_SHAPES = ((8192, 1000), (1024, 32000), (65536, 10))
LATENCY_SHAPE = (128, 10)
MLP = dict(rows=8192, features=256, hidden=512, classes=1000)
LM_HEAD = dict(rows=2048, hidden=1024, classes=32000)
JAX_SHAPES = ((8192, 1000), (1024, 32000))


@dataclass
class Row:
    """One comparison: seconds per call of each contender (the first is fastxent's)."""

    group: str
    case: str
    seconds: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, float] = field(default_factory=dict)
    goal: str = ""

    def ratio(self, other: str) -> float:
        """``other``'s time over fastxent's: above 1 means fastxent is faster."""
        first = next(iter(self.seconds))
        return self.seconds[other] / self.seconds[first]


def interleaved(calls: Mapping[str, Callable[[], object]], repeats: int, min_seconds: float = 0.05) -> dict[str, float]:
    """Median seconds per call of each of ``calls``, sampled in turn so that all see the same load."""
    loops = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        call()
        once = time.perf_counter() - start
        loops[name] = max(1, int(min_seconds / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                call()
            samples[name].append((time.perf_counter() - start) / loops[name])
    return {name: statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------


def _torch():  # type: ignore[no-untyped-def]
    import torch

    import fastxent.torch

    torch.set_num_threads(_dispatch.get_num_threads())
    return torch, fastxent.torch


def torch_xent(repeats: int) -> list[Row]:
    """Loss forward + backward at the bench shapes, and the per-call cost at (128, 10)."""
    torch, ft = _torch()
    rows = []
    for shape in (*XENT_SHAPES, LATENCY_SHAPE):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=generator).requires_grad_(True)
        t = torch.randint(0, shape[1], shape[:1], generator=generator)

        def step(loss: Callable[..., object], x=x, t=t) -> None:  # type: ignore[no-untyped-def]
            x.grad = None
            loss(x, t).backward()  # type: ignore[attr-defined]

        calls = {"fastxent": functools.partial(step, ft.cross_entropy),
                 "torch": functools.partial(step, torch.nn.functional.cross_entropy)}  # fmt: skip
        group = "torch latency" if shape == LATENCY_SHAPE else "torch xent"
        goal = "torch/fastxent >= 0.5" if shape == LATENCY_SHAPE else "torch/fastxent >= 2"
        rows.append(Row(group, f"{shape[0]}x{shape[1]} fwd+bwd", interleaved(calls, repeats), goal=goal))
        if shape == LATENCY_SHAPE:
            with torch.no_grad():
                forward = {"fastxent": functools.partial(ft.cross_entropy, x, t),
                           "torch": functools.partial(torch.nn.functional.cross_entropy, x, t)}  # fmt: skip
                rows.append(Row(group, f"{shape[0]}x{shape[1]} fwd (no_grad)", interleaved(forward, repeats)))
    return rows


def torch_mlp_step(repeats: int) -> Row:
    """One SGD step (forward, loss, backward, update) of an MLP classifier."""
    torch, ft = _torch()
    torch.manual_seed(0)
    n, d, h, c = MLP["rows"], MLP["features"], MLP["hidden"], MLP["classes"]
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, c))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(n, d)
    y = torch.randint(0, c, (n,))

    def step(loss: Callable[..., object]) -> None:
        optimizer.zero_grad()
        loss(model(x), y).backward()  # type: ignore[attr-defined]
        optimizer.step()

    calls = {"fastxent": functools.partial(step, ft.cross_entropy),
             "torch": functools.partial(step, torch.nn.functional.cross_entropy)}  # fmt: skip
    return Row("torch MLP step", f"{n}x{d}->{h}->{c}", interleaved(calls, repeats), goal="torch/fastxent > 1")


def _lm_head_call(library: str, rows: int, hidden: int, classes: int):  # type: ignore[no-untyped-def]
    """A forward + backward of the LM head: fastxent's fused loss or torch's Linear + cross_entropy."""
    torch, ft = _torch()
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden, classes, bias=False)
    h = torch.randn(rows, hidden, generator=generator).requires_grad_(True)
    t = torch.randint(0, classes, (rows,), generator=generator)
    criterion = ft.LinearCrossEntropyLoss()

    def call() -> None:
        h.grad = head.weight.grad = None
        if library == "fastxent":
            criterion(head.weight, h, t).backward()
        else:
            torch.nn.functional.cross_entropy(head(h), t).backward()

    return call, h.numel() * 4 + head.weight.numel() * 4


# A fresh interpreter per library: one small call first (imports, Numba, BLAS
# buffers), then the case; the peak resident size is reset before the call.
_MEMORY_SCRIPT = """
import json, resource, sys
from fastxent import _bench_frontends as bench
library, rows, hidden, classes = sys.argv[1], *map(int, sys.argv[2:5])

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def hwm():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024

bench._lm_head_call(library, 256, 64, 4096)[0]()  # 2**20 logits: the backend of large calls
call, gradients = bench._lm_head_call(library, rows, hidden, classes)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss()
call()
print(json.dumps({"peak": hwm() - before - gradients}))
"""


def lm_head_peak(library: str) -> float:
    """Peak resident bytes of one LM-head forward + backward above its inputs and gradients; NaN if unmeasurable."""
    if not os.path.exists("/proc/self/clear_refs"):
        return float("nan")
    args = [library, LM_HEAD["rows"], LM_HEAD["hidden"], LM_HEAD["classes"]]
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        return float("nan")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak"])


def torch_lm_head(repeats: int, memory: bool = True) -> Row:
    """``LinearCrossEntropyLoss`` against ``nn.Linear`` + ``F.cross_entropy``: time and peak memory."""
    sizes = (LM_HEAD["rows"], LM_HEAD["hidden"], LM_HEAD["classes"])
    calls = {library: _lm_head_call(library, *sizes)[0] for library in ("fastxent", "torch")}
    row = Row("torch LM head", "x".join(map(str, sizes)) + " fwd+bwd", interleaved(calls, repeats, 0.0))
    row.goal = "torch/fastxent > 1, peak <= 1/4 of torch's"
    if memory:
        row.peak_bytes = {library: lm_head_peak(library) for library in calls}
    return row


# ---------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------


def jax_value_and_grad(repeats: int, shapes: Sequence[tuple[int, int]] = JAX_SHAPES) -> list[Row]:
    """``jax.jit(jax.value_and_grad(mean loss))``: fastxent.jax (FFI), optax, and the pure_callback variant.

    Each contender in processes of its own, alternated (``fastxent._bench_jax`` says why).
    """
    from . import _bench_jax  # imports this module's interleaved

    goal = "optax/fastxent >= 1.3"
    return [
        Row("jax", f"{rows}x{classes} jit(value_and_grad)", _bench_jax.alternated((rows, classes), repeats), goal=goal)
        for rows, classes in shapes
    ]


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def format_table(rows: Sequence[Row]) -> str:
    """One line per comparison: each contender's time, the others' times over fastxent's, the goal."""
    header = ["group", "case", "fastxent", "others", "others / fastxent", "peak memory", "goal"]
    lines = [header]
    for row in rows:
        others = [name for name in row.seconds if name != "fastxent"]
        peak = "-"
        if row.peak_bytes and all(value == value for value in row.peak_bytes.values()):
            peak = ", ".join(f"{name} {value / 2**20:.0f} MiB" for name, value in row.peak_bytes.items())
            peak += f" ({row.peak_bytes['fastxent'] / row.peak_bytes['torch']:.2f}x)"
        lines.append([
            row.group, row.case, _time(row.seconds["fastxent"]),
            ", ".join(f"{name} {_time(row.seconds[name])}" for name in others),
            ", ".join(f"{name} {row.ratio(name):.2f}" for name in others), peak, row.goal,
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastxent._bench_frontends", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="samples per contender (median)")
    parser.add_argument("--only", choices=("torch", "jax"), help="measure one front-end")
    parser.add_argument("--no-memory", action="store_true", help="skip the LM head's peak-memory processes")
    parser.add_argument("--threads", type=int, help="threads for fastxent and torch (default: fastxent's)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        _dispatch.set_num_threads(args.threads)
    rows: list[Row] = []
    if args.only in (None, "torch"):
        rows += torch_xent(args.repeats)
        rows.append(torch_mlp_step(args.repeats))
        rows.append(torch_lm_head(args.repeats, memory=not args.no_memory))
    if args.only in (None, "jax"):
        rows += jax_value_and_grad(args.repeats)
    print(f"threads: {_dispatch.get_num_threads()} (fastxent, torch); ratios above 1: fastxent faster")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(row) for row in rows], handle, indent=1)


if __name__ == "__main__":
    main()
