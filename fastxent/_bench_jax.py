"""The JAX front-end's goal, measured: ``jax.jit(jax.value_and_grad(mean loss))`` of fastxent.jax and optax.

Each contender runs in a process of its own, and the processes alternate
(round after round, the order rotating), so that all see the same load. In
one process, the contenders' calls would change each other's timings
through the allocator rather than the CPU: every call of a jitted
value-and-gradient gets fresh output buffers from ``malloc``, and whether
those are pages already faulted in depends on what was freed just before.
Interleaved in one process, optax's 8192 x 1000 step took 4.7-14 ms from
run to run with up to 136,000 page faults per sample (docs/frontends.md);
a training loop repeats one step, which is what each process here does.

``python -m fastxent._bench_jax NAME ROWS CLASSES SAMPLES`` is one
contender's process; it prints its median seconds per call as JSON.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from ._bench_frontends import interleaved

CONTENDERS = ("fastxent", "optax", "pure_callback")


@functools.cache
def pure_callback_loss() -> Callable[..., object]:
    """fastxent.jax's integer-label loss with ``jax.pure_callback`` in place of the FFI call (same VJP)."""
    import jax

    from . import _xent

    def host(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loss, grad = _xent.cross_entropy_and_grad(np.asarray(logits), np.asarray(labels), reduction="none")
        return np.asarray(loss), grad

    def call(logits, labels):  # type: ignore[no-untyped-def]
        shapes = (jax.ShapeDtypeStruct(labels.shape, logits.dtype), jax.ShapeDtypeStruct(logits.shape, logits.dtype))
        return jax.pure_callback(host, shapes, logits, labels, vmap_method="broadcast_all")

    @jax.custom_vjp
    def loss(logits, labels):  # type: ignore[no-untyped-def]
        return call(logits, labels)[0]

    def forward(logits, labels):  # type: ignore[no-untyped-def]
        value, grad = call(logits, labels)
        return value, grad

    def backward(grad, cotangent):  # type: ignore[no-untyped-def]
        return grad * cotangent[:, None], None

    loss.defvjp(forward, backward)
    return loss  # type: ignore[no-any-return]


def _loss(name: str) -> Callable[..., object]:
    if name == "fastxent":
        import fastxent.jax

        return fastxent.jax.softmax_cross_entropy_with_integer_labels
    if name == "optax":
        import optax

        return optax.softmax_cross_entropy_with_integer_labels  # type: ignore[no-any-return]
    return pure_callback_loss()


def time_step(
    name: str, rows: int, classes: int, samples: int, min_seconds: float = 0.05, warm_up: float = 0.3
) -> float:
    """Median seconds per call of the jitted value-and-gradient of ``name``'s mean loss (in this process)."""
    import jax

    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((rows, classes), dtype=np.float32))
    y = jax.numpy.asarray(rng.integers(0, classes, rows).astype(np.int32))
    loss = _loss(name)
    step = jax.jit(jax.value_and_grad(lambda a, b: loss(a, b).mean()))  # type: ignore[attr-defined]
    start = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - start < warm_up:  # compiled, threads started, pages in use
        jax.block_until_ready(step(x, y))
        calls += 1
    return interleaved({name: lambda: jax.block_until_ready(step(x, y))}, samples, min_seconds)[name]


def alternated(shape: tuple[int, int], rounds: int, samples: int = 5) -> dict[str, float]:
    """Median over ``rounds`` of each contender's process (its own median of ``samples``), in rotating order."""
    from . import _dispatch

    environment = os.environ | {"FASTXENT_NUM_THREADS": str(_dispatch.get_num_threads())}
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for round_ in range(rounds):
        order = CONTENDERS[round_ % len(CONTENDERS) :] + CONTENDERS[: round_ % len(CONTENDERS)]
        for name in order:
            command = [sys.executable, "-m", __name__, name, *map(str, shape), str(samples)]
            done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{name} at {shape} failed:\n{done.stderr.strip()}")
            times[name].append(float(json.loads(done.stdout.strip().splitlines()[-1])))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    name, rows, classes, samples = argv if argv is not None else sys.argv[1:]
    print(json.dumps(time_step(name, int(rows), int(classes), int(samples))))


if __name__ == "__main__":
    main()
