"""fastxent.dask against the in-memory functions: synchronous, threaded and a real LocalCluster.

The comparisons run once per backend (the ``backend`` fixture of
``tests/conftest.py``, in force through ``fastxent.use_backend``) against the
in-memory function under the same backend, on Dask's synchronous and
threaded schedulers; a cluster's workers are checked to run the caller's
backend too.

``FASTXENT_REQUIRE_FRONTENDS=dask`` makes a missing Dask (or distributed)
fail this module instead of skipping it (``tests/frontends.py``).
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from frontends import require_frontend

import fastxent
from fastxent import _dispatch
from fastxent._linear import linear_cross_entropy as np_linear_cross_entropy

dask = require_frontend("dask")
da = require_frontend("dask", "dask.array")
distributed = require_frontend("dask", "distributed")
fd = require_frontend("dask", "fastxent.dask")
InBackend = require_frontend("dask", "fastxent.dask._tasks").InBackend

SYNC = {"scheduler": "sync"}
OPTIONS = [
    {},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"weight": True, "label_smoothing": 0.2, "z_loss": 0.1, "softcap": 2.0},
]
OPTION_IDS = ["plain", "weight", "smoothing", "z_loss", "softcap", "all"]


@pytest.fixture(params=["sync", "threads"])
def scheduler(request):
    """``compute`` arguments: Dask's synchronous scheduler, or its threaded one with two workers."""
    return SYNC if request.param == "sync" else {"scheduler": "threads", "num_workers": 2}


def _problem(shape=(37, 50), dtype=np.float32, seed=0, ignore=(3,)):
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal(shape)).astype(dtype)
    target = rng.integers(0, shape[1], shape[:1] + shape[2:])
    target.reshape(-1)[list(ignore)] = -100
    weight = rng.random(shape[1]).astype(dtype) + 0.5
    return x, target, weight


def _kwargs(options, weight):
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = weight
    return kwargs


def _close(actual, expected, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol)


def test_import_fastxent_does_not_import_dask():
    code = "import sys, fastxent; print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# Rows in chunks, the class axis in one chunk (synchronous scheduler)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_rows_none_is_bitwise(options, backend, scheduler):
    x, target, weight = _problem()
    kwargs = _kwargs(options, weight)
    lazy = fd.cross_entropy(da.from_array(x, chunks=(8, 50)), target, reduction="none", **kwargs)
    assert isinstance(lazy, da.Array) and lazy.chunks == ((8, 8, 8, 8, 5),)
    pair = fd.cross_entropy_and_grad(da.from_array(x, chunks=(8, 50)), target, reduction="none", **kwargs)
    only_loss, loss, grad = dask.compute(lazy, *pair, **scheduler)
    np.testing.assert_array_equal(only_loss, fastxent.cross_entropy(x, target, reduction="none", **kwargs))
    expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, target, reduction="none", **kwargs)
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(grad, expected_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_rows_reduced(reduction, options, backend, scheduler):
    x, target, weight = _problem()
    kwargs = _kwargs(options, weight)
    logits = da.from_array(x, chunks=(8, 50))
    loss = fd.cross_entropy(logits, target, reduction=reduction, **kwargs)
    assert loss.shape == () and loss.dtype == np.float32
    assert fd.cross_entropy(logits, target, reduction=reduction, **kwargs).name == loss.name  # deterministic graph
    pair = fd.cross_entropy_and_grad(logits, target, reduction=reduction, grad_output=0.5, **kwargs)
    loss, lazy_loss, lazy_grad = dask.compute(loss, *pair, **scheduler)
    _close(loss, fastxent.cross_entropy(x, target, reduction=reduction, **kwargs), rtol=1e-6)
    expected_loss, expected_grad = fastxent.cross_entropy_and_grad(
        x, target, reduction=reduction, grad_output=0.5, **kwargs
    )
    _close(lazy_loss, expected_loss, rtol=1e-6)
    _close(lazy_grad, expected_grad, rtol=1e-6, atol=1e-9)


def test_rows_nd_and_probabilities(backend, scheduler):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 4, 3))
    index = rng.integers(0, 5, (6, 4, 3))
    probs = rng.random(x.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    logits = da.from_array(x, chunks=(2, 5, 2, 3))
    for target in (index, probs):
        np.testing.assert_array_equal(
            fd.cross_entropy(logits, target, reduction="none", label_smoothing=0.1).compute(**scheduler),
            fastxent.cross_entropy(x, target, reduction="none", label_smoothing=0.1),
        )
        _close(
            fd.cross_entropy(logits, target, z_loss=0.1).compute(**scheduler),
            fastxent.cross_entropy(x, target, z_loss=0.1),
            1e-12,
        )
        loss, grad = dask.compute(*fd.cross_entropy_and_grad(logits, target), **scheduler)
        expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, target)
        _close(loss, expected_loss, 1e-12)
        _close(grad, expected_grad, 1e-12, 1e-15)


def test_all_ignored_mean_is_nan_and_one_block_is_the_in_memory_call(backend, scheduler):
    x, target, _ = _problem(ignore=range(37))
    assert np.isnan(fd.cross_entropy(da.from_array(x, chunks=(8, 50)), target).compute(**scheduler))
    assert np.isnan(fd.cross_entropy(da.from_array(x, chunks=(8, 25)), target).compute(**scheduler))
    x, target, _ = _problem()
    whole = fd.cross_entropy(da.from_array(x, chunks=-1), target, z_loss=0.1).compute(**scheduler)
    assert whole == fastxent.cross_entropy(x, target, z_loss=0.1)


def test_grad_output_per_row_and_lazy_scalar(backend, scheduler):
    x, target, _ = _problem()
    logits = da.from_array(x, chunks=(8, 50))
    upstream = np.random.default_rng(5).random(37)
    _, grad = fd.cross_entropy_and_grad(logits, target, reduction="none", grad_output=da.from_array(upstream, 10))
    expected = fastxent.cross_entropy_and_grad(x, target, reduction="none", grad_output=upstream)[1]
    np.testing.assert_array_equal(grad.compute(**scheduler), expected)
    _, grad = fd.cross_entropy_and_grad(logits, target, grad_output=da.from_array(np.float64(2.0)))
    _close(grad.compute(**scheduler), fastxent.cross_entropy_and_grad(x, target, grad_output=2.0)[1], 1e-6, 1e-9)


# ---------------------------------------------------------------------------
# The class axis in chunks


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_class_chunks(reduction, options, backend, scheduler):
    x, target, weight = _problem()
    kwargs = _kwargs(options, weight)
    logits = da.from_array(x, chunks=(8, 16))
    expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, target, reduction=reduction, **kwargs)
    pair = fd.cross_entropy_and_grad(logits, target, reduction=reduction, **kwargs)
    only_loss, loss, grad = dask.compute(
        fd.cross_entropy(logits, target, reduction=reduction, **kwargs), *pair, **scheduler
    )  # one computation: the class blocks' statistics are shared
    _close(only_loss, expected_loss, 2e-6, 1e-6)
    _close(loss, expected_loss, 2e-6, 1e-6)
    _close(grad, expected_grad, 1e-6, 1e-7)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_class_chunks_probabilities_nd(reduction, backend, scheduler):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 9, 4))
    probs = rng.random(x.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    weight = rng.random(9) + 0.5
    kwargs = {"weight": weight, "label_smoothing": 0.1, "z_loss": 0.1, "softcap": 2.0}
    logits = da.from_array(x, chunks=(4, 4, 2))
    expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, probs, reduction=reduction, **kwargs)
    loss, grad = dask.compute(*fd.cross_entropy_and_grad(logits, probs, reduction=reduction, **kwargs), **scheduler)
    _close(loss, expected_loss, 1e-12)
    _close(grad, expected_grad, 0, 1e-14)


def test_class_chunks_with_a_block_of_minus_inf(backend, scheduler):
    """A row whose logits are -inf over a whole class block (a masked vocabulary range) gets zeros there."""
    x, target, _ = _problem()
    x[4, 16:32] = -np.inf
    target[4] = 40
    expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, target, reduction="none", label_smoothing=0.0)
    loss, grad = fd.cross_entropy_and_grad(da.from_array(x, chunks=(8, 16)), target, reduction="none")
    loss, grad = dask.compute(loss, grad, **scheduler)
    _close(loss, expected_loss, 2e-6)
    _close(grad, expected_grad, 1e-6, 1e-7)
    assert not grad[4, 16:32].any()


def test_vocabulary_of_128256_in_8_blocks():
    """The issue's case: float32 loss within 1e-6 relative, gradient within 1e-7 absolute."""
    n_classes = 128256
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1024, n_classes), dtype=np.float32)
    target = rng.integers(0, n_classes, 1024)
    logits = da.from_array(x, chunks=(256, 16032))
    assert logits.numblocks[1] == 8
    expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, target)
    loss, grad = fd.cross_entropy_and_grad(logits, target)
    loss, grad = dask.compute(loss, grad, scheduler="threads", num_workers=2)
    _close(loss, expected_loss, 1e-6)
    assert np.max(np.abs(grad - expected_grad)) <= 1e-7
    rows = fd.cross_entropy(logits, target, reduction="none").compute(scheduler="threads", num_workers=2)
    _close(rows, fastxent.cross_entropy(x, target, reduction="none"), 1e-6)


def test_index_out_of_range_raises_when_computed():
    x, target, _ = _problem()
    target[9] = 50
    for chunks in ((8, 50), (8, 16)):
        lazy = fd.cross_entropy(da.from_array(x, chunks=chunks), target)
        with pytest.raises(IndexError, match="target value 50"):
            lazy.compute(**SYNC)


# ---------------------------------------------------------------------------
# softmax, log_softmax, logsumexp

NORMALIZERS = {"softmax": fd.softmax, "log_softmax": fd.log_softmax, "logsumexp": fd.logsumexp}


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize(("chunks", "axis"), [((2, 5, 4), -1), ((2, 2, 4), 1), ((3, 2, 2), (0, 2)), ((2, 2, 2), None)])
def test_normalizers(name, chunks, axis, backend, scheduler):
    x = np.random.default_rng(7).standard_normal((6, 5, 4)).astype(np.float32)
    lazy = NORMALIZERS[name](da.from_array(x, chunks=chunks), axis=axis)
    expected = getattr(fastxent, name)(x, axis=axis)
    actual = lazy.compute(**scheduler)
    assert actual.dtype == expected.dtype and actual.shape == np.shape(expected)
    if chunks == (2, 5, 4):  # the reduced axis in one chunk: one in-memory call per block
        np.testing.assert_array_equal(actual, expected)
    else:
        _close(actual, expected, 2e-6, 1e-6)


@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_keepdims_and_half(keepdims, backend, scheduler):
    x = np.random.default_rng(8).standard_normal((6, 8)).astype(np.float16)
    for chunks in ((3, 8), (3, 3)):
        actual = fd.logsumexp(da.from_array(x, chunks=chunks), axis=1, keepdims=keepdims).compute(**scheduler)
        expected = fastxent.logsumexp(x, axis=1, keepdims=keepdims)
        assert actual.dtype == np.float16 and actual.shape == expected.shape
        if chunks == (3, 8):
            np.testing.assert_array_equal(actual, expected)
        else:  # blocks' log-sum-exps in float32, rounded to float16 once
            _close(actual, expected, 1e-3)


# ---------------------------------------------------------------------------
# linear_cross_entropy


def _linear_problem(seed=9):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((40, 16), dtype=np.float32)
    weight = rng.standard_normal((30, 16), dtype=np.float32)
    bias = rng.standard_normal(30, dtype=np.float32)
    target = rng.integers(0, 30, 40)
    target[5] = -100
    return hidden, weight, bias, target


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_linear(reduction, backend, scheduler):
    hidden, weight, bias, target = _linear_problem()
    kwargs = {"class_weight": np.linspace(0.5, 1.5, 30, dtype=np.float32), "label_smoothing": 0.1, "z_loss": 0.05}
    lazy = fd.linear_cross_entropy(
        da.from_array(hidden, chunks=(8, 8)), weight, target, bias, reduction=reduction, chunk_rows=8, **kwargs
    )
    expected = np_linear_cross_entropy(hidden, weight, target, bias, reduction=reduction, chunk_rows=8, **kwargs)
    if reduction == "none":  # Dask blocks of chunk_rows rows: the same products, bitwise
        np.testing.assert_array_equal(lazy.compute(**scheduler), expected)
    else:
        _close(lazy.compute(**scheduler), expected, 1e-6)


def test_linear_weight_is_one_key_of_the_graph():
    hidden, weight, _, target = _linear_problem()
    weight = np.repeat(weight, 100, axis=0)  # 3000 x 16: 192 kB, larger than anything else in the graph
    lazy = fd.linear_cross_entropy(da.from_array(hidden, chunks=(4, 16)), weight, target, reduction="none")
    (optimized,) = dask.optimize(lazy)
    graph = dict(optimized.__dask_graph__())
    assert len(graph) > 10
    assert len(pickle.dumps(graph)) < 1.5 * weight.nbytes


# ---------------------------------------------------------------------------
# The caller's backend goes with every task


def _graph(kind):
    """A lazy result (or several) of one kind of graph: together, every path and every kind of task."""
    x, target, weight = _problem(shape=(12, 10))
    kwargs = {"weight": weight, "z_loss": 0.1}
    rows, classes = da.from_array(x, chunks=(4, 10)), da.from_array(x, chunks=(4, 5))
    if kind == "linear":
        hidden, layer, bias, labels = _linear_problem()
        hidden = da.from_array(hidden, chunks=(8, 16))
        return [fd.linear_cross_entropy(hidden, layer, labels, bias, reduction=r) for r in ("none", "mean")]
    return {
        "rows-none": lambda: fd.cross_entropy_and_grad(rows, target, reduction="none", **kwargs),
        "rows-mean": lambda: fd.cross_entropy_and_grad(rows, target, **kwargs),
        "one-block": lambda: fd.cross_entropy_and_grad(da.from_array(x, chunks=-1), target, **kwargs),
        "classes-none": lambda: fd.cross_entropy_and_grad(classes, target, reduction="none", **kwargs),
        "classes-mean": lambda: fd.cross_entropy_and_grad(classes, target, **kwargs),
        "classes-loss": lambda: fd.cross_entropy(classes, target, **kwargs),
        "softmax": lambda: (fd.softmax(rows), fd.log_softmax(classes)),
        "logsumexp": lambda: (fd.logsumexp(rows), fd.logsumexp(classes, keepdims=True)),
    }[kind]()


GRAPHS = ["rows-none", "rows-mean", "one-block", "classes-none", "classes-mean", "classes-loss", "softmax",
          "logsumexp", "linear"]  # fmt: skip


class _TaskFunctions(pickle.Pickler):
    """Pickles a graph as the scheduler ships it, noting the backend of each ``InBackend`` and any fastxent
    function outside one (what a worker would run with its own default)."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO())
        self.backends: list[str] = []
        self.bare: set[str] = set()

    def persistent_id(self, obj):
        if isinstance(obj, InBackend):
            self.backends.append(obj.backend)
            return len(self.backends)  # what it wraps runs inside it: not looked into
        if isinstance(obj, types.FunctionType) and obj.__module__.startswith("fastxent"):
            self.bare.add(obj.__qualname__)
        return None


def _task_functions(lazy):
    graph = {}
    for array in lazy if isinstance(lazy, tuple | list) else (lazy,):
        graph.update(array.__dask_graph__())
    pickler = _TaskFunctions()
    pickler.dump(graph)
    return pickler


@pytest.mark.parametrize("kind", GRAPHS)
def test_every_task_carries_the_callers_backend(kind, backend):
    with fastxent.use_backend("auto"):
        auto = _graph(kind)
    chosen = _graph(kind)
    found = _task_functions(chosen)
    assert found.backends and set(found.backends) == {backend}, found.backends
    assert not found.bare, f"fastxent functions run without the caller's backend: {sorted(found.bare)}"
    # With "auto" each worker resolves its own; the graphs' keys differ, so results never mix.
    found = _task_functions(auto)
    assert not found.backends and found.bare
    chosen, auto = (a if isinstance(a, tuple | list) else (a,) for a in (chosen, auto))
    assert not {array.name for array in chosen} & {array.name for array in auto}


# ---------------------------------------------------------------------------
# Argument errors raise when the graph is built, with the in-memory messages


def test_errors_at_graph_time():
    x, target, _ = _problem()
    logits = da.from_array(x, chunks=(8, 50))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fd.cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match=r"target must have shape \(37,\)"):
        fd.cross_entropy(logits, target[:5])
    with pytest.raises(TypeError, match="read as class probabilities"):
        fd.cross_entropy(logits, target.astype(np.float32))
    with pytest.raises(TypeError, match="input must be a float16"):
        fd.cross_entropy(logits.astype(np.int32), target)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        fd.cross_entropy(logits, target, label_smoothing=2.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(50,\)"):
        fd.cross_entropy(logits, target, weight=np.ones(3))
    with pytest.raises(ValueError, match="grad_output must be a scalar for reduction='mean'"):
        fd.cross_entropy_and_grad(logits, target, grad_output=np.ones(37))
    with pytest.raises(np.exceptions.AxisError):
        fd.softmax(logits, axis=2)
    with pytest.raises(ValueError, match=r"weight must have shape \(V, 16\)"):
        fd.linear_cross_entropy(da.ones((4, 16), chunks=2), np.ones((3, 8)), np.zeros(4, int))


# ---------------------------------------------------------------------------
# Dask's threaded scheduler and a real distributed cluster


def test_threaded_scheduler():
    x, target, weight = _problem(shape=(200, 40))
    logits = da.from_array(x, chunks=(25, 40))
    loss, grad = fd.cross_entropy_and_grad(logits, target, weight, z_loss=0.1)
    sync = dask.compute(loss, grad, **SYNC)
    threaded = dask.compute(loss, grad, scheduler="threads", num_workers=2)
    np.testing.assert_array_equal(sync[1], threaded[1])
    assert sync[0] == threaded[0]


@pytest.fixture(scope="module")
def client():
    """Two worker processes on the loopback interface, one thread each.

    Dask's nanny sets ``OMP_NUM_THREADS=1`` (and a few more) in this process
    too when it spawns a worker: they are put back afterwards, and fastxent's
    default thread count worked out again, so later tests see the machine.
    """
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit="2GB",
        timeout="60s",
    )
    client = distributed.Client(cluster, timeout="60s")
    try:
        client.wait_for_workers(2, timeout=60)
        yield client
    finally:
        client.close(timeout=30)
        cluster.close(timeout=30)
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)
        fastxent.set_num_threads(None)


def test_cluster_results_equal_in_memory(client):
    x, target, weight = _problem(shape=(300, 64), seed=10)
    kwargs = {"weight": weight, "label_smoothing": 0.1, "z_loss": 0.01}
    rows = da.from_array(x, chunks=(40, 64))
    classes = da.from_array(x, chunks=(40, 16))
    none, mean, (loss, grad), (c_loss, c_grad) = client.compute(
        [
            fd.cross_entropy(rows, target, reduction="none", **kwargs),
            fd.cross_entropy(rows, target, **kwargs),
            fd.cross_entropy_and_grad(rows, target, **kwargs),
            fd.cross_entropy_and_grad(classes, target, **kwargs),
        ],
        sync=True,
    )
    np.testing.assert_array_equal(none, fastxent.cross_entropy(x, target, reduction="none", **kwargs))
    expected_loss, expected_grad = fastxent.cross_entropy_and_grad(x, target, **kwargs)
    _close(mean, expected_loss, 1e-6)
    _close(loss, expected_loss, 1e-6)
    _close(c_loss, expected_loss, 1e-6)
    _close(grad, expected_grad, 1e-6, 1e-10)
    _close(c_grad, expected_grad, 0, 1e-8)
    hidden, layer, bias, labels = _linear_problem(seed=12)
    linear = fd.linear_cross_entropy(da.from_array(hidden, chunks=(4, 16)), layer, labels, bias)
    _close(client.compute(linear, sync=True), np_linear_cross_entropy(hidden, layer, labels, bias), 1e-6)
    # The layer's weight is one key: a worker that did not make it fetches it once for all its tasks.
    key = da.from_array(layer, chunks=-1).name
    fetched = client.run(_fetches, key=key)
    assert max(fetched.values()) <= 1, fetched
    # Or placed on every worker beforehand (docs/scaling.md): then no task fetches it.
    held = client.persist(da.from_array(2 * layer, chunks=-1))
    client.replicate(distributed.futures_of(held))
    before = client.run(_fetches, key=held.name)
    linear = fd.linear_cross_entropy(da.from_array(hidden, chunks=(4, 16)), held, labels, bias)
    _close(client.compute(linear, sync=True), np_linear_cross_entropy(hidden, 2 * layer, labels, bias), 1e-6)
    assert client.run(_fetches, key=held.name) == before


def _fetches(dask_worker, key):
    """How many times this worker received keys named ``key`` from another worker."""
    return sum(1 for transfer in dask_worker.transfer_incoming_log for k in transfer["keys"] if key in str(k))


def _set_backend(name):
    """``fastxent.set_backend`` in a worker; None forgets it (``FASTXENT_BACKEND`` or ``auto`` again)."""
    if name is None:
        _dispatch._process_choice = None
    else:
        fastxent.set_backend(name)


def test_cluster_runs_the_callers_backend(client, backend):
    """Workers whose own default is another backend run every task with the caller's ``use_backend``."""
    other = next((name for name in fastxent.available_backends() if name != backend), backend)
    x, target, weight = _problem(shape=(40, 24), seed=13)
    kwargs = {"weight": weight, "label_smoothing": 0.1, "z_loss": 0.01}
    rows, classes = da.from_array(x, chunks=(10, 24)), da.from_array(x, chunks=(10, 8))
    lazy = [
        fd.cross_entropy(rows, target, reduction="none", **kwargs),
        fd.softmax(classes),
        *fd.cross_entropy_and_grad(classes, target, **kwargs),
    ]
    client.run(_set_backend, other)
    try:
        assert set(client.run(fastxent.get_backend).values()) == {other}
        probe = client.submit(InBackend(fastxent.get_backend, backend), pure=False)
        assert probe.result(timeout=30) == backend
        on_cluster = client.compute(lazy, sync=True)
    finally:
        client.run(_set_backend, None)
    expected = fastxent.cross_entropy(x, target, reduction="none", **kwargs)
    np.testing.assert_array_equal(on_cluster[0], expected)
    for actual, local in zip(on_cluster, dask.compute(*lazy, **SYNC)):
        np.testing.assert_array_equal(actual, local)
    with fastxent.use_backend(other):
        elsewhere = fastxent.cross_entropy(x, target, reduction="none", **kwargs)
    assert other == backend or not np.array_equal(expected, elsewhere), "no test: the backends agree bitwise here"


def test_cluster_tasks_run_one_kernel_thread(client):
    assert set(client.run(fastxent.get_num_threads).values()) == {1}
    assert client.submit(fastxent.get_num_threads, pure=False).result(timeout=30) == 1


def test_worker_killed_mid_computation(client):
    """A worker process killed while tasks run: the graph recomputes what it lost, the sum counts each block once."""

    def slow(block):
        time.sleep(0.3)
        return block

    x, target, _ = _problem(shape=(320, 32), seed=11, ignore=())
    logits = da.from_array(x, chunks=(20, 32)).map_blocks(slow, dtype=x.dtype)
    expected = fastxent.cross_entropy(x, target, reduction="sum")
    pids = client.run(os.getpid)
    future = client.compute(fd.cross_entropy(logits, target, reduction="sum"), retries=2)
    deadline = time.monotonic() + 30
    while not any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few blocks done, others running
    assert not future.done()
    victim = next((address for address, tasks in client.processing().items() if tasks), next(iter(pids)))
    os.kill(pids[victim], signal.SIGKILL)
    result = future.result(timeout=90)
    _close(result, expected, 1e-6)
    client.wait_for_workers(2, timeout=60)
    assert pids[victim] not in client.run(os.getpid).values()
