"""``python -m fastxent._bench_dask``: :mod:`fastxent.dask` on a ``distributed.LocalCluster``.

Two measurements, each on a fresh loopback cluster of worker processes
with one thread each and a memory limit per worker:

``in-memory``
    A float32 array of ``--in-memory-gb`` GB held in the workers' memory
    (generated there from a seed, then persisted): the mean cross-entropy
    through the cluster against plain :func:`fastxent.cross_entropy` on the
    same array in this process (all its threads), and Dask's threaded
    scheduler on that NumPy array (fastxent at one thread per task).
``out-of-core``
    The mean cross-entropy of ``--gb`` GB of float32 logits that are generated
    lazily, block by block, from a seed (``dask.array.random``) and dropped
    after use: more than the machine's memory. Reports throughput (GB/s of
    logits, generation included, and generation alone), each worker's peak
    resident memory, bytes spilled to disk and whether any worker restarted.

Throughput is GB/s *of logits* (1 GB = 1e9 bytes), as ``python -m fastxent bench``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _dispatch, _xent

GB = 1e9


def _peak_rss() -> int:
    """This process's peak resident memory in bytes since it started.

    Linux's ``VmHWM``: ``getrusage``'s ``ru_maxrss`` would include the peak
    of the process that spawned the worker (the kernel carries it over exec).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _spilled(dask_worker: Any) -> int:
    """Bytes this worker has spilled to disk (0 where its store does not spill)."""
    total = getattr(dask_worker.data, "spilled_total", None)
    return 0 if total is None else int(total.disk)


def _generated_bytes(block: np.ndarray) -> np.ndarray:
    """A block's size, so that a graph generates every block and keeps only numbers."""
    return np.array([[block.nbytes]], dtype=np.int64)


def _median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _problem(gb: float, n_classes: int, chunk_mb: float, seed: int) -> tuple[Any, Any]:
    """Lazily generated float32 logits of about ``gb`` GB (uniform in [0, 8)) and their class indices."""
    import dask.array as da

    n_rows = max(1, round(gb * GB / (4 * n_classes)))
    rows = max(1, min(n_rows, int(chunk_mb * 2**20 // (4 * n_classes))))
    logits = 8 * da.random.default_rng(seed).random((n_rows, n_classes), dtype=np.float32, chunks=(rows, n_classes))
    target = da.random.default_rng(seed + 1).integers(0, n_classes, n_rows, chunks=rows)
    return logits, target


def _cluster(workers: int, memory_limit: str) -> Any:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        memory_limit=memory_limit,
    )
    return Client(cluster)


def _dashboard(client: Any) -> str:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"{client.dashboard_link} (not served: the dashboard needs bokeh)"
    return str(client.dashboard_link)


def in_memory(args: argparse.Namespace, threads: int) -> dict[str, float]:
    """The cluster on a persisted array against plain fastxent (``threads`` threads) on the same array here.

    The three are timed in turn, ``--repeats`` rounds, so that a busy machine
    slows each of them alike; the medians are reported.
    """
    import dask
    import dask.array as da

    from . import dask as fdask

    logits, target = _problem(args.in_memory_gb, args.classes, args.in_memory_chunk_mb, args.seed)
    nbytes = logits.nbytes
    print(
        f"in-memory: {nbytes / GB:.2f} GB float32 logits {logits.shape}, {logits.numblocks[0]} blocks, "
        f"{args.workers} workers x 1 thread",
        flush=True,
    )
    # The same blocks from the same seeds, generated here (gathering them from the workers would
    # concatenate them on one worker first).
    x, labels = dask.compute(logits, target, scheduler="threads")
    client = _cluster(args.workers, args.memory_limit)
    try:
        held_logits, held_target = client.persist([logits, target])
        on_cluster = fdask.cross_entropy(held_logits, held_target)
        threaded = fdask.cross_entropy(da.from_array(x, chunks=logits.chunks), da.from_array(labels, target.chunks))

        def run_threaded() -> Any:
            _dispatch.set_num_threads(1)
            try:
                return threaded.compute(scheduler="threads", num_workers=threads)
            finally:
                _dispatch.set_num_threads(threads)

        runs: dict[str, Callable[[], Any]] = {
            "plain": lambda: _xent.cross_entropy(x, labels),
            "cluster": on_cluster.compute,
            "threaded": run_threaded,
        }
        values = {name: float(run()) for name, run in runs.items()}  # also the warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(_median_seconds(run, 1))
    finally:
        client.close()
        client.cluster.close()
    gbs = {name: nbytes / statistics.median(seconds) / GB for name, seconds in times.items()}
    result = {f"{name}_gbs": value for name, value in gbs.items()}
    result["relative_difference"] = abs(values["cluster"] - values["plain"]) / abs(values["plain"])
    print(f"  plain fastxent.cross_entropy ({threads} threads): {gbs['plain']:.2f} GB/s", flush=True)
    print(
        f"  fastxent.dask on the cluster (persisted): {gbs['cluster']:.2f} GB/s "
        f"= {gbs['cluster'] / gbs['plain']:.2f}x plain"
    )
    print(
        f"  fastxent.dask, threaded scheduler on the NumPy array ({threads} tasks x 1 thread): "
        f"{gbs['threaded']:.2f} GB/s = {gbs['threaded'] / gbs['plain']:.2f}x plain"
    )
    print(
        f"  loss {values['cluster']:.7f} (plain {values['plain']:.7f}, "
        f"relative difference {result['relative_difference']:.1e})",
        flush=True,
    )
    return result


def out_of_core(args: argparse.Namespace) -> dict[str, float]:
    """The mean cross-entropy of lazily generated logits larger than the machine's memory."""
    from . import dask as fdask

    logits, target = _problem(args.gb, args.classes, args.chunk_mb, args.seed)
    nbytes = logits.nbytes
    print(
        f"out-of-core: {nbytes / GB:.1f} GB float32 logits {logits.shape} generated lazily from seed {args.seed}, "
        f"{logits.numblocks[0]} blocks of {logits.chunks[0][0] * 4 * args.classes / 2**20:.0f} MiB, "
        f"{args.workers} workers x 1 thread, memory limit {args.memory_limit} each",
        flush=True,
    )
    client = _cluster(args.workers, args.memory_limit)
    try:
        print(f"  dashboard: {_dashboard(client)}", flush=True)
        pids = client.run(os.getpid)
        start = time.perf_counter()
        loss = float(fdask.cross_entropy(logits, target).compute())
        seconds = time.perf_counter() - start
        peaks = client.run(_peak_rss)
        spilled = client.run(_spilled)
        restarted = client.run(os.getpid) != pids
        generation = -1.0
        if not args.skip_generation:
            start = time.perf_counter()
            logits.map_blocks(
                _generated_bytes, chunks=((1,) * logits.numblocks[0], (1,)), dtype=np.int64
            ).sum().compute()
            generation = time.perf_counter() - start
    finally:
        client.close()
        client.cluster.close()
    result = {
        "gb": nbytes / GB,
        "seconds": seconds,
        "gbs": nbytes / seconds / GB,
        "peak_worker_gb": max(peaks.values()) / GB,
        "spilled_gb": sum(spilled.values()) / GB,
        "restarted": float(restarted),
        "loss": loss,
    }
    print(f"  mean cross-entropy {loss:.6f} in {seconds:.1f} s: {result['gbs']:.2f} GB/s of logits", flush=True)
    if generation > 0:
        print(f"  generating the logits alone: {nbytes / generation / GB:.2f} GB/s ({generation:.1f} s)")
    print(
        "  peak worker memory: "
        + ", ".join(f"{peak / GB:.2f} GB" for peak in peaks.values())
        + f"; spilled to disk: {result['spilled_gb']:.2f} GB; workers restarted: {'yes' if restarted else 'no'}"
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastxent._bench_dask",
        description="fastxent.dask on a distributed.LocalCluster: in-memory and out-of-core mean cross-entropy.",
    )
    parser.add_argument("--gb", type=float, default=2**35 / GB, help="out-of-core logits in GB (default 32 GiB)")
    parser.add_argument("--in-memory-gb", type=float, default=2.0, help="in-memory comparison size in GB")
    parser.add_argument("--classes", type=int, default=32768, help="number of classes (columns)")
    parser.add_argument("--chunk-mb", type=float, default=64.0, help="out-of-core: MiB of logits per block of rows")
    parser.add_argument(
        "--in-memory-chunk-mb",
        type=float,
        default=512.0,
        help="in-memory: MiB per block (two per worker: 256 MiB blocks measured 0.69-0.74x plain, 512 MiB 0.76-0.82x)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--memory-limit", default="4GB", help="memory limit per worker")
    parser.add_argument("--repeats", type=int, default=3, help="in-memory timings: median of this many")
    parser.add_argument("--seed", type=int, default=0)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--in-memory-only", action="store_true", help="skip the out-of-core run")
    only.add_argument("--out-of-core-only", action="store_true", help="skip the in-memory comparison")
    parser.add_argument("--skip-generation", action="store_true", help="do not time the generation alone")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Resolved before any cluster starts: Dask's nanny sets OMP_NUM_THREADS=1 in this process too.
    threads = _dispatch.get_num_threads()
    _dispatch.set_num_threads(threads)
    if not args.out_of_core_only:
        in_memory(args, threads)
    if not args.in_memory_only:
        out_of_core(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
