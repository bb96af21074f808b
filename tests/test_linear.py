"""linear_cross_entropy(_and_grad) against the materialised cross_entropy, torch, finite differences and itself."""

from __future__ import annotations

import itertools
import math
import tracemalloc
import zlib

import numpy as np
import pytest

import fastxent
from fastxent import _linear, _linear_blas, _linear_blocks, _linear_products
from fastxent._linear import linear_chunk_rows, linear_cross_entropy, linear_cross_entropy_and_grad

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOLERANCE = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
    np.dtype(np.float16): dict(rtol=1e-2, atol=2e-3),
}
#: Option sets, each run with every reduction, with and without bias.
OPTIONS: dict[str, dict[str, object]] = {
    "plain": {},
    "class_weight": {"class_weight": "random"},
    "ignored": {"ignore": -100},
    "ignore_index=2": {"ignore_index": 2, "ignore": 2},
    "label_smoothing": {"label_smoothing": 0.15},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "all": {
        "class_weight": "random",
        "ignore": -100,
        "label_smoothing": 0.1,
        "z_loss": 1e-2,
        "softcap": 3.0,
    },
}
REDUCTIONS = ["none", "mean", "sum"]
HALF_DTYPES = [np.dtype(np.float16)]
try:
    import ml_dtypes

    HALF_DTYPES.append(np.dtype(ml_dtypes.bfloat16))
except ImportError:  # the test extra has it; a bare environment tests float16 only
    pass


def make_case(
    name: str, n_rows: int = 13, n_hidden: int = 5, n_classes: int = 7, dtype: object = np.float64, bias: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict[str, object]]:
    """``hidden (N, H)``, ``weight (V, H)``, ``target (N,)``, ``bias`` and the keyword options of ``OPTIONS[name]``."""
    rng = np.random.default_rng(zlib.crc32(f"{name}-{n_rows}-{n_hidden}-{n_classes}".encode()))
    hidden = rng.standard_normal((n_rows, n_hidden)).astype(dtype)
    weight = (rng.standard_normal((n_classes, n_hidden)) * 0.8).astype(dtype)
    bias_array = rng.standard_normal(n_classes).astype(dtype) if bias else None
    target = rng.integers(0, n_classes, n_rows) if n_classes else np.full(n_rows, -100)
    options = dict(OPTIONS[name])
    ignore = options.pop("ignore", None)
    if ignore is not None and n_rows:
        target[:: max(2, n_rows // 3)] = ignore
    if options.get("class_weight") == "random":
        options["class_weight"] = rng.uniform(0.2, 2.0, n_classes)
    return hidden, weight, target, bias_array, options


def materialised(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    bias: np.ndarray | None,
    reduction: str = "mean",
    grad_output: object = None,
    **options: object,
) -> tuple[object, np.ndarray, np.ndarray, np.ndarray | None]:
    """The loss and gradients through the ``(N, V)`` logits and ``fastxent.cross_entropy_and_grad``."""
    compute = np.float64 if hidden.dtype == np.float64 else np.float32
    h = hidden.reshape(math.prod(hidden.shape[:-1]), hidden.shape[-1]).astype(compute)
    w = weight.astype(compute)
    logits = h @ w.T
    if bias is not None:
        logits += bias.astype(compute)
    class_weight = options.pop("class_weight", None)
    upstream = grad_output if np.ndim(grad_output) == 0 else np.reshape(grad_output, -1)
    loss, grad = fastxent.cross_entropy_and_grad(
        logits, target.reshape(-1), class_weight, reduction=reduction, grad_output=upstream, **options
    )
    if reduction == "none":
        loss = np.reshape(loss, target.shape)
    grad_bias = None if bias is None else grad.sum(axis=0)
    return loss, (grad @ w).reshape(hidden.shape), grad.T @ h, grad_bias


def torch_linear(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    bias: np.ndarray | None,
    reduction: str = "mean",
    grad_output: object = None,
    class_weight: np.ndarray | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``F.linear`` + (softcap) + ``F.cross_entropy`` (+ z-loss) and autograd, in the inputs' dtype."""
    h = torch.tensor(hidden, requires_grad=True)
    w = torch.tensor(weight, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, requires_grad=True)
    t = torch.tensor(target)
    logits = F.linear(h, w, b)
    capped = softcap * torch.tanh(logits / softcap) if softcap else logits
    flat = capped.reshape(-1, weight.shape[0])
    cw = None if class_weight is None else torch.tensor(class_weight, dtype=h.dtype)
    loss = F.cross_entropy(
        flat, t.reshape(-1), weight=cw, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    if z_loss:
        keep = t.reshape(-1) != ignore_index
        z_rows = torch.where(keep, z_loss * torch.logsumexp(flat, dim=1) ** 2, torch.zeros(()))
        loss = {"none": loss + z_rows, "sum": loss + z_rows.sum(), "mean": loss + z_rows.sum() / keep.sum()}[reduction]
    if reduction == "none":
        loss = loss.reshape(target.shape)
    upstream = torch.ones_like(loss) if grad_output is None else torch.as_tensor(grad_output, dtype=loss.dtype)
    loss.backward(upstream.expand_as(loss))
    grad_bias = None if b is None else b.grad.numpy()
    return loss.detach().numpy(), h.grad.numpy(), w.grad.numpy(), grad_bias


def assert_close(actual: object, expected: object, dtype: object) -> None:
    """Close in ``dtype``'s tolerance, the absolute part scaled by the largest expected value."""
    expected_array = np.asarray(expected, dtype=np.float64)
    tolerance = dict(TOLERANCE[np.dtype(dtype)])
    finite = expected_array[np.isfinite(expected_array)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    tolerance["atol"] *= scale
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected_array, equal_nan=True, **tolerance)


def assert_results_close(actual: tuple, expected: tuple, dtype: object) -> None:  # type: ignore[type-arg]
    for got, want in zip(actual, expected, strict=True):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, dtype)


def upstream_for(reduction: str, shape: tuple[int, ...]) -> object:
    if reduction == "none":
        return np.random.default_rng(7).uniform(-1.5, 1.5, shape)
    return 0.75


CASES = list(itertools.product(OPTIONS, REDUCTIONS, [False, True]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("options", "reduction", "with_bias"), CASES)
def test_matches_materialised_cross_entropy(backend, dtype, options, reduction, with_bias):
    hidden, weight, target, bias, kwargs = make_case(options, dtype=dtype, bias=with_bias)
    grad_output = upstream_for(reduction, target.shape)
    expected = materialised(hidden, weight, target, bias, reduction, grad_output, **kwargs)
    # 13 rows in blocks of 4: the last block has one row.
    got = linear_cross_entropy_and_grad(
        hidden, weight, target, bias, reduction=reduction, chunk_rows=4, grad_output=grad_output, **kwargs
    )
    assert_results_close(got, expected, dtype)
    loss = linear_cross_entropy(hidden, weight, target, bias, reduction=reduction, chunk_rows=4, **kwargs)
    assert_close(loss, materialised(hidden, weight, target, bias, reduction, **kwargs)[0], dtype)
    assert np.asarray(got[0]).dtype == np.asarray(loss).dtype == dtype
    assert all(array.dtype == dtype for array in got[1:] if array is not None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("options", "reduction", "with_bias"), CASES)
def test_matches_torch(backend, dtype, options, reduction, with_bias):
    hidden, weight, target, bias, kwargs = make_case(options, dtype=dtype, bias=with_bias)
    grad_output = upstream_for(reduction, target.shape)
    expected = torch_linear(hidden, weight, target, bias, reduction, grad_output, **kwargs)  # type: ignore[arg-type]
    got = linear_cross_entropy_and_grad(
        hidden, weight, target, bias, reduction=reduction, chunk_rows=5, grad_output=grad_output, **kwargs
    )
    assert_results_close(got, expected, dtype)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Budgets that make tiny inputs take several blocks: 30% of the rows (or classes) each."""
    for name, value in [("BLOCK_ROWS", 10**6), ("BLOCK_BYTES", 0), ("MIN_BLOCK_ROWS", 1), ("MIN_BLOCK_BYTES", 0)]:
        monkeypatch.setattr(_linear_blocks, name, value)
    monkeypatch.setattr(_linear_blocks, "BLOCK_FRACTION", 0.3)


def loss_by_classes(monkeypatch: pytest.MonkeyPatch, *args: object, **kwargs: object) -> object:
    """``linear_cross_entropy(*args, **kwargs)``, checking that it went by chunks of classes."""
    chunks = []
    original = _linear.loss_by_classes

    def spy(call: object, step: int) -> object:
        chunks.append(step)
        return original(call, step)  # type: ignore[arg-type]

    monkeypatch.setattr(_linear, "loss_by_classes", spy)
    loss = linear_cross_entropy(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(_linear, "loss_by_classes", original)
    assert len(chunks) == 1 and chunks[0] < np.shape(args[1])[0]  # several chunks
    return loss


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("options", "reduction", "with_bias"), CASES)
def test_loss_alone_by_chunks_of_classes(backend, small_blocks, monkeypatch, dtype, options, reduction, with_bias):
    hidden, weight, target, bias, kwargs = make_case(options, n_classes=20, dtype=dtype, bias=with_bias)
    loss = loss_by_classes(monkeypatch, hidden, weight, target, bias, reduction=reduction, **kwargs)
    assert np.asarray(loss).dtype == dtype
    assert_close(loss, materialised(hidden, weight, target, bias, reduction, **kwargs)[0], dtype)
    by_rows = linear_cross_entropy(hidden, weight, target, bias, reduction=reduction, chunk_rows=4, **kwargs)
    assert_close(loss, by_rows, dtype)


@pytest.mark.parametrize("dtype", [np.dtype(np.float64), *HALF_DTYPES], ids=str)
@pytest.mark.parametrize("layout", ["C", "F"])
def test_loss_alone_by_chunks_of_classes_layouts_and_half(backend, small_blocks, monkeypatch, dtype, layout):
    hidden, weight, target, bias, kwargs = make_case("all", n_rows=12, n_classes=20, dtype=dtype)
    hidden3, target3 = hidden.reshape(3, 4, -1), target.reshape(3, 4)
    weight = np.asfortranarray(weight) if layout == "F" else weight
    half = dtype.itemsize == 2
    for reduction in REDUCTIONS:
        loss = loss_by_classes(monkeypatch, hidden3, weight, target3, bias, reduction=reduction, **kwargs)
        assert np.asarray(loss).dtype == dtype
        expected = materialised(hidden3, weight, target3, bias, reduction, **kwargs)[0]
        if half:
            expected = np.asarray(expected, np.float32).astype(dtype)
        assert_close(loss, expected, np.float16 if half else np.float64)


def test_loss_alone_by_chunks_of_classes_with_every_row_ignored(backend, small_blocks, monkeypatch):
    hidden, weight, _, bias, _ = make_case("plain", n_classes=20)
    target = np.full(hidden.shape[0], -100)
    for reduction, expected in [("none", np.zeros(target.shape)), ("sum", 0.0), ("mean", math.nan)]:
        loss = loss_by_classes(monkeypatch, hidden, weight, target, bias, reduction=reduction, z_loss=0.1)
        np.testing.assert_array_equal(loss, expected)


def test_the_issue_cases_take_the_cheaper_way():
    # The loss alone of an LM head (N << V) goes by classes; a tall, narrow one (N >> V) by rows.
    assert _linear_blocks.classes_per_chunk(512, 128256, 4) is not None
    assert _linear_blocks.classes_per_chunk(2048, 32000, 4) is not None
    assert _linear_blocks.classes_per_chunk(100_000, 10, 4) is None
    assert _linear_blocks.classes_per_chunk(0, 10, 4) is None and _linear_blocks.classes_per_chunk(10, 0, 4) is None


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_leading_axes_are_rows(backend, reduction):
    hidden, weight, target, bias, kwargs = make_case("all", n_rows=12)
    hidden3, target3 = hidden.reshape(2, 3, 2, -1), target.reshape(2, 3, 2)
    grad_output = upstream_for(reduction, target3.shape)
    got = linear_cross_entropy_and_grad(
        hidden3, weight, target3, bias, reduction=reduction, chunk_rows=5, grad_output=grad_output, **kwargs
    )
    assert got[1].shape == hidden3.shape
    if reduction == "none":
        assert got[0].shape == target3.shape
    assert_results_close(
        got, materialised(hidden3, weight, target3, bias, reduction, grad_output, **kwargs), np.float64
    )
    expected = torch_linear(hidden3, weight, target3, bias, reduction, grad_output, **kwargs)  # type: ignore[arg-type]
    assert_results_close(got, expected, np.float64)


def test_one_row_as_a_vector(backend):
    hidden, weight, target, bias, kwargs = make_case("all", n_rows=1)
    loss, grad_hidden, grad_weight, grad_bias = linear_cross_entropy_and_grad(
        hidden[0], weight, target[0], bias, reduction="none", **kwargs
    )
    assert np.shape(loss) == () and grad_hidden.shape == hidden[0].shape
    expected = materialised(hidden, weight, target, bias, "none", **kwargs)
    assert_results_close((np.reshape(loss, 1), grad_hidden[None], grad_weight, grad_bias), expected, np.float64)


@pytest.mark.parametrize("n_rows", [0, 1, 2, 13])
@pytest.mark.parametrize("chunk_rows", [1, 3, 13, 100, None])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_block_boundaries(backend, n_rows, chunk_rows, reduction):
    hidden, weight, target, bias, kwargs = make_case("all", n_rows=n_rows)
    grad_output = upstream_for(reduction, target.shape)
    got = linear_cross_entropy_and_grad(
        hidden, weight, target, bias, reduction=reduction, chunk_rows=chunk_rows, grad_output=grad_output, **kwargs
    )
    assert_results_close(got, materialised(hidden, weight, target, bias, reduction, grad_output, **kwargs), np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_row_ignored(backend, reduction, with_bias):
    hidden, weight, _, bias, _ = make_case("plain", bias=with_bias)
    target = np.full(hidden.shape[0], -100)
    loss, grad_hidden, grad_weight, grad_bias = linear_cross_entropy_and_grad(
        hidden, weight, target, bias, reduction=reduction, chunk_rows=4
    )
    expected_loss = {"none": np.zeros(target.shape), "sum": 0.0, "mean": math.nan}[reduction]
    np.testing.assert_array_equal(loss, expected_loss)
    assert not grad_hidden.any() and not grad_weight.any()
    assert grad_bias is None if bias is None else not grad_bias.any()
    assert_results_close(
        (loss, grad_hidden, grad_weight, grad_bias), materialised(hidden, weight, target, bias, reduction), np.float64
    )


@pytest.mark.parametrize(("n_hidden", "n_classes"), [(0, 7), (5, 0), (0, 0)])
def test_empty_feature_and_class_axes(backend, n_hidden, n_classes):
    hidden, weight, target, bias, kwargs = make_case("plain", n_hidden=n_hidden, n_classes=n_classes)
    for reduction in REDUCTIONS:
        got = linear_cross_entropy_and_grad(hidden, weight, target, bias, reduction=reduction, chunk_rows=4, **kwargs)
        expected = materialised(hidden, weight, target, bias, reduction, **kwargs)
        assert_results_close(got, expected, np.float64)


@pytest.mark.parametrize("options", ["plain", "all"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_block_size_does_not_change_results(backend, options, reduction):
    hidden, weight, target, bias, kwargs = make_case(options, n_rows=23, n_classes=11)
    grad_output = upstream_for(reduction, target.shape)
    results = [
        linear_cross_entropy_and_grad(
            hidden, weight, target, bias, reduction=reduction, chunk_rows=rows, grad_output=grad_output, **kwargs
        )
        for rows in (1, 23, 7, None)
    ]
    for other in results[1:]:
        assert_results_close(other, results[0], np.float64)
    losses = [
        linear_cross_entropy(hidden, weight, target, bias, reduction=reduction, chunk_rows=rows, **kwargs)
        for rows in (1, 23)
    ]
    assert_close(losses[1], losses[0], np.float64)


def central_differences(function, array: np.ndarray, step: float = 1e-6) -> np.ndarray:  # type: ignore[no-untyped-def]
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        plus = function()
        array[index] = saved - step
        minus = function()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * step)
    return grad


@pytest.mark.parametrize("options", ["plain", "all", "z_loss", "softcap"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_match_finite_differences(backend, options, reduction):
    hidden, weight, target, bias, kwargs = make_case(options, n_rows=4, n_hidden=3, n_classes=5)
    assert bias is not None
    upstream = np.random.default_rng(3).uniform(0.5, 1.5, target.shape)

    def loss() -> float:
        value = linear_cross_entropy(hidden, weight, target, bias, reduction=reduction, chunk_rows=3, **kwargs)
        return float(np.sum(upstream * value)) if reduction == "none" else float(value)

    grad_output = upstream if reduction == "none" else None
    _, grad_hidden, grad_weight, grad_bias = linear_cross_entropy_and_grad(
        hidden, weight, target, bias, reduction=reduction, chunk_rows=3, grad_output=grad_output, **kwargs
    )
    for array, grad in ((hidden, grad_hidden), (weight, grad_weight), (bias, grad_bias)):
        np.testing.assert_allclose(grad, central_differences(loss, array), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("chunk_rows", [4, None])  # several blocks (float32 sums) and one
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_is_computed_in_float32(backend, dtype, chunk_rows, reduction):
    hidden, weight, target, bias, kwargs = make_case("all", dtype=dtype)
    grad_output = upstream_for(reduction, target.shape)
    got = linear_cross_entropy_and_grad(
        hidden, weight, target, bias, reduction=reduction, chunk_rows=chunk_rows, grad_output=grad_output, **kwargs
    )
    assert np.asarray(got[0]).dtype == dtype
    assert all(array.dtype == dtype for array in got[1:])
    # The reference: float32 logits of the rounded inputs, the results rounded to dtype at the end.
    expected = materialised(hidden, weight, target, bias, reduction, grad_output, **kwargs)
    rounding = 8 if dtype.name == "bfloat16" else 1
    for got_array, want in zip(got, expected, strict=True):
        want = np.asarray(want, np.float32).astype(dtype).astype(np.float64)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(
            np.asarray(got_array, np.float64), want, rtol=1e-2 * rounding, atol=2e-3 * rounding * scale
        )
    torch_expected = torch_linear(
        *(None if a is None else a.astype(np.float32) for a in (hidden, weight)),  # type: ignore[arg-type]
        target,
        None if bias is None else bias.astype(np.float32),
        reduction,
        grad_output,
        **kwargs,  # type: ignore[arg-type]
    )
    for got_array, want in zip(got, torch_expected, strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(
            np.asarray(got_array, np.float64), want, rtol=1e-2 * rounding, atol=2e-3 * rounding * scale
        )


def test_half_precision_never_converts_all_of_weight(monkeypatch):
    hidden, weight, target, bias, _ = make_case("plain", n_rows=6, n_hidden=4, n_classes=40, dtype=np.float16)
    converted = []
    original = np.copyto

    def spy(destination, source, *args, **kwargs):  # type: ignore[no-untyped-def]
        converted.append(np.shape(source))
        return original(destination, source, *args, **kwargs)

    monkeypatch.setattr(_linear_products.np, "copyto", spy)
    got = linear_cross_entropy_and_grad(hidden, weight, target, bias, chunk_rows=2)
    monkeypatch.undo()
    assert converted and max(shape[0] for shape in converted) < weight.shape[0]
    expected = materialised(hidden, weight, target, bias)
    for got_array, want in zip(got, expected, strict=True):
        assert_close(got_array, np.asarray(want, np.float32).astype(np.float16), np.float16)


def test_inputs_are_not_modified(backend):
    hidden, weight, target, bias, kwargs = make_case("all")
    arrays = [hidden, weight, target, bias, kwargs["class_weight"]]
    copies = [array.copy() for array in arrays]
    for array in arrays:
        array.flags.writeable = False
    for reduction in REDUCTIONS:
        linear_cross_entropy_and_grad(hidden, weight, target, bias, reduction=reduction, chunk_rows=4, **kwargs)
        linear_cross_entropy(hidden, weight, target, bias, reduction=reduction, chunk_rows=4, **kwargs)
    for array, copy in zip(arrays, copies):
        np.testing.assert_array_equal(array, copy)


def test_layouts_and_integer_dtypes(backend):
    hidden, weight, target, bias, kwargs = make_case("all")
    expected = materialised(hidden, weight, target, bias, "none", **kwargs)
    layouts = [
        (np.asfortranarray(hidden), np.asfortranarray(weight), target.astype(np.int32)),
        (hidden.astype(">f8"), weight.astype(">f8"), target.astype(np.int16)),
        (np.repeat(hidden, 2, axis=0)[::2], np.repeat(weight, 2, axis=1)[:, ::2], target.tolist()),
    ]
    for h, w, t in layouts:
        got = linear_cross_entropy_and_grad(
            h, w, t, None if bias is None else bias.astype(h.dtype), reduction="none", chunk_rows=4, **kwargs
        )
        assert_results_close(got, expected, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_without_scipy_numpy_sums_the_weight_gradient_through_a_scratch(backend, monkeypatch, dtype, with_bias):
    hidden, weight, target, bias, kwargs = make_case(
        "all", n_rows=23, n_hidden=6, n_classes=50, dtype=dtype, bias=with_bias
    )
    with_scipy = linear_cross_entropy_and_grad(hidden, weight, target, bias, chunk_rows=5, **kwargs)
    monkeypatch.setattr(_linear_products, "scipy_gemm", lambda dtype: None)
    monkeypatch.setattr(_linear_blocks, "CHUNK_BYTES", 6 * 8 * 7)  # chunks of 7 or fewer vocabulary rows
    without = linear_cross_entropy_and_grad(hidden, weight, target, bias, chunk_rows=5, **kwargs)
    assert_results_close(without, with_scipy, dtype)
    expected = materialised(hidden, weight, target, bias, **kwargs)
    assert_results_close(without, expected, dtype)


def test_thread_count_does_not_change_results(backend):
    hidden, weight, target, bias, kwargs = make_case("all", n_rows=300, n_hidden=16, n_classes=4000)
    results = []
    try:
        for threads in (1, 2):
            fastxent.set_num_threads(threads)
            results.append(linear_cross_entropy_and_grad(hidden, weight, target, bias, chunk_rows=70, **kwargs))
    finally:
        fastxent.set_num_threads(None)
    assert_results_close(results[1], results[0], np.float64)


def test_blas_runs_on_fastxent_threads_and_is_restored():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def numpy_blas_threads() -> list[int]:
        pools = threadpoolctl.threadpool_info()
        return [pool["num_threads"] for pool in pools if pool["user_api"] == "blas" and "numpy" in pool["filepath"]]

    before = numpy_blas_threads()
    if not before:
        pytest.skip("threadpoolctl does not see NumPy's BLAS here")
    with _linear_blas.blas_threads(1):
        assert numpy_blas_threads() == [1]
    assert numpy_blas_threads() == before


@pytest.mark.parametrize("operation", ["fwd", "fwd+bwd"])
def test_peak_memory_is_a_tenth_of_the_logits(operation):
    """The issue's memory goal: scratch of at most 10% of the (N, V) logits (V x H is larger than that)."""
    n_rows, n_hidden, n_classes = 1024, 256, 8000
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n_rows, n_hidden), dtype=np.float32)
    weight = rng.standard_normal((n_classes, n_hidden), dtype=np.float32) / 16
    target = rng.integers(0, n_classes, n_rows)
    bias = np.zeros(n_classes, np.float32)
    call = linear_cross_entropy if operation == "fwd" else linear_cross_entropy_and_grad
    call(hidden, weight, target, bias)  # compilation, BLAS buffers and caches outside the measurement
    tracemalloc.start()
    try:
        result = call(hidden, weight, target, bias)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outputs = 0 if operation == "fwd" else sum(array.nbytes for array in result[1:])
    logits = n_rows * n_classes * 4
    assert weight.nbytes > 0.1 * logits  # a (V, H) temporary would fail the check below
    assert peak - outputs <= 0.1 * logits


@pytest.mark.parametrize(
    ("n_rows", "n_classes"), [(2048, 32000), (512, 128256), (4096, 128256), (100_000, 50257), (1000, 1000)]
)
def test_default_blocks_keep_the_scratch_within_a_tenth(n_rows, n_classes):
    rows = linear_chunk_rows(n_rows, n_classes)
    blocks = math.ceil(n_rows / rows)
    assert 1 <= rows <= n_rows
    assert n_rows - (blocks - 1) * rows > rows // 2 or blocks > rows // 2  # no sliver of a last block
    block = rows * n_classes * 4
    assert block + block / 10 <= 0.1 * n_rows * n_classes * 4 or block <= 2**20
    assert rows <= max(_linear_blocks.BLOCK_ROWS, _linear_blocks.BLOCK_BYTES // (n_classes * 4))


def test_small_inputs_run_as_one_block():
    assert linear_chunk_rows(100, 10) == 100
    assert linear_chunk_rows(0, 10) == 1
    assert linear_chunk_rows(1, 0) == 1


# Errors: the same quality as cross_entropy's.


def error_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.integers(0, 5, (2, 3)), np.zeros(5)


@pytest.mark.parametrize(
    ("change", "error", "pieces"),
    [
        ({"weight": np.zeros((5, 3))}, ValueError, ["weight", "(5, 3)", "(2, 3, 4)"]),
        ({"weight": np.zeros(4)}, ValueError, ["weight", "(4,)", "(2, 3, 4)"]),
        ({"bias": np.zeros(4)}, ValueError, ["bias", "(5,)", "(4,)"]),
        ({"target": np.zeros((3, 2), int)}, ValueError, ["target", "(2, 3)", "(3, 2)", "(2, 3, 4)"]),
        ({"target": np.zeros(6, int)}, ValueError, ["target", "(2, 3)", "(6,)"]),
        ({"hidden": np.float64(1.0)}, ValueError, ["hidden", "0-d"]),
        ({"hidden": np.zeros((2, 3, 4), int)}, TypeError, ["hidden", "int64"]),
        ({"weight": np.zeros((5, 4), np.float32)}, TypeError, ["weight", "float64", "float32"]),
        ({"bias": np.zeros(5, np.float32)}, TypeError, ["bias", "float64", "float32"]),
        ({"target": np.zeros((2, 3))}, TypeError, ["target", "float64", "class indices"]),
        ({"target": np.zeros((2, 3), bool)}, TypeError, ["target", "bool"]),
        ({"class_weight": np.ones(4)}, ValueError, ["class_weight", "(5,)", "(4,)"]),
        ({"reduction": "avg"}, ValueError, ["reduction", "'avg'"]),
        ({"label_smoothing": math.nan}, ValueError, ["label_smoothing", "nan"]),
        ({"label_smoothing": 1.5}, ValueError, ["label_smoothing", "1.5"]),
        ({"z_loss": math.inf}, ValueError, ["z_loss", "inf"]),
        ({"z_loss": -1.0}, ValueError, ["z_loss", "-1.0"]),
        ({"softcap": 0.0}, ValueError, ["softcap", "0.0"]),
        ({"softcap": math.nan}, ValueError, ["softcap", "nan"]),
        ({"ignore_index": 1.5}, TypeError, ["ignore_index", "1.5"]),
        ({"chunk_rows": 0}, ValueError, ["chunk_rows", "0"]),
        ({"chunk_rows": 2.0}, TypeError, ["chunk_rows", "2.0"]),
        ({"chunk_rows": True}, TypeError, ["chunk_rows", "True"]),
        ({"grad_output": np.ones(3)}, ValueError, ["grad_output", "scalar", "(3,)"]),
        ({"grad_output": np.ones(4), "reduction": "none"}, ValueError, ["grad_output", "(2, 3)", "(4,)"]),
        ({"grad_output": "one"}, TypeError, ["grad_output"]),
    ],
)
def test_bad_arguments_are_named(change, error, pieces):
    hidden, weight, target, bias = error_case()
    arguments = {"hidden": hidden, "weight": weight, "target": target, "bias": bias, **change}
    with pytest.raises(error) as raised:
        linear_cross_entropy_and_grad(**arguments)
    for piece in pieces:
        assert piece in str(raised.value)
    if "grad_output" not in change:
        with pytest.raises(error):
            linear_cross_entropy(**arguments)


@pytest.mark.parametrize(("value", "position"), [(5, (1, 2)), (-1, (0, 1)), (-100 + 1, (1, 0))])
def test_out_of_range_target_gives_its_position(backend, value, position):
    hidden, weight, target, bias = error_case()
    target[position] = value
    for call in (linear_cross_entropy, linear_cross_entropy_and_grad):
        with pytest.raises(IndexError, match=rf"target value {value} at position \({position[0]}, {position[1]}\)"):
            call(hidden, weight, target, bias)
