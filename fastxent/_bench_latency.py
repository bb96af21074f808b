"""Latency of small calls: microseconds per call, where fixed costs (checks, dispatch, allocation) weigh.

The calls are what a training step on a small batch makes:

- ``"loss"``: ``cross_entropy(x, y, reduction="none")``;
- ``"loss+grad"``: ``cross_entropy_and_grad(x, y, reduction="sum")``,
  allocating the gradient.

fastxent is timed as ``auto`` (what a user gets) and with each backend; the
peers of :data:`fastxent._bench_peers.PEERS` compute the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _bench, _bench_peers, _dispatch, _xent

#: (n_samples, n_classes) of the latency table (the "Small calls" issue).
LATENCY_SHAPES: tuple[tuple[int, ...], ...] = ((32, 10), (128, 10), (256, 100), (128, 1000), (1, 50257))
LATENCY_DTYPES = ("float32", "float64")
#: The reduction of each operation, for fastxent and the peers alike.
REDUCTIONS = {"loss": "none", "loss+grad": "sum"}


@dataclass
class LatencyCase:
    """One shape, dtype and operation: microseconds per call of fastxent and of each peer."""

    shape: tuple[int, ...]
    dtype: str
    operation: str
    #: ``auto`` first, then each backend measured.
    backends: dict[str, float] = field(default_factory=dict)
    peers: dict[str, float] = field(default_factory=dict)
    #: The formulation measured for each peer (the fastest of those it offers).
    formulations: dict[str, str] = field(default_factory=dict)

    def ratio(self, peer: str) -> float:
        """The peer's time over fastxent ``auto``'s: above 1, fastxent is faster."""
        return self.peers[peer] / self.backends["auto"]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def latency_call(operation: str, logits: np.ndarray, target: np.ndarray) -> Callable[[], object]:
    """The fastxent call of ``operation``, under whichever backend is in force when it runs."""
    if operation == "loss":
        return lambda: _xent.cross_entropy(logits, target, reduction="none")
    return lambda: _xent.cross_entropy_and_grad(logits, target, reduction="sum")


def measure_latency(
    shape: tuple[int, ...],
    dtype: str,
    backends: Sequence[str],
    repeats: int,
    threads: int,
    peers: Sequence[str] = tuple(_bench_peers.PEERS),
    min_seconds: float = 0.02,
) -> list[LatencyCase]:
    """Median microseconds per call of every operation on one array; one :class:`LatencyCase` each.

    Each of the ``repeats`` samples loops over the call for ``min_seconds``.
    """
    logits, target = _bench.make_inputs(shape, dtype)
    cases = []
    for operation, reduction in REDUCTIONS.items():
        case = LatencyCase(shape, dtype, operation)
        for name in ("auto", *backends):
            with _dispatch.use_backend(name):
                seconds = _bench.time_call(latency_call(operation, logits, target), repeats, min_seconds)
            case.backends[name] = seconds * 1e6
        measured = _bench.measure_peers(operation, reduction, logits, target, threads, peers, repeats, min_seconds)
        for peer, (seconds, formulation) in measured.items():
            case.peers[peer] = seconds * 1e6
            case.formulations[peer] = formulation
        cases.append(case)
    return cases
