"""Throughput measurement: fastxent's backends, the machine's memory bandwidth and peers.

Throughput is always GB/s *of logits* (bytes of the logits array divided by
the time of one call), so the numbers of different operations compare
directly. ``np.sum`` over the same array measures what reading it once
costs on this machine, ``np.copyto`` what reading and writing it costs.
The peers are :data:`fastxent._bench_peers.PEERS`; the latency (µs per call)
table of small calls is :mod:`fastxent._bench_latency`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _bench_peers, _dispatch, _normalize, _xent

#: (shape, dtype name) of the default benchmark: the issues' table.
DEFAULT_CASES: tuple[tuple[tuple[int, ...], str], ...] = (
    ((8192, 1000), "float32"),
    ((1024, 32000), "float32"),
    ((65536, 10), "float32"),
    ((65536, 32), "float32"),
    ((65536, 10), "float64"),
    ((65536, 32), "float64"),
    ((256, 128256), "float32"),
    ((8, 21, 256, 256), "float32"),
    ((8192, 1000), "float64"),
)
OPERATIONS = ("loss", "loss+grad", "softmax", "log_softmax", "logsumexp")
#: Pause before timing a backend (see :func:`measure_case`).
SETTLE_SECONDS = 0.1
#: The operations that only read the logits (held to ``np.sum``); the others also write an array of
#: theirs (held to ``np.copyto``).
READ_ONLY = ("loss", "logsumexp")


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
    #: The formulation measured for each peer (the fastest of those it offers).
    formulations: dict[str, str] = field(default_factory=dict)
    #: The backend ``auto`` picks for this case (its speed is that backend's column).
    auto: str = ""

    @property
    def reference_gbs(self) -> float:
        """The bandwidth this operation is held to: one read (loss, logsumexp), else a read and a write."""
        return self.read_gbs if self.operation in READ_ONLY else self.copy_gbs

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def time_call(function: Callable[[], object], repeats: int, min_seconds: float = 0.02) -> float:
    """Median seconds per call over ``repeats`` samples; each sample loops until ``min_seconds``.

    The loop count comes from the fastest of up to three single calls: one call
    stalled by the scheduler would otherwise leave every sample a single call.
    """
    function()
    once = math.inf
    spent = 0.0
    for _ in range(3):
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        once, spent = min(once, elapsed), spent + elapsed
        if spent > min_seconds:
            break
    loops = max(1, int(min_seconds / max(once, 1e-9)))
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
    # An array result goes to a buffer made once (the peers allocate theirs; the latency table does too).
    axis = 0 if logits.ndim == 1 else 1
    if operation == "loss":
        return lambda: _xent.cross_entropy(logits, target, reduction="none")
    if operation == "logsumexp":
        return lambda: _normalize.logsumexp(logits, axis=axis)
    out = np.empty_like(logits)
    if operation == "softmax":
        return lambda: _normalize.softmax(logits, axis=axis, out=out)
    if operation == "log_softmax":
        return lambda: _normalize.log_softmax(logits, axis=axis, out=out)
    return lambda: _xent.cross_entropy_and_grad(logits, target, reduction="none", grad_out=out)


def fastest_peer(
    calls: _bench_peers.Calls, formulations: tuple[str, ...], repeats: int, min_seconds: float
) -> tuple[float, str] | None:
    """Seconds per call of the fastest of a peer's formulations, and its name; None when it has none."""
    if not calls:
        return None
    return min((time_call(call, repeats, min_seconds), name) for call, name in zip(calls, formulations))


def measure_peers(
    operation: str,
    reduction: str,
    logits: np.ndarray,
    target: np.ndarray,
    threads: int,
    peers: Sequence[str],
    repeats: int,
    min_seconds: float = 0.02,
) -> dict[str, tuple[float, str]]:
    """Seconds per call and the formulation measured, for each of ``peers`` that can run here."""
    measured = {}
    for name in peers:
        peer = _bench_peers.PEERS[name]
        calls = peer.factory(operation, reduction, logits, target, threads)
        result = fastest_peer(calls, peer.formulations, repeats, min_seconds)
        if result is not None:
            measured[name] = result
    return measured


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
    peers: Sequence[str] = tuple(_bench_peers.PEERS),
) -> list[Case]:
    """Measure every operation of one array; returns one :class:`Case` per operation.

    ``loss+grad`` is timed with ``reduction="none"`` (the peers use an upstream
    gradient of ones, which gives the same gradient); softmax, log_softmax
    and logsumexp along the class axis.
    """
    logits, target = make_inputs(shape, dtype)
    nbytes = logits.nbytes
    read_gbs, copy_gbs = memory_bandwidth(logits, repeats)
    cases = []
    for operation in OPERATIONS:
        case = Case(shape, dtype, operation, read_gbs, copy_gbs)
        for name in backends:
            # The peers' thread pools spin a while after their calls (torch's OpenMP: fastxent ~15 % slower
            # right after a torch call on two cores): let them park first.
            time.sleep(SETTLE_SECONDS)
            with _dispatch.use_backend(name):
                case.backends[name] = nbytes / time_call(_fastxent_call(operation, logits, target), repeats) / 1e9
        # After the backends ran: what auto picks once they are started (it starts a JIT backend only after
        # enough calls, see fastxent._dispatch.AUTO_JIT_AFTER_SECONDS).
        with _dispatch.use_backend("auto"):
            case.auto = _dispatch.get_backend(logits, operation=operation, axis=0 if logits.ndim == 1 else 1)
        for peer, (seconds, formulation) in measure_peers(
            operation, "none", logits, target, threads, peers, repeats
        ).items():
            case.peers[peer] = nbytes / seconds / 1e9
            if operation not in _bench_peers.NORMALIZERS:  # each peer has one call for these
                case.formulations[peer] = formulation
        cases.append(case)
    return cases
