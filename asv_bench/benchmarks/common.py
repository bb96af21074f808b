"""Shapes, inputs and the backend list shared by the benchmark classes."""

from __future__ import annotations

import time

import numpy as np

import fastxent

#: The shapes of the Numba issue's table (class axis last).
SHAPES = {
    "8192x1000": (8192, 1000),
    "1024x32000": (1024, 32000),
    "65536x10": (65536, 10),
    "256x128256": (256, 128256),
}
#: The small calls of the latency table (fastxent._bench_latency.LATENCY_SHAPES, which a test
#: keeps equal): written out because asv runs these benchmarks against older commits too.
LATENCY_SHAPES = {
    "32x10": (32, 10),
    "128x10": (128, 10),
    "256x100": (256, 100),
    "128x1000": (128, 1000),
    "1x50257": (1, 50257),
}
DTYPES = ["float32", "float64"]
BACKENDS = fastxent.available_backends()


def make_logits(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)


def make_targets(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """Class indices for logits of ``shape`` (class axis 1, or 0 for 1-D)."""
    axis = 0 if len(shape) == 1 else 1
    return np.random.default_rng(seed).integers(0, shape[axis], shape[:axis] + shape[axis + 1 :])


def gigabytes_per_second(call, nbytes: int, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Median throughput of ``call`` in GB of logits per second."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return nbytes / float(np.median(samples)) / 1e9
