"""``python -m fastxent``: ``bench`` (the main job) and ``info``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence

from . import _bench, _config, _dispatch
from ._version import __version__

#: The peers ``bench`` measures when they can be imported, and how to install each.
#: torch is the version the test extra pins.
PEER_INSTALL = {
    "torch": "pip install torch==2.13.0",
    "jax": "pip install jax",
    "tensorflow": "pip install tensorflow",
}


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape looks like 8192x1000; got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs positive sizes; got {text!r}")
    return shape


def _format_table(cases: list[_bench.Case], backends: list[str]) -> str:
    """One row per shape and operation: GB/s, fraction of bandwidth, speed-up over each peer.

    Speed-ups compare the best compiled fastxent backend (the NumPy reference
    when no other was measured) with the NumPy reference and each peer.
    """
    peers = sorted({peer for case in cases for peer in case.peers})
    compiled = [name for name in backends if name != "numpy"] or backends
    references = (["numpy"] if "numpy" in backends and compiled != backends else []) + peers
    header = ["shape", "dtype", "op", "read", "copy", *backends, "best/bw", *peers]
    header += [f"x {name}" for name in references]
    rows = [header]
    for case in cases:
        best = max(case.backends[name] for name in compiled)
        speeds = {**case.peers, "numpy": case.backends.get("numpy", float("nan"))}
        rows.append(
            [
                "x".join(map(str, case.shape)),
                case.dtype,
                case.operation,
                f"{case.read_gbs:.1f}",
                f"{case.copy_gbs:.1f}",
                *(f"{case.backends[name]:.2f}" for name in backends),
                f"{best / case.reference_gbs:.2f}",
                *(f"{case.peers[peer]:.2f}" if peer in case.peers else "-" for peer in peers),
                *(f"{best / speeds[name]:.2f}" if name in speeds else "-" for name in references),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _missing_peers() -> list[str]:
    """Peers that cannot be imported, found without importing any (torch alone takes seconds)."""
    missing = []
    for name in PEER_INSTALL:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken parent package, or a module without a spec
            found = False
        if not found:
            missing.append(name)
    return missing


def _plot(cases: list[_bench.Case], backends: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{'x'.join(map(str, c.shape))} {c.dtype}\n{c.operation}" for c in cases]
    series = {**{f"fastxent {b}": [c.backends[b] for c in cases] for b in backends}}
    for peer in sorted({p for c in cases for p in c.peers}):
        series[peer] = [c.peers.get(peer, 0.0) for c in cases]
    series["memory (read / copy)"] = [c.reference_gbs for c in cases]
    figure, axes = plt.subplots(figsize=(max(8, 1.4 * len(cases)), 5))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        axes.bar([x + i * width for x in range(len(cases))], values, width, label=name)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(cases))], labels, fontsize=7)
    axes.set_ylabel("GB/s of logits")
    axes.set_title("fastxent cross-entropy throughput (higher is better)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _bench_command(args: argparse.Namespace) -> int:
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
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"fastxent bench: backends {', '.join(backends)}; {threads} threads; median of {repeats}", flush=True)
    missing = [] if args.no_peers else _missing_peers()
    if missing:
        hints = "; ".join(PEER_INSTALL[name] for name in missing)
        print(f"peers skipped, not installed: {', '.join(missing)} ({hints})", flush=True)
    cases: list[_bench.Case] = []
    start = time.perf_counter()
    for i, (shape, dtype) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {'x'.join(map(str, shape))} {dtype} ...", end="", file=sys.stderr, flush=True)
        case_start = time.perf_counter()
        try:
            cases += _bench.measure_case(shape, dtype, backends, repeats, threads, with_peers=not args.no_peers)
        except BaseException:  # Ctrl-C or an error: end the progress line before the traceback
            print(file=sys.stderr, flush=True)
            raise
        now = time.perf_counter()
        print(f" {now - case_start:.1f} s; {now - start:.1f} s elapsed", file=sys.stderr, flush=True)
    print("GB/s of logits; read = np.sum, copy = np.copyto on the same array; best/bw = best compiled")
    print("backend over read (loss) or copy (loss+grad) bandwidth; 'x NAME' = its speed-up over NAME.")
    print("reduction='none', int64 class-index targets.\n")
    print(_format_table(cases, backends))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"threads": threads, "cases": [c.as_dict() for c in cases]}, handle, indent=2)
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
        help="measure throughput against memory bandwidth and peers",
        description=(
            "Measure fastxent's cross-entropy loss and loss+grad throughput (GB/s of logits) on generated data, "
            "against np.sum / np.copyto bandwidth and against torch, jax and tensorflow where installed."
        ),
    )
    bench.add_argument("--shapes", type=_parse_shape, nargs="+", help="e.g. 8192x1000 8x21x256x256")
    bench.add_argument("--dtypes", nargs="+", choices=["float32", "float64"])
    bench.add_argument("--backends", nargs="+", choices=list(_dispatch.BACKEND_MODULES))
    bench.add_argument("--repeats", type=int, help="samples per measurement (median is reported)")
    bench.add_argument("--threads", type=int, help="threads for fastxent and the peers")
    bench.add_argument("--quick", action="store_true", help="fewer repeats, and 8x fewer rows in the default shapes")
    bench.add_argument("--no-peers", action="store_true", help="skip torch / jax / tensorflow")
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
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "info":
        _config.show_config()
        return 0
    return _bench_command(args)
