"""The benchmark's own correctness: its peers compute fastxent's values, its tables say what they measured."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastxent
from fastxent import _bench, _bench_latency, _cli
from fastxent._bench_peers import PEERS, numpy_hand_loss, numpy_hand_loss_and_grad

HERE = Path(__file__).resolve().parent
#: 2-D (the latency table's kind), one long row, 1-D logits and class axis 1 of 4-D logits.
SHAPES = [(32, 10), (1, 5000), (7,), (2, 5, 3, 4)]
#: Importing JAX or TensorFlow in the test process makes later fork tests warn: those run in a subprocess.
IN_PROCESS = {"numpy-hand", "torch"}


def _tolerance(dtype: str) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-14}


def cells(line: str) -> list[str]:
    """The cells of a printed table row (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_numpy_by_hand_computes_fastxent_values(shape, dtype):
    logits, target = _bench.make_inputs(shape, dtype)
    before = logits.copy()
    with fastxent.use_backend("numpy"):
        losses = fastxent.cross_entropy(logits, target, reduction="none")
        total, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="sum")
    np.testing.assert_allclose(numpy_hand_loss(logits, target), losses, **_tolerance(dtype))
    for reduction, expected in (("none", losses), ("sum", total)):
        loss, hand_grad = numpy_hand_loss_and_grad(logits, target, reduction)
        assert np.shape(loss) == np.shape(expected) and hand_grad.dtype == logits.dtype
        np.testing.assert_allclose(loss, expected, **_tolerance(dtype))
        np.testing.assert_allclose(hand_grad, grad, **_tolerance(dtype))
    np.testing.assert_array_equal(logits, before)


def check_peer(name: str) -> None:
    """Every formulation of peer ``name`` gives fastxent's loss or gradient, for both reductions the bench uses."""
    peer = PEERS[name]
    for shape in SHAPES:
        for dtype in ("float32", "float64"):
            logits, target = _bench.make_inputs(shape, dtype)
            with fastxent.use_backend("numpy"):
                losses = fastxent.cross_entropy(logits, target, reduction="none")
                total, grad = fastxent.cross_entropy_and_grad(logits, target, reduction="sum")
            for operation, reduction, loss in (("loss", "none", losses), ("loss+grad", "none", losses),
                                               ("loss+grad", "sum", total)):  # fmt: skip
                calls = peer.factory(operation, reduction, logits, target, 1)
                if name == "tensorflow" and logits.ndim != 2:
                    assert calls == ()
                    continue
                assert len(calls) == len(peer.formulations), (name, shape)
                for call in calls:
                    result = call()
                    if operation == "loss":
                        np.testing.assert_allclose(np.asarray(result), loss, **_tolerance(dtype))
                        continue
                    if isinstance(result, tuple):  # NumPy by hand returns the loss too
                        np.testing.assert_allclose(result[0], loss, **_tolerance(dtype))
                        result = result[1]
                    np.testing.assert_allclose(np.asarray(result), grad, **_tolerance(dtype))


@pytest.mark.parametrize("name", list(PEERS))
def test_every_formulation_of_every_peer_computes_fastxent_values(name):
    module = PEERS[name].module
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    if name not in IN_PROCESS:
        script = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_bench; test_bench.check_peer({name!r})"
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return
    torch = pytest.importorskip("torch") if name == "torch" else None
    threads = torch.get_num_threads() if torch else 0
    try:
        check_peer(name)
    finally:
        if torch:  # the peer sets torch's thread count, as the bench does
            torch.set_num_threads(threads)


def test_peers_offer_named_formulations_and_install_hints():
    assert list(PEERS)[:2] == ["torch", "numpy-hand"]
    for name, peer in PEERS.items():
        assert peer.formulations and len(set(peer.formulations)) == len(peer.formulations), name
        assert (peer.module is None) == (peer.install == ""), name
    assert len(PEERS["jax"].formulations) == 2 and any("optax" in f for f in PEERS["jax"].formulations)


def test_asv_measures_the_latency_shapes_of_the_bench():
    path = HERE.parent / "asv_bench" / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("asv_common", path)
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    assert tuple(common.LATENCY_SHAPES.values()) == _bench_latency.LATENCY_SHAPES
    assert list(common.LATENCY_SHAPES) == ["x".join(map(str, s)) for s in _bench_latency.LATENCY_SHAPES]


def test_latency_ratios_are_peer_time_over_auto_time():
    case = _bench_latency.LatencyCase(
        (32, 10),
        "float32",
        "loss",
        backends={"auto": 10.0, "cython": 9.5, "numpy": 100.0},
        peers={"torch": 30.0, "numpy-hand": 20.0},
        formulations={"torch": "F.cross_entropy", "numpy-hand": PEERS["numpy-hand"].formulations[0]},
    )
    assert case.ratio("torch") == 3.0
    header, _, row = _cli._format_latency_table([case], ["cython", "numpy"]).splitlines()
    assert cells(header) == [
        "shape", "dtype", "op", "auto", "cython", "numpy-ref", "torch", "numpy-hand", "x torch", "x numpy-hand"
    ]  # fmt: skip
    assert cells(row) == ["32x10", "float32", "loss", "10.0", "9.5", "100.0", "30.0", "20.0", "3.00", "2.00"]
    assert _cli._formulation_notes([case]) == []


def test_the_jax_formulation_measured_is_named():
    log_softmax, optax = PEERS["jax"].formulations
    assert log_softmax.startswith("jit(log_softmax") and "optax" in optax
    cases = [
        _bench_latency.LatencyCase(shape, "float32", "loss", {"auto": 1.0}, {"jax": 2.0}, {"jax": won})
        for shape, won in (((32, 10), optax), ((128, 10), log_softmax), ((256, 100), optax))
    ]
    (note,) = _cli._formulation_notes(cases)
    assert note == f"jax, the fastest of 2 formulations: {optax} in 2 rows, {log_softmax} in 1 rows."


def test_measure_latency_times_auto_each_backend_and_numpy_by_hand():
    cases = _bench_latency.measure_latency((16, 10), "float64", ["numpy"], 1, 1, ["numpy-hand"], min_seconds=0.001)
    assert [case.operation for case in cases] == ["loss", "loss+grad"]
    for case in cases:
        assert list(case.backends) == ["auto", "numpy"] and list(case.peers) == ["numpy-hand"]
        assert all(value > 0 for value in [*case.backends.values(), *case.peers.values()])
        assert case.formulations == {"numpy-hand": PEERS["numpy-hand"].formulations[0]}


def test_under_load_benchmark_times_both_thread_counts():
    from fastxent import _bench_load

    result = _bench_load.measure_under_load(shape=(64, 100), neighbours=1, seconds=3.0, calls=5)
    assert result.default_ms > 0 and result.one_thread_ms > 0
    assert result.slowdown == result.default_ms / result.one_thread_ms
    assert fastxent.get_num_threads() == result.threads
