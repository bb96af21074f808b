"""fastxent.jax against optax: values, gradients, jit, grad, vmap, dtypes, errors.

``FASTXENT_REQUIRE_FRONTENDS=jax`` makes a missing jax or optax fail this
module instead of skipping it.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest
from frontends import require_frontend

import fastxent

jax = require_frontend("jax")
optax = require_frontend("jax", "optax")
fj = require_frontend("jax", "fastxent.jax")
fj_handlers = require_frontend("jax", "fastxent.jax._handlers")  # the mean cotangent the forward assumes
fj_optax = require_frontend("jax", "fastxent.jax._optax")  # where the argument checks are, for a fake array
jnp = jax.numpy

SPARSE = fj.softmax_cross_entropy_with_integer_labels
DENSE = fj.softmax_cross_entropy
PEERS = {SPARSE: optax.softmax_cross_entropy_with_integer_labels, DENSE: optax.softmax_cross_entropy}
TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=3e-5, atol=3e-6)}
# (logits shape, axis): the class axis last, first, in the middle, and several axes.
LAYOUTS = [((7,), -1), ((5, 7), -1), ((5, 7), 0), ((4, 6, 3), 1), ((2, 5, 3, 2), -2), ((3, 4, 5), (1, 2))]


def rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def class_size(shape: tuple[int, ...], axis: int | tuple[int, ...]) -> int:
    axes = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([shape[a] for a in axes]))


def make(fn, shape, axis, dtype, gen):  # type: ignore[no-untyped-def]
    logits = (3 * gen.standard_normal(shape)).astype(dtype)
    axes = axis if isinstance(axis, tuple) else (axis,)
    if fn is SPARSE:
        label_shape = tuple(s for i, s in enumerate(shape) if i not in {a % len(shape) for a in axes})
        return logits, gen.integers(0, class_size(shape, axis), label_shape).astype(np.int32)
    labels = gen.random(shape).astype(dtype)  # soft and not normalised: optax allows both
    return logits, labels


def assert_close(actual: object, expected: object, dtype: type) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
@pytest.mark.parametrize("fn", [SPARSE, DENSE], ids=["integer_labels", "dense_labels"])
def test_matches_optax(fn, shape, axis, dtype):
    with jax.enable_x64(dtype == np.float64):
        logits, labels = make(fn, shape, axis, dtype, rng(shape, axis, fn.__name__))
        weights = jnp.asarray(rng("w").random(PEERS[fn](logits, labels, axis=axis).shape), dtype)
        argnums = (0,) if fn is SPARSE else (0, 1)

        def objective(f):  # type: ignore[no-untyped-def]
            return jax.jit(jax.value_and_grad(lambda x, y: (f(x, y, axis=axis) * weights).sum(), argnums=argnums))

        value, grads = objective(fn)(logits, labels)
        expected_value, expected_grads = objective(PEERS[fn])(logits, labels)
        assert value.dtype == dtype and all(g.dtype == dtype for g in grads)
        assert_close(value, expected_value, dtype)
        for got, want in zip(grads, expected_grads):
            assert_close(got, want, dtype)
        eager = fn(logits, labels, axis=axis)
        assert eager.shape == PEERS[fn](logits, labels, axis=axis).shape
        assert_close(eager, PEERS[fn](logits, labels, axis=axis), dtype)


@pytest.mark.parametrize("fn", [SPARSE, DENSE], ids=["integer_labels", "dense_labels"])
def test_vmap(fn):
    logits, labels = make(fn, (6, 5), -1, np.float32, rng("vmap", fn.__name__))
    batch = jnp.stack([logits, 2 * logits, -logits])
    batch_labels = jnp.stack([labels, labels[::-1], labels])

    def check(in_axes, x, y):  # type: ignore[no-untyped-def]
        got = jax.vmap(fn, in_axes=in_axes)(x, y)
        want = jax.vmap(PEERS[fn], in_axes=in_axes)(x, y)
        assert_close(got, want, np.float32)
        total = lambda f: lambda a, b: jax.vmap(f, in_axes=in_axes)(a, b).sum()  # noqa: E731
        assert_close(jax.grad(total(fn))(x, y), jax.grad(total(PEERS[fn]))(x, y), np.float32)
        per_example = lambda f: jax.vmap(jax.grad(lambda a, b: f(a, b).sum()), in_axes=in_axes)  # noqa: E731
        assert_close(jax.jit(per_example(fn))(x, y), per_example(PEERS[fn])(x, y), np.float32)

    check((0, None), batch, labels)  # batched logits, shared labels
    check((None, 0), logits, batch_labels)  # shared logits, batched labels
    check((0, 0), batch, batch_labels)
    check((1, None), jnp.moveaxis(batch, 0, 1), labels)  # batch axis not first


def test_dense_gradient_only_for_what_is_asked(monkeypatch):
    logits, labels = make(DENSE, (4, 6), -1, np.float64, rng("dense-grads"))
    with jax.enable_x64(True):
        for argnums in (0, 1, (0, 1)):
            got = jax.grad(lambda x, y: DENSE(x, y).sum(), argnums=argnums)(logits, labels)
            want = jax.grad(lambda x, y: optax.softmax_cross_entropy(x, y).sum(), argnums=argnums)(logits, labels)
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                assert_close(g, w, np.float64)


@pytest.mark.parametrize("fn", [SPARSE, DENSE], ids=["integer_labels", "dense_labels"])
def test_where_as_optax(fn):
    logits, labels = make(fn, (5, 6), -1, np.float32, rng("where", fn.__name__))
    where = rng("mask").random((5, 6)) > 0.3
    where[2] = False
    got = fn(logits, labels, where=where)
    assert_close(got, PEERS[fn](logits, labels, where=where), np.float32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_computed_in_float32(dtype):
    logits, labels = make(SPARSE, (16, 9), -1, np.float32, rng("half"))
    x = jnp.asarray(logits, dtype)
    value, grad = jax.jit(jax.value_and_grad(lambda a: SPARSE(a, labels).mean()))(x)
    assert value.dtype == dtype and grad.dtype == dtype
    wide = jax.grad(lambda a: optax.softmax_cross_entropy_with_integer_labels(a, labels).mean())(x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(wide), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("count", [1, 3, 10, 1000, 8192, 12345, 100003])
def test_mean_cotangent_is_what_jnp_mean_hands_each_loss(count, dtype):
    # The forward writes its gradient for this cotangent; a wrong guess costs a rescale, not accuracy.
    with jax.enable_x64(dtype == np.float64):
        got = np.asarray(jax.grad(lambda losses: jnp.mean(losses).astype(jnp.float32))(jnp.zeros(count, dtype)))
    guess = fj_handlers.mean_cotangent(count, np.dtype(dtype))
    normal = got[0] >= np.finfo(dtype).tiny  # else the gradient is written unscaled
    assert guess.dtype == np.dtype(dtype) and np.all(got == guess) == normal and (normal or guess == 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", [SPARSE, DENSE], ids=["integer_labels", "dense_labels"])
def test_mean_gradient_is_the_kernels_own(fn, dtype):
    # For a mean the backward leaves the forward's gradient as it is: no rounding after the kernel's.
    with jax.enable_x64(dtype == np.float64):
        logits, labels = make(fn, (37, 11), -1, dtype, rng("mean", fn.__name__))
        grad = jax.jit(jax.grad(lambda x: fn(x, labels).mean()))(logits)
        cotangent = fj_handlers.mean_cotangent(37, np.dtype(dtype))
        _, want = fastxent.cross_entropy_and_grad(logits, labels, reduction="none", grad_output=cotangent)
        np.testing.assert_array_equal(np.asarray(grad), want)
        # Any other cotangent rescales the gradient: a few roundings from the kernel's own (of the
        # terms before their cancellation: soft labels' p * sum(labels) - labels).
        for factor, loss in [(1.0, lambda x: fn(x, labels).sum()), (3 * cotangent, lambda x: 3 * fn(x, labels).mean())]:
            _, want = fastxent.cross_entropy_and_grad(logits, labels, reduction="none", grad_output=factor)
            tolerance = 8 * np.finfo(dtype).eps
            got = jax.jit(jax.grad(loss))(logits)
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


def test_large_batch_and_threads():
    # Enough elements for the compiled backends' parallel paths; calls from several Python threads at once.
    logits, labels = make(SPARSE, (4096, 300), -1, np.float32, rng("large"))
    step = jax.jit(jax.value_and_grad(lambda x: SPARSE(x, labels).mean()))
    expected = jax.jit(jax.value_and_grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()))
    want = expected(logits)
    results = [None] * 4

    def run(i: int) -> None:
        results[i] = step(logits)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for value, grad in results:  # type: ignore[misc]
        assert_close(value, want[0], np.float32)
        assert_close(grad, want[1], np.float32)


def test_out_of_range_label_is_an_error():
    logits, labels = make(SPARSE, (4, 5), -1, np.float32, rng("range"))
    labels[2] = 5
    with pytest.raises(Exception, match=r"label 5 at position \(2,\) is out of range for 5 classes"):
        jax.block_until_ready(jax.jit(SPARSE)(logits, labels))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: SPARSE(np.zeros((3, 4), np.int32), np.zeros(3, np.int32)), TypeError, "floating dtype"),
        (lambda: SPARSE(np.zeros((3, 4)), np.zeros(3)), TypeError, "integer dtype"),
        (lambda: SPARSE(np.zeros((3, 4)), np.zeros(4, np.int32)), ValueError, r"labels must have shape \(3,\)"),
        (lambda: SPARSE(np.zeros((3, 4)), np.zeros(3, np.int32), axis=2), ValueError, "out of bounds"),
        (lambda: DENSE(np.zeros((3, 4)), np.zeros((3, 5))), ValueError, "logits' shape"),
        (lambda: DENSE(np.zeros((3, 4)), np.zeros((3, 4)), axis="x"), ValueError, "axis must be"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_non_cpu_is_refused(monkeypatch):
    class Device:
        platform = "gpu"

    class Array:
        def devices(self):  # type: ignore[no-untyped-def]
            return {Device()}

    with pytest.raises(ValueError, match="logits are on 'gpu'"):
        fj_optax._check_cpu(Array())
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.raises(ValueError, match="default JAX backend is 'tpu'"):
        jax.jit(lambda x: SPARSE(x, jnp.zeros(3, jnp.int32)))(jnp.zeros((3, 4)))


def test_jax_bench_contenders_agree_and_are_timed_in_their_own_processes():
    from fastxent import _bench_jax

    logits, labels = make(SPARSE, (64, 10), -1, np.float32, rng("bench"))
    losses = [_bench_jax._loss(name) for name in _bench_jax.CONTENDERS]
    results = [jax.value_and_grad(lambda x, loss=loss: loss(x, labels).mean())(logits) for loss in losses]
    for value, grad in results[1:]:
        assert_close(value, results[0][0], np.float32)
        assert_close(grad, results[0][1], np.float32)
    seconds = _bench_jax.alternated((64, 10), rounds=1, samples=1)
    assert set(seconds) == set(_bench_jax.CONTENDERS)
    assert all(0 < value < 1 for value in seconds.values())
