"""A call's time while other processes keep every core busy: the threads-under-load benchmark.

Several training runs on one machine, DataLoader workers and Dask worker
threads all call fastxent beside other busy processes. This starts
``neighbours`` processes that loop ``cross_entropy_and_grad`` on a large
array (with their default thread count, so together they ask for more
threads than there are cores), then times one call shape in this process
with the default thread count and with one thread, alternating. A robust
default stays within ~2x of the one-thread time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import _dispatch, _xent

_NEIGHBOUR = """
import sys, time, numpy as np, fastxent
fastxent.set_backend(sys.argv[2])
x = np.random.default_rng(0).standard_normal((8192, 1000), dtype=np.float32)
y = np.zeros(8192, np.int64)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    fastxent.cross_entropy_and_grad(x, y)
"""


@dataclass
class LoadResult:
    """Median ms per call with the default threads and with one, under load."""

    shape: tuple[int, ...]
    backend: str
    neighbours: int
    neighbour_backend: str
    threads: int
    default_ms: float
    one_thread_ms: float

    @property
    def slowdown(self) -> float:
        """The default's time over one thread's: above ~2 means the default is not robust."""
        return self.default_ms / self.one_thread_ms


def measure_under_load(
    shape: tuple[int, ...] = (1024, 1000),
    backend: str = "auto",
    neighbours: int = 2,
    neighbour_backend: str = "cython",
    seconds: float = 12.0,
    calls: int = 40,
) -> LoadResult:
    """Time ``cross_entropy_and_grad`` on ``shape`` while ``neighbours`` processes loop fastxent.

    The neighbours run for ``seconds`` (they stop by themselves); rounds of
    ``calls`` calls alternate between the default thread count and one thread.
    """
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(shape, dtype=np.float32)
    target = rng.integers(0, shape[1], shape[:1] + shape[2:])
    grad = np.empty_like(logits)
    threads = _dispatch.get_num_threads()
    times: dict[int, list[float]] = {threads: [], 1: []}
    procs = [
        subprocess.Popen([sys.executable, "-c", _NEIGHBOUR, str(seconds), neighbour_backend], env=dict(os.environ))
        for _ in range(neighbours)
    ]
    try:
        with _dispatch.use_backend(backend):
            _xent.cross_entropy_and_grad(logits, target, grad_out=grad)
            time.sleep(min(4.0, seconds / 3))  # the neighbours import and warm up
            deadline = time.monotonic() + seconds * 0.6
            while time.monotonic() < deadline:
                for n in (threads, 1):
                    _dispatch.set_num_threads(n)
                    for _ in range(calls):
                        start = time.perf_counter()
                        _xent.cross_entropy_and_grad(logits, target, grad_out=grad)
                        times[n].append(time.perf_counter() - start)
    finally:
        _dispatch.set_num_threads(threads)
        for proc in procs:
            proc.wait(timeout=seconds + 60)
    return LoadResult(
        shape,
        backend,
        neighbours,
        neighbour_backend,
        threads,
        statistics.median(times[threads]) * 1e3,
        statistics.median(times[1]) * 1e3,
    )
