"""Bad input: a clear exception naming the parameter and the value; nothing is modified."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent

LOGITS = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
TARGET = np.array([0, 2, 1, 2])


@pytest.fixture(params=["loss", "loss_and_grad"])
def loss_function(request: pytest.FixtureRequest, backend: str):
    return fastxent.cross_entropy if request.param == "loss" else fastxent.cross_entropy_and_grad


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(input=LOGITS.astype(np.int64)), TypeError, "input must be a float16.*int64"),
        (dict(input=LOGITS.astype(np.complex128)), TypeError, "input must be.*complex128"),
        (dict(input=np.float64(1.0)), ValueError, "input must have at least 1 dimension"),
        (dict(target=TARGET.astype(np.float64)), TypeError, "target of dtype float64 is read as class probabilities"),
        (
            dict(target=TARGET.astype(bool)),
            TypeError,
            r"target must hold class indices \(an integer dtype\).*got dtype bool",
        ),
        (dict(target=TARGET[:3]), ValueError, r"target must have shape \(4,\).*got \(3,\)"),
        (dict(target=np.ones((4, 4))), ValueError, r"target must have shape \(4,\).*\(4, 3\).*got \(4, 4\)"),
        (dict(target=np.array([0, 3, 1, 2])), IndexError, r"target value 3 at position \(1,\).*3 classes"),
        (dict(target=np.array([0, 1, 1, -1])), IndexError, r"target value -1 at position \(3,\)"),
        (dict(target=np.array([0, 1, 1, -100]), ignore_index=-1), IndexError, "target value -100"),
        (dict(target=np.array([2**63 + 5, 0, 0, 0], dtype=np.uint64)), IndexError, "target value 9223372036854775813"),
        (dict(target=np.ones((4, 3)) / 3, ignore_index=1), ValueError, "ignore_index=1 is not supported"),
        (dict(ignore_index=1.5), TypeError, "ignore_index must be an integer; got 1.5"),
        (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\]; got 1.5"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing must be in"),
        (dict(label_smoothing=float("nan")), ValueError, "label_smoothing must be in"),
        (dict(label_smoothing="0.1"), TypeError, "label_smoothing must be a real number"),
        (dict(weight=np.ones(4)), ValueError, r"weight must have shape \(3,\).*got \(4,\)"),
        (dict(weight=np.ones((3, 1))), ValueError, r"weight must have shape \(3,\)"),
        (dict(weight=np.ones(3, dtype=np.int64)), TypeError, "weight must be a float"),
        (dict(softcap=0.0), ValueError, "softcap must be None or a finite number > 0; got 0.0"),
        (dict(softcap=-1.0), ValueError, "softcap must be None or a finite number > 0; got -1.0"),
        (dict(softcap=float("inf")), ValueError, "softcap must be"),
        (dict(z_loss=-1.0), ValueError, "z_loss must be a finite number >= 0; got -1.0"),
        (dict(reduction="avg"), ValueError, "reduction must be one of 'none', 'mean', 'sum'; got 'avg'"),
        (dict(reduction=None), ValueError, "reduction must be one of"),
    ],
)
def test_bad_cross_entropy_arguments(loss_function, kwargs, error, pattern):
    arguments = dict(input=LOGITS.copy(), target=TARGET.copy())
    arguments.update(kwargs)
    snapshot = {name: np.array(value, copy=True) for name, value in arguments.items() if isinstance(value, np.ndarray)}
    with pytest.raises(error, match=pattern):
        loss_function(**arguments)
    for name, value in snapshot.items():
        np.testing.assert_array_equal(arguments[name], value)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(grad_out=np.empty((4, 4))), ValueError, r"grad_out must have shape \(4, 3\); got \(4, 4\)"),
        (dict(grad_out=np.empty((4, 3), np.float32)), TypeError, "grad_out must have dtype float64; got float32"),
        (dict(grad_out=[[0.0] * 3] * 4), TypeError, "grad_out must be a numpy.ndarray; got list"),
        (dict(grad_out=np.empty((4, 3)), inplace=True), ValueError, "either grad_out or inplace=True"),
        (dict(grad_output=np.ones(3)), ValueError, r"grad_output must be a scalar for reduction='mean'"),
        (dict(grad_output=np.ones(3), reduction="none"), ValueError, r"grad_output must be a scalar or have"),
        (dict(grad_output="x"), TypeError, "grad_output must hold real numbers"),
    ],
)
def test_bad_gradient_arguments(backend, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        fastxent.cross_entropy_and_grad(LOGITS.copy(), TARGET, **kwargs)


def test_read_only_grad_out_is_rejected(backend):
    grad_out = np.empty((4, 3))
    grad_out.flags.writeable = False
    with pytest.raises(ValueError, match="grad_out is read-only"):
        fastxent.cross_entropy_and_grad(LOGITS, TARGET, grad_out=grad_out)


def test_inplace_needs_writable_ndarray(backend):
    read_only = LOGITS.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="inplace=True needs a writable input"):
        fastxent.cross_entropy_and_grad(read_only, TARGET, inplace=True)
    with pytest.raises(TypeError, match=r"inplace=True needs input to be a numpy\.ndarray; got list"):
        fastxent.cross_entropy_and_grad(LOGITS.tolist(), TARGET, inplace=True)


def test_read_only_inputs_work(backend):
    logits, target = LOGITS.copy(), TARGET.copy()
    logits.flags.writeable = target.flags.writeable = False
    loss, grad = fastxent.cross_entropy_and_grad(logits, target)
    assert np.isfinite(loss) and grad.flags.writeable


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
class TestElementwiseErrors:
    def test_integer_input(self, backend, name):
        with pytest.raises(TypeError, match="x must be a float16, bfloat16, float32 or float64 array; got dtype int64"):
            getattr(fastxent, name)(np.arange(3))

    def test_axis_out_of_bounds(self, backend, name):
        with pytest.raises(np.exceptions.AxisError, match="axis=2 is out of bounds for an array of dimension 2"):
            getattr(fastxent, name)(LOGITS, axis=2)

    def test_axis_not_integer(self, backend, name):
        with pytest.raises(TypeError, match=r"axis must be an integer; got 1\.0"):
            getattr(fastxent, name)(LOGITS, axis=1.0)

    def test_repeated_axis(self, backend, name):
        with pytest.raises(ValueError, match="axis must not repeat"):
            getattr(fastxent, name)(LOGITS, axis=(1, -1))

    def test_bad_out(self, backend, name):
        shape = (4,) if name == "logsumexp" else (4, 3)
        with pytest.raises(ValueError, match=r"out must have shape"):
            getattr(fastxent, name)(LOGITS, out=np.empty((5, 5)))
        with pytest.raises(TypeError, match="out must have dtype float64; got float32"):
            getattr(fastxent, name)(LOGITS, out=np.empty(shape, np.float32))
        read_only = np.empty(shape)
        read_only.flags.writeable = False
        with pytest.raises(ValueError, match="out is read-only"):
            getattr(fastxent, name)(LOGITS, out=read_only)


class TestTensorFlowErrors:
    def test_sparse_label_shape(self, backend):
        with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
            fastxent.sparse_softmax_cross_entropy_with_logits(np.zeros(3, dtype=int), LOGITS)

    def test_sparse_float_labels(self, backend):
        with pytest.raises(TypeError, match="labels must hold integer class indices; got dtype float64"):
            fastxent.sparse_softmax_cross_entropy_with_logits(np.zeros(4), LOGITS)

    def test_sparse_negative_label(self, backend):
        with pytest.raises(IndexError, match=r"labels value -1 at position \(2,\)"):
            fastxent.sparse_softmax_cross_entropy_with_logits(np.array([0, 1, -1, 0]), LOGITS)

    def test_dense_shape(self, backend):
        with pytest.raises(ValueError, match=r"labels must have the shape of logits \(4, 3\); got \(4, 2\)"):
            fastxent.softmax_cross_entropy_with_logits(np.zeros((4, 2)), LOGITS)

    def test_dense_axis(self, backend):
        with pytest.raises(np.exceptions.AxisError, match="axis=3"):
            fastxent.softmax_cross_entropy_with_logits(LOGITS, LOGITS, axis=3)
