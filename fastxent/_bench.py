"""Throughput measurement: fastxent's backends, the machine's memory bandwidth and peers.

Throughput is always GB/s *of logits* (bytes of the logits array divided by
the time of one call), so the numbers of different operations compare
directly. ``np.sum`` over the same array measures what reading it once
costs on this machine, ``np.copyto`` what reading and writing it costs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import _dispatch, _xent

#: (shape, dtype name) of the default benchmark: the issues' table.
DEFAULT_CASES: tuple[tuple[tuple[int, ...], str], ...] = (
    ((8192, 1000), "float32"),
    ((1024, 32000), "float32"),
    ((65536, 10), "float32"),
    ((256, 128256), "float32"),
    ((8, 21, 256, 256), "float32"),
    ((8192, 1000), "float64"),
)
OPERATIONS = ("loss", "loss+grad")


@dataclass
class Case:
    """One benchmarked array: its shape, dtype and the measured GB/s."""

    shape: tuple[int, ...]
    dtype: str
    operation: str
    read_gbs: float = math.nan
    copy_gbs: float = math.nan
    backends: dict[str, float] = field(default_factory=dict)
    peers: dict[str, float] = field(default_factory=dict)

    @property
    def reference_gbs(self) -> float:
        """The bandwidth this operation is held to: one read for the loss, read+write with a gradient."""
        return self.read_gbs if self.operation == "loss" else self.copy_gbs

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def time_call(function: Callable[[], object], repeats: int, min_seconds: float = 0.02) -> float:
    """Median seconds per call over ``repeats`` samples; each sample loops until ``min_seconds``."""
    function()
    start = time.perf_counter()
    function()
    once = max(time.perf_counter() - start, 1e-9)
    loops = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            function()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def make_inputs(shape: tuple[int, ...], dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of ``shape`` (class axis 1, or 0 for 1-D) and int64 class-index targets."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    axis = 0 if len(shape) == 1 else 1
    target = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1 :])
    return logits, target


def _fastxent_call(operation: str, logits: np.ndarray, target: np.ndarray) -> Callable[[], object]:
    if operation == "loss":
        return lambda: _xent.cross_entropy(logits, target, reduction="none")
    grad_out = np.empty_like(logits)
    return lambda: _xent.cross_entropy_and_grad(logits, target, reduction="none", grad_out=grad_out)


def _torch_call(operation: str, logits: np.ndarray, target: np.ndarray, threads: int) -> Callable[[], object] | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(threads)
    x = torch.from_numpy(logits)
    t = torch.from_numpy(target)
    if operation == "loss":

        def forward() -> object:
            with torch.no_grad():
                return F.cross_entropy(x, t, reduction="none")

        return forward
    leaf = x.clone().requires_grad_(True)
    upstream = torch.ones(target.shape, dtype=x.dtype)

    def forward_backward() -> object:
        leaf.grad = None
        F.cross_entropy(leaf, t, reduction="none").backward(upstream)
        return leaf.grad

    return forward_backward


def _jax_call(operation: str, logits: np.ndarray, target: np.ndarray) -> Callable[[], object] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if logits.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    x = jnp.asarray(logits)
    t = jnp.asarray(target)

    def losses(z: Any, labels: Any) -> Any:
        log_probs = jax.nn.log_softmax(z, axis=1)
        return -jnp.take_along_axis(log_probs, jnp.expand_dims(labels, 1), axis=1).squeeze(1)

    if operation == "loss":
        compiled = jax.jit(losses)
        return lambda: compiled(x, t).block_until_ready()
    compiled_grad = jax.jit(jax.value_and_grad(lambda z, labels: jnp.sum(losses(z, labels))))  # type: ignore[no-untyped-call]
    return lambda: compiled_grad(x, t)[1].block_until_ready()


def _tensorflow_call(operation: str, logits: np.ndarray, target: np.ndarray) -> Callable[[], object] | None:
    """TensorFlow's fused sparse op (class axis last only)."""
    if logits.ndim != 2:
        return None
    try:
        import tensorflow as tf
    except ImportError:
        return None
    x = tf.constant(logits)
    t = tf.constant(target)
    if operation == "loss":
        return lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=x).numpy()

    def forward_backward() -> object:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=x)
        return tape.gradient(loss, x).numpy()

    return forward_backward


def memory_bandwidth(array: np.ndarray, repeats: int) -> tuple[float, float]:
    """GB/s of ``np.sum`` (one read) and ``np.copyto`` (read + write) over ``array``."""
    scratch = np.empty_like(array)
    read = array.nbytes / time_call(lambda: np.sum(array), repeats) / 1e9
    copy = array.nbytes / time_call(lambda: np.copyto(scratch, array), repeats) / 1e9
    return read, copy


def measure_case(
    shape: tuple[int, ...],
    dtype: str,
    backends: list[str],
    repeats: int,
    threads: int,
    with_peers: bool = True,
) -> list[Case]:
    """Measure every operation of one array; returns one :class:`Case` per operation."""
    logits, target = make_inputs(shape, dtype)
    nbytes = logits.nbytes
    read_gbs, copy_gbs = memory_bandwidth(logits, repeats)
    cases = []
    for operation in OPERATIONS:
        case = Case(shape, dtype, operation, read_gbs, copy_gbs)
        for name in backends:
            with _dispatch.use_backend(name):
                case.backends[name] = nbytes / time_call(_fastxent_call(operation, logits, target), repeats) / 1e9
        if with_peers:
            for peer, call in (
                ("torch", _torch_call(operation, logits, target, threads)),
                ("jax", _jax_call(operation, logits, target)),
                ("tensorflow", _tensorflow_call(operation, logits, target)),
            ):
                if call is not None:
                    case.peers[peer] = nbytes / time_call(call, repeats) / 1e9
        cases.append(case)
    return cases
