"""``python -m fastxent``: ``bench`` (the main job) and ``info``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from . import _bench, _bench_latency, _bench_load, _bench_peers, _config, _dispatch
from ._version import __version__

T = TypeVar("T")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape looks like 8192x1000; got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs positive sizes; got {text!r}")
    return shape


def _label(backend: str) -> str:
    """A backend's column: ``numpy-ref`` for the reference backend, apart from the ``numpy-hand`` peer."""
    return "numpy-ref" if backend == "numpy" else backend


def _peer_order(cases: Sequence[_bench.Case | _bench_latency.LatencyCase]) -> list[str]:
    """The peers measured in any of ``cases``, in the order of the peer table."""
    return [name for name in _bench_peers.PEERS if any(name in case.peers for case in cases)]


def _render(rows: list[list[str]]) -> str:
    """Right-aligned columns under a dashed rule."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _format_table(cases: list[_bench.Case], backends: list[str]) -> str:
    """One row per shape and operation: GB/s, fraction of bandwidth, speed-up over each peer.

    Speed-ups compare the best compiled fastxent backend (the NumPy reference
    when no other was measured) with each peer.
    """
    peers = _peer_order(cases)
    compiled = [name for name in backends if name != "numpy"] or backends
    header = ["shape", "dtype", "op", "read", "copy", *map(_label, backends), "auto", "auto/best", "best/bw", *peers]
    header += [f"x {name}" for name in peers]
    rows = [header]
    for case in cases:
        best = max(case.backends[name] for name in compiled)
        auto = case.backends.get(case.auto)
        rows.append(
            [
                "x".join(map(str, case.shape)),
                case.dtype,
                case.operation,
                f"{case.read_gbs:.1f}",
                f"{case.copy_gbs:.1f}",
                *(f"{case.backends[name]:.2f}" for name in backends),
                _label(case.auto),
                "-" if auto is None else f"{auto / best:.2f}",
                f"{best / case.reference_gbs:.2f}",
                *(f"{case.peers[peer]:.2f}" if peer in case.peers else "-" for peer in peers),
                *(f"{best / case.peers[peer]:.2f}" if peer in case.peers else "-" for peer in peers),
            ]
        )
    return _render(rows)


def _microseconds(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _format_latency_table(cases: list[_bench_latency.LatencyCase], backends: list[str]) -> str:
    """One row per shape and operation: µs per call of fastxent and each peer, then each peer over ``auto``."""
    peers = _peer_order(cases)
    header = ["shape", "dtype", "op", "auto", *map(_label, backends), *peers, *(f"x {name}" for name in peers)]
    rows = [header]
    for case in cases:
        rows.append(
            [
                "x".join(map(str, case.shape)),
                case.dtype,
                case.operation,
                *(_microseconds(case.backends[name]) for name in ("auto", *backends)),
                *(_microseconds(case.peers[peer]) if peer in case.peers else "-" for peer in peers),
                *(f"{case.ratio(peer):.2f}" if peer in case.peers else "-" for peer in peers),
            ]
        )
    return _render(rows)


def _formulation_notes(cases: Sequence[_bench.Case | _bench_latency.LatencyCase]) -> list[str]:
    """Which formulation was measured, for each peer that offers more than one."""
    notes = []
    for peer in _peer_order(cases):
        if len(_bench_peers.PEERS[peer].formulations) > 1:
            won = Counter(case.formulations[peer] for case in cases if peer in case.formulations)
            counts = ", ".join(f"{name} in {count} rows" for name, count in won.most_common())
            notes.append(f"{peer}, the fastest of {len(_bench_peers.PEERS[peer].formulations)} formulations: {counts}.")
    return notes


def _missing_peers() -> list[str]:
    """Peers that cannot be imported, found without importing any (torch alone takes seconds)."""
    missing = []
    for name, peer in _bench_peers.PEERS.items():
        if peer.module is None:
            continue
        try:
            found = importlib.util.find_spec(peer.module) is not None
        except (ImportError, ValueError):  # a broken parent package, or a module without a spec
            found = False
        if not found:
            missing.append(name)
    return missing


def _plot(cases: list[_bench.Case], backends: list[str], path: str) -> None:
    """A bar chart of GB/s: one panel per operation, a group of bars per shape and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    operations = list(dict.fromkeys(c.operation for c in cases))
    shapes = max(sum(c.operation == operation for c in cases) for operation in operations)
    figure, panels = plt.subplots(
        len(operations), 1, figsize=(max(8, 1.4 * shapes), 3 * len(operations)), squeeze=False
    )
    peers = _peer_order(cases)
    for panel, operation in zip(panels[:, 0], operations):
        chosen = [c for c in cases if c.operation == operation]
        series = {f"fastxent {_label(b)}": [c.backends[b] for c in chosen] for b in backends}
        for peer in peers:
            series[peer] = [c.peers.get(peer, 0.0) for c in chosen]
        series["memory (read / copy)"] = [c.reference_gbs for c in chosen]
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series.items()):
            panel.bar([x + i * width for x in range(len(chosen))], values, width, label=name)
        labels = [f"{'x'.join(map(str, c.shape))} {c.dtype}" for c in chosen]
        panel.set_xticks([x + 0.4 - width / 2 for x in range(len(chosen))], labels, fontsize=7)
        panel.set_ylabel("GB/s of logits")
        panel.set_title(f"{operation} (higher is better)", fontsize=10)
    panels[0, 0].legend(fontsize=7, ncol=2)
    figure.suptitle("fastxent throughput")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _progress(
    label: str, plan: list[tuple[tuple[int, ...], str]], measure: Callable[[tuple[int, ...], str], list[T]]
) -> list[T]:
    """Measure each case of ``plan``, with a timed progress line per case on stderr."""
    results: list[T] = []
    start = time.perf_counter()
    for i, (shape, dtype) in enumerate(plan, 1):
        print(f"[{label}{i}/{len(plan)}] {'x'.join(map(str, shape))} {dtype} ...", end="", file=sys.stderr, flush=True)
        case_start = time.perf_counter()
        try:
            results += measure(shape, dtype)
        except BaseException:  # Ctrl-C or an error: end the progress line before the traceback
            print(file=sys.stderr, flush=True)
            raise
        now = time.perf_counter()
        print(f" {now - case_start:.1f} s; {now - start:.1f} s elapsed", file=sys.stderr, flush=True)
    return results


def _under_load_command(args: argparse.Namespace) -> int:
    print("cross_entropy_and_grad at 1024x1000 float32 while 2 processes loop fastxent on 8192x1000 (~12 s)")
    rows = [["backend", "neighbours'", "threads", "ms/call", "1 thread", "slowdown"]]
    for backend in args.backends or ["auto", *_dispatch.available_backends()]:
        for neighbour in ("cython", "numba"):
            if neighbour not in _dispatch.available_backends():
                continue
            result = _bench_load.measure_under_load(backend=backend, neighbour_backend=neighbour)
            rows.append(
                [backend, neighbour, str(result.threads), f"{result.default_ms:.2f}", f"{result.one_thread_ms:.2f}",
                 f"{result.slowdown:.2f}"]
            )  # fmt: skip
            print(_render(rows[:1] + rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_render(rows))
    return 0


def _bench_command(args: argparse.Namespace) -> int:
    if args.under_load:
        return _under_load_command(args)
    if args.dask:
        from . import _bench_dask  # imports dask: only when asked for

        return _bench_dask.main([])
    if args.threads is not None:
        _dispatch.set_num_threads(args.threads)
    threads = _dispatch.get_num_threads()
    backends = args.backends or _dispatch.available_backends()
    dtypes = args.dtypes
    if args.shapes:
        plan = [(shape, dtype) for shape in args.shapes for dtype in dtypes or ["float32"]]
    else:
        plan = [(s, d) for s, d in _bench.DEFAULT_CASES if not dtypes or d in dtypes]
        if args.quick:
            plan = [((max(1, s[0] // 8), *s[1:]), d) for s, d in plan]
    latency_shapes = args.latency_shapes or _bench_latency.LATENCY_SHAPES
    latency_plan = [(shape, dtype) for shape in latency_shapes for dtype in dtypes or _bench_latency.LATENCY_DTYPES]
    if args.latency_only:
        plan = []
    if args.no_latency:
        latency_plan = []
    repeats = args.repeats or (3 if args.quick else 7)
    # Samples of a few ms are enough to see a few-µs call hundreds of times.
    sample_seconds = 0.005 if args.quick else 0.02
    print(f"fastxent bench: backends {', '.join(backends)}; {threads} threads; median of {repeats}", flush=True)
    peers = list(_bench_peers.BUILTIN_PEERS if args.no_peers else _bench_peers.PEERS)
    missing = [] if args.no_peers else _missing_peers()
    if missing:
        hints = "; ".join(_bench_peers.PEERS[name].install for name in missing)
        print(f"peers skipped, not installed: {', '.join(missing)} ({hints})", flush=True)
        peers = [name for name in peers if name not in missing]
    cases = _progress(
        "", plan, lambda shape, dtype: _bench.measure_case(shape, dtype, backends, repeats, threads, peers)
    )
    if cases:
        print("GB/s of logits; read = np.sum, copy = np.copyto on the same array; best/bw = best compiled")
        print(
            "backend over read (loss, logsumexp) or copy (loss+grad, softmax, log_softmax) bandwidth; "
            "'x NAME' = its speed-up over NAME."
        )
        print("auto = the backend fastxent picks for the case (its measured table); auto/best = that backend's")
        print("GB/s over the best backend's in this run.")
        print("numpy-ref = fastxent's NumPy reference backend; numpy-hand = each operation written by hand in")
        print("NumPy (max-shift, exp, sum, log; softmax - one-hot). reduction='none', int64 class-index targets.\n")
        print(_format_table(cases, backends))
        for note in _formulation_notes(cases):
            print(note)
        print("\n" if latency_plan else "", end="", flush=True)
    latency = _progress(
        "latency ",
        latency_plan,
        lambda shape, dtype: _bench_latency.measure_latency(
            shape, dtype, backends, repeats, threads, peers, sample_seconds
        ),
    )
    if latency:
        print("µs per call (median); loss = cross_entropy(x, y, reduction='none'); loss+grad =")
        print("cross_entropy_and_grad(x, y, reduction='sum'), allocating the gradient; auto = fastxent's own")
        print("choice; 'x NAME' = NAME's time over auto's (above 1: fastxent is faster).\n")
        print(_format_latency_table(latency, backends))
        for note in _formulation_notes(latency):
            print(note)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            data = {
                "threads": threads,
                "cases": [c.as_dict() for c in cases],
                "latency_us": [c.as_dict() for c in latency],
            }
            json.dump(data, handle, indent=2)
    if args.plot:
        _plot(cases, backends, args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Plain text: argparse prints descriptions as they are, so no reST markup here.
    parser = argparse.ArgumentParser(
        prog="python -m fastxent",
        description="fastxent's command line: bench (the main job) measures throughput; info reports the setup.",
    )
    parser.add_argument("--version", action="version", version=f"fastxent {__version__}")
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser(
        "bench",
        help="measure throughput and latency against memory bandwidth and peers",
        description=(
            "Measure fastxent's cross-entropy loss and loss+grad throughput (GB/s of logits) on generated data, "
            "against np.sum / np.copyto bandwidth, then the latency (µs per call) of small calls; both against "
            "NumPy written by hand and against torch, jax and tensorflow where installed."
        ),
    )
    bench.add_argument("--shapes", type=_parse_shape, nargs="+", help="GB/s table shapes, e.g. 8192x1000 8x21x256x256")
    default_latency = " ".join("x".join(map(str, shape)) for shape in _bench_latency.LATENCY_SHAPES)
    bench.add_argument(
        "--latency-shapes", type=_parse_shape, nargs="+", help=f"latency table shapes (default {default_latency})"
    )
    only = bench.add_mutually_exclusive_group()
    only.add_argument("--no-latency", action="store_true", help="skip the latency table")
    only.add_argument("--latency-only", action="store_true", help="only the latency table")
    bench.add_argument("--dtypes", nargs="+", choices=["float32", "float64"])
    bench.add_argument("--backends", nargs="+", choices=list(_dispatch.BACKEND_MODULES))
    bench.add_argument("--repeats", type=int, help="samples per measurement (median is reported)")
    bench.add_argument("--threads", type=int, help="threads for fastxent and the peers")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, 8x fewer rows in the default GB/s shapes, shorter latency samples",
    )
    bench.add_argument(
        "--no-peers", action="store_true", help="skip torch / jax / tensorflow (NumPy by hand is still measured)"
    )
    bench.add_argument(
        "--dask",
        action="store_true",
        help="instead: fastxent.dask on a LocalCluster, out of core (options: python -m fastxent._bench_dask --help)",
    )
    bench.add_argument(
        "--under-load",
        action="store_true",
        help="instead: time a call with default threads and with one while 2 other processes loop fastxent",
    )
    bench.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    bench.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")
    commands.add_parser(
        "info",
        help="versions, CPU features, threads and backends",
        description="Print versions, CPU features, threads and backends, and why any backend is unavailable.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench" and args.plot and args.latency_only:
        parser.error("--plot draws the GB/s table, which --latency-only skips")
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "info":
        _config.show_config()
        return 0
    return _bench_command(args)
