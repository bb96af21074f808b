"""fastxent.torch against torch itself: values, gradients, gradcheck, opcheck, torch.compile, training.

``FASTXENT_REQUIRE_FRONTENDS=torch`` makes a missing torch fail this module
instead of skipping it.
"""

from __future__ import annotations

import copy
import itertools
import zlib

import pytest
from frontends import require_frontend

torch = require_frontend("torch")
ft = require_frontend("torch", "fastxent.torch")
xent_op = require_frontend("torch", "fastxent.torch._xent_op")  # where the NumPy API is called, for spies
F = torch.nn.functional

# torch.compile's own warnings: inductor's first import uses torch.jit, and dynamo probes
# the .grad of a non-leaf tensor passed to a compiled function (it hides the warning
# itself, but not from pytest's "error" filter).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"),
]

SHAPES = [(7,), (5, 7), (4, 6, 3), (2, 5, 3, 2)]
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=3e-5, atol=3e-6)}
CASES = list(
    itertools.product(
        SHAPES,
        ["index", "ignored", "probs"],
        [False, True],  # weighted
        ["none", "mean", "sum"],
        [0.0, 0.2],  # label_smoothing
    )
)


def seeded(*key: object) -> torch.Generator:
    # crc32, not hash(): str hashes are salted per process, so a failure would not reproduce.
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def class_axis(shape: tuple[int, ...]) -> int:
    return 0 if len(shape) == 1 else 1


def make_case(
    shape: tuple[int, ...], kind: str, weighted: bool, dtype: torch.dtype, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    axis = class_axis(shape)
    n_classes = shape[axis]
    logits = 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "probs":
        target = torch.rand(shape, generator=gen, dtype=torch.float64)
        target = (target / target.sum(axis, keepdim=True)).to(dtype)
    else:
        target = torch.randint(0, n_classes, shape[:axis] + shape[axis + 1 :], generator=gen)
        if kind == "ignored" and target.numel() > 1:
            target.view(-1)[:: max(2, target.numel() // 3)] = -100
    weight = torch.rand(n_classes, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    return logits.to(dtype), target, None if weight is None else weight.to(dtype)


def reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """torch's own cross_entropy with fastxent's two extras composed around it."""
    capped = softcap * torch.tanh(logits / softcap) if softcap else logits
    loss = F.cross_entropy(
        capped, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    if z_loss:
        lse = torch.logsumexp(capped, dim=class_axis(tuple(logits.shape)))
        keep = torch.ones_like(lse, dtype=torch.bool) if target.is_floating_point() else target != ignore_index
        rows = torch.where(keep, z_loss * lse**2, torch.zeros_like(lse))
        loss = loss + (rows if reduction == "none" else rows.sum() / (keep.sum() if reduction == "mean" else 1))
    return loss


def loss_and_grads(fn, logits, target, upstream=None, **kwargs):  # type: ignore[no-untyped-def]
    x = logits.detach().clone().requires_grad_(True)
    t = target.detach().clone().requires_grad_(target.is_floating_point())
    loss = fn(x, t, **kwargs)
    loss.backward(torch.ones_like(loss) if upstream is None else upstream)
    return loss.detach(), x.grad, t.grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float64) -> None:
    torch.testing.assert_close(actual, expected, equal_nan=True, **TOLERANCE[dtype])


# ---------------------------------------------------------------------------
# cross_entropy: values and gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("shape", "kind", "weighted", "reduction", "smoothing"), CASES)
def test_matches_torch(backend, dtype, shape, kind, weighted, reduction, smoothing):
    logits, target, weight = make_case(shape, kind, weighted, dtype, seeded(shape, kind, weighted, reduction))
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    upstream = None  # loss.backward() on a reduced loss: the common case
    if reduction == "none":
        loss_shape = reference(logits, target, **kwargs).shape
        upstream = (torch.rand(loss_shape, generator=seeded(shape, "up"), dtype=torch.float64) + 0.5).to(dtype)
    expected = loss_and_grads(reference, logits, target, upstream, **kwargs)
    actual = loss_and_grads(ft.cross_entropy, logits, target, upstream, **kwargs)
    assert actual[0].dtype == dtype and actual[1].dtype == dtype
    assert actual[0].shape == expected[0].shape
    for got, want in zip(actual, expected):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, dtype)


@pytest.mark.parametrize("kind", ["index", "ignored", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("z_loss", "softcap"), [(1e-2, None), (0.0, 2.5), (3e-2, 4.0)])
def test_z_loss_and_softcap(backend, kind, reduction, z_loss, softcap):
    logits, target, weight = make_case((6, 5, 2), kind, True, torch.float64, seeded(kind, reduction, z_loss))
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=z_loss, softcap=softcap)
    expected = loss_and_grads(reference, logits, target, **kwargs)
    actual = loss_and_grads(ft.cross_entropy, logits, target, **kwargs)
    for got, want in zip(actual, expected):
        if want is not None:
            assert_close(got, want)


def test_probability_target_refuses_ignore_index_as_torch():
    logits, target, _ = make_case((4, 5), "probs", False, torch.float64, seeded("probs-ignore"))
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        F.cross_entropy(logits, target, ignore_index=3)
    with pytest.raises(ValueError, match="ignore_index=3 is not supported with class-probability targets"):
        ft.cross_entropy(logits, target, ignore_index=3)


def test_all_ignored_mean_is_nan_like_torch():
    logits = torch.randn(3, 4, requires_grad=True)
    target = torch.full((3,), -100)
    loss = ft.cross_entropy(logits, target)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(logits, target))
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.zeros(3, 4))


def test_non_contiguous_and_int32_targets():
    base = torch.randn(7, 5, dtype=torch.float64)
    logits = base.T.contiguous().T  # same values, column-major
    assert not logits.is_contiguous()
    target = torch.randint(0, 5, (7,), generator=seeded("nc"))
    expected = loss_and_grads(reference, base, target)
    actual = loss_and_grads(ft.cross_entropy, logits, target.to(torch.int32))
    assert_close(actual[0], expected[0])
    assert_close(actual[1], expected[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_half_precision_computed_in_float32(dtype, kind):
    logits, target, weight = make_case((16, 9), kind, True, torch.float32, seeded(dtype, kind))
    logits = logits.to(dtype)
    target = target.to(dtype) if kind == "probs" else target
    loss, grad, target_grad = loss_and_grads(ft.cross_entropy, logits, target, weight=weight)
    wide = loss_and_grads(reference, logits.float(), target.float() if kind == "probs" else target, weight=weight)
    assert loss.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(loss.float(), wide[0], rtol=1e-2, atol=1e-3)
    # The float32 result rounded once to the half dtype: torch's own half computation rounds more often.
    torch.testing.assert_close(grad, wide[1].to(dtype), rtol=0, atol=0)
    if kind == "probs":
        assert target_grad.dtype == dtype


# ---------------------------------------------------------------------------
# Autograd: gradcheck, scaling, retain_graph, double backward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["index", "ignored", "probs"])
def test_gradcheck(kind, reduction):
    logits, target, weight = make_case((3, 4, 2), kind, True, torch.float64, seeded("gradcheck", kind, reduction))
    logits.requires_grad_(True)
    inputs = (logits, target.requires_grad_(True)) if kind == "probs" else (logits,)

    def fn(x, t=target):  # type: ignore[no-untyped-def]
        return ft.cross_entropy(x, t, weight, reduction=reduction, label_smoothing=0.1, z_loss=0.01, softcap=3.0)

    assert torch.autograd.gradcheck(fn, inputs)


def test_backward_scales_the_saved_gradient(backend):
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (6,), generator=seeded("scale"))
    (unit,) = torch.autograd.grad(ft.cross_entropy(logits, target), logits)
    (scaled,) = torch.autograd.grad(ft.cross_entropy(logits, target), logits, torch.tensor(-2.5, dtype=torch.float64))
    assert_close(scaled, -2.5 * unit)
    rows = torch.rand(6, dtype=torch.float64)
    (per_row,) = torch.autograd.grad(ft.cross_entropy(logits, target, reduction="none"), logits, rows)
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="none"), logits, rows)
    assert_close(per_row, expected)


def test_retain_graph_and_accumulation():
    # The backward hands its saved gradient out as it is only when nothing can read it again.
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 1, 1])
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, target), logits)
    loss = ft.cross_entropy(logits, target)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    loss.backward()
    assert_close(logits.grad, 3 * expected)
    logits.grad = None
    for _ in range(2):  # gradient accumulation over micro-batches
        ft.cross_entropy(logits, target).backward()
    assert_close(logits.grad, 2 * expected)


def test_double_backward_is_refused():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = ft.cross_entropy(logits, torch.tensor([0, 2, 1, 1]))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, logits, create_graph=True)


def test_saved_memory_is_no_more_than_torchs():
    logits = torch.randn(64, 100, requires_grad=True)
    target = torch.randint(0, 100, (64,), generator=seeded("saved"))

    def saved_bytes(fn):  # type: ignore[no-untyped-def]
        sizes = []

        def pack(tensor):  # type: ignore[no-untyped-def]
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = fn(logits, target)
        loss.backward()
        return sum(sizes)

    ours, theirs = saved_bytes(ft.cross_entropy), saved_bytes(F.cross_entropy)
    assert ours == logits.numel() * 4 <= theirs


def test_no_gradient_work_without_requires_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(xent_op, "_np_cross_entropy_and_grad", lambda *a, **k: calls.append("grad"))
    logits, target = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    assert_close(ft.cross_entropy(logits, target), F.cross_entropy(logits, target), torch.float32)
    with torch.no_grad():
        ft.cross_entropy(logits.requires_grad_(True), target)
    assert not calls
    with pytest.raises(TypeError):  # the spy returns None: the gradient path was taken
        ft.cross_entropy(logits, target)
    assert calls == ["grad"]


def test_zero_copy_views(monkeypatch):
    seen = {}
    real = xent_op._np_cross_entropy_and_grad

    def spy(logits, target, *args, grad_out=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(logits=logits, target=target, grad_out=grad_out)
        return real(logits, target, *args, grad_out=grad_out, **kwargs)

    monkeypatch.setattr(xent_op, "_np_cross_entropy_and_grad", spy)
    logits = torch.randn(8, 6, requires_grad=True)
    target = torch.randint(0, 6, (8,), generator=seeded("copy"))
    ft.cross_entropy(logits, target).backward()
    assert seen["logits"].ctypes.data == logits.data_ptr()
    assert seen["target"].ctypes.data == target.data_ptr()
    assert seen["grad_out"].ctypes.data == logits.grad.data_ptr()  # written once, handed to .grad as it is


# ---------------------------------------------------------------------------
# Devices, errors, the module
# ---------------------------------------------------------------------------


def test_non_cpu_tensor_is_refused_by_name():
    with pytest.raises(ValueError, match="input is on device 'meta'"):
        ft.cross_entropy(torch.empty(4, 3, device="meta"), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight is on device 'meta'"):
        ft.cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="hidden is on device 'meta'"):
        ft.linear_cross_entropy(torch.empty(4, 3, device="meta"), torch.randn(5, 3), torch.zeros(4, dtype=torch.long))


def test_fake_tensors_trace_without_error():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.empty(8, 5, 3, requires_grad=True)
        loss = ft.cross_entropy(logits, torch.zeros(8, 3, dtype=torch.long), reduction="none")
        assert loss.shape == (8, 3)
        loss.sum().backward()
        assert logits.grad.shape == logits.shape


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing must be in"),
        (dict(z_loss=-1.0), ValueError, "z_loss must be"),
        (dict(softcap=0.0), ValueError, "softcap must be"),
        (dict(label_smoothing="x"), TypeError, "label_smoothing must be a real number"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        ft.cross_entropy(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2]), **kwargs)


def test_bad_targets():
    logits = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(IndexError, match="target"):
        ft.cross_entropy(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="target must have shape"):
        ft.cross_entropy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="weight requires grad"):
        ft.cross_entropy(logits, torch.tensor([0, 1, 2]), torch.ones(4, requires_grad=True))


def test_torch_func_is_refused_clearly():
    with pytest.raises(RuntimeError, match=r"torch\.func"):
        torch.func.grad(lambda x: ft.cross_entropy(x, torch.tensor([0, 1])))(torch.randn(2, 3))


def test_module_is_a_drop_in():
    weight = torch.rand(5) + 0.5
    ours = ft.CrossEntropyLoss(weight, ignore_index=2, label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight, ignore_index=2, label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 2])
    assert_close(ours(logits, target), theirs(logits, target), torch.float32)
    extra = ft.CrossEntropyLoss(z_loss=0.01, softcap=5.0, reduction="sum")
    assert_close(extra(logits, target), reference(logits, target, reduction="sum", z_loss=0.01, softcap=5.0),
                 torch.float32)  # fmt: skip
    assert "z_loss=0.01" in repr(extra) and "softcap=5.0" in repr(extra)


# ---------------------------------------------------------------------------
# The registered op: opcheck, torch.compile, training
# ---------------------------------------------------------------------------


def opcheck_samples():  # type: ignore[no-untyped-def]
    gen = seeded("opcheck")
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    nd = torch.randn(3, 5, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    index = torch.tensor([0, 4, -100, 2, 1, 3])
    probs = torch.softmax(torch.randn(6, 5, dtype=torch.float64, generator=gen), 1).requires_grad_(True)
    weight = torch.rand(5, dtype=torch.float64, generator=gen) + 0.5
    yield (x, index, None, -100, "mean", 0.0, 0.0, None, True)
    yield (x, index, weight, -100, "sum", 0.1, 0.01, 3.0, True)
    yield (x, index, weight, -100, "none", 0.0, 0.0, None, True)
    yield (x.detach(), index, None, -100, "mean", 0.0, 0.0, None, False)
    yield (x, probs, weight, -100, "mean", 0.2, 0.0, None, True)
    yield (x.detach(), probs, None, -100, "none", 0.0, 0.0, 2.0, False)
    yield (nd, torch.tensor([[0, 1], [4, -100], [2, 2]]), None, -100, "none", 0.0, 0.01, None, True)


@pytest.mark.parametrize("args", list(opcheck_samples()))
def test_opcheck(args):
    torch.library.opcheck(torch.ops.fastxent.cross_entropy.default, args)


def test_compiled_as_one_op_without_graph_break():
    graphs = []

    def backend(gm, example_inputs):  # type: ignore[no-untyped-def]
        graphs.append(gm)
        return gm.forward

    @torch.compile(backend=backend, fullgraph=True)
    def step(x, t):  # type: ignore[no-untyped-def]
        return ft.cross_entropy(torch.relu(x) * 2, t, label_smoothing=0.1)

    x = torch.randn(8, 6, requires_grad=True)
    t = torch.randint(0, 6, (8,), generator=seeded("compile"))
    loss = step(x, t)
    loss.backward()
    expected = loss_and_grads(lambda a, b: F.cross_entropy(torch.relu(a) * 2, b, label_smoothing=0.1), x, t)
    assert_close(loss.detach(), expected[0], torch.float32)
    assert_close(x.grad, expected[1], torch.float32)
    assert len(graphs) == 1
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    op = torch.ops.fastxent.cross_entropy
    assert sum(target in (op, op.default) for target in targets) == 1


class MLP(torch.nn.Module):
    def __init__(self, n_in: int = 12, n_hidden: int = 16, n_classes: int = 7) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, n_hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(n_hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.slow
def test_compiled_training_step_with_train_and_eval():
    torch.manual_seed(0)
    model = MLP()
    criterion = ft.CrossEntropyLoss(label_smoothing=0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    @torch.compile(fullgraph=True)
    def compute_loss(x, y):  # type: ignore[no-untyped-def]
        return criterion(model(x), y)

    x = torch.randn(64, 12)
    y = (x[:, :7].argmax(1) + (x[:, 7] > 0)) % 7
    losses = []
    for _ in range(3):
        model.train()
        for _ in range(10):
            optimizer.zero_grad()
            compute_loss(x, y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            losses.append(compute_loss(x, y).item())
            assert_close(torch.tensor(losses[-1]), F.cross_entropy(model(x), y, label_smoothing=0.05), torch.float32)
    assert losses[0] > losses[1] > losses[2]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("compiled", [False, True])
def test_three_steps_match_torch(optimizer, compiled):
    torch.manual_seed(1)
    ours = MLP().double().eval()  # eval: no dropout, so both runs see the same function
    theirs = copy.deepcopy(ours)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9), "adam": lambda p: torch.optim.Adam(p, lr=0.05)}
    opt_ours, opt_theirs = make[optimizer](ours.parameters()), make[optimizer](theirs.parameters())
    loss_ours = ft.CrossEntropyLoss(label_smoothing=0.1)
    if compiled:
        loss_ours = torch.compile(loss_ours, fullgraph=True)
    x = torch.randn(32, 12, dtype=torch.float64, generator=seeded("three"))
    y = torch.randint(0, 7, (32,), generator=seeded("three-y"))
    for _ in range(3):
        for model, opt, criterion in (
            (ours, opt_ours, loss_ours),
            (theirs, opt_theirs, torch.nn.CrossEntropyLoss(label_smoothing=0.1)),
        ):
            opt.zero_grad()
            criterion(model(x), y).backward()
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert_close(a.detach(), b.detach())


# ---------------------------------------------------------------------------
# linear_cross_entropy
# ---------------------------------------------------------------------------


def linear_reference(hidden, weight, target, bias=None, *, class_weight=None, reduction="mean", **kwargs):  # type: ignore[no-untyped-def]
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    flat = reference(logits.reshape(-1, weight.shape[0]), target.reshape(-1), class_weight, reduction=reduction,
                     **kwargs)  # fmt: skip
    return flat.reshape(target.shape) if reduction == "none" else flat


LINEAR_CASES = list(
    itertools.product(
        ["none", "mean", "sum"],
        [False, True],  # bias
        [False, True],  # class weights
        [dict(), dict(label_smoothing=0.1, z_loss=1e-3), dict(softcap=3.0, ignore_index=1)],
    )
)


@pytest.mark.parametrize(("reduction", "with_bias", "weighted", "options"), LINEAR_CASES)
def test_linear_matches_torch(backend, reduction, with_bias, weighted, options):
    gen = seeded("linear", reduction, with_bias, weighted, repr(options))
    hidden = torch.randn(3, 5, 8, dtype=torch.float64, generator=gen)
    weight = torch.randn(11, 8, dtype=torch.float64, generator=gen)
    bias = torch.randn(11, dtype=torch.float64, generator=gen) if with_bias else None
    class_weight = torch.rand(11, dtype=torch.float64, generator=gen) + 0.5 if weighted else None
    target = torch.randint(0, 11, (3, 5), generator=gen)
    target[0, :2] = options.get("ignore_index", -100)
    kwargs = dict(class_weight=class_weight, reduction=reduction, chunk_rows=4, **options)

    def run(fn):  # type: ignore[no-untyped-def]
        leaves = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((bias,) if with_bias else ())]
        loss = fn(leaves[0], leaves[1], target, leaves[2] if with_bias else None, **kwargs)
        upstream = torch.rand(loss.shape, dtype=torch.float64, generator=seeded("up", reduction)) + 0.5
        return (loss.detach(), *torch.autograd.grad(loss, leaves, upstream))

    ref_kwargs = {k: v for k, v in kwargs.items() if k != "chunk_rows"}
    expected = run(lambda *a, **k: linear_reference(*a, **ref_kwargs))
    actual = run(ft.linear_cross_entropy)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_linear_gradcheck(reduction):
    gen = seeded("linear-gradcheck", reduction)
    hidden = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.tensor([0, 4, -100, 2, 1, 3])

    def fn(h, w, b):  # type: ignore[no-untyped-def]
        return ft.linear_cross_entropy(h, w, target, b, reduction=reduction, label_smoothing=0.1, z_loss=0.01,
                                       chunk_rows=2)  # fmt: skip

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_opcheck(reduction, with_bias):
    gen = seeded("linear-opcheck")
    hidden = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    target = torch.tensor([0, 4, -100, 2, 1, 3])
    args = (hidden, weight, target, bias, None, -100, reduction, 0.1, 0.01, None, 2, True)
    torch.library.opcheck(torch.ops.fastxent.linear_cross_entropy.default, args)


def test_linear_module_has_ligers_signature():
    gen = seeded("liger")
    head = torch.nn.Linear(8, 13, dtype=torch.float64)
    hidden = torch.randn(2, 6, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randint(0, 13, (2, 6), generator=gen)
    ce_weight = torch.rand(13, dtype=torch.float64, generator=gen) + 0.5
    criterion = ft.LinearCrossEntropyLoss(ce_weight=ce_weight, ignore_index=3, lse_square_scale=1e-3,
                                          label_smoothing=0.1, reduction="sum", softcap=5.0)  # fmt: skip
    loss = criterion(head.weight, hidden, target, head.bias)
    expected = linear_reference(hidden, head.weight, target, head.bias, class_weight=ce_weight, ignore_index=3,
                                z_loss=1e-3, label_smoothing=0.1, reduction="sum", softcap=5.0)  # fmt: skip
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    loss.backward()
    assert head.weight.grad.shape == head.weight.shape and head.bias.grad.shape == (13,)
    assert "ce_weight" in criterion.state_dict()


def test_linear_compiles_and_trains_like_torch():
    torch.manual_seed(2)
    ours = torch.nn.Linear(8, 13).double()
    theirs = copy.deepcopy(ours)
    hidden = torch.randn(16, 8, dtype=torch.float64, generator=seeded("lm"))
    target = torch.randint(0, 13, (16,), generator=seeded("lm-t"))
    criterion = torch.compile(ft.LinearCrossEntropyLoss(), fullgraph=True)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.5)
    for _ in range(3):
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
        criterion(ours.weight, hidden, target, ours.bias).backward()
        F.cross_entropy(theirs(hidden), target).backward()
        opt_ours.step()
        opt_theirs.step()
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_half_precision(dtype):
    gen = seeded("linear-half")
    hidden = torch.randn(32, 8, generator=gen).to(dtype).requires_grad_(True)
    weight = torch.randn(13, 8, generator=gen).to(dtype).requires_grad_(True)
    target = torch.randint(0, 13, (32,), generator=gen)
    loss = ft.linear_cross_entropy(hidden, weight, target)
    loss.backward()
    assert loss.dtype == hidden.grad.dtype == weight.grad.dtype == dtype
    expected = linear_reference(hidden.detach().float(), weight.detach().float(), target)
    torch.testing.assert_close(loss.float(), expected, rtol=1e-2, atol=1e-2)


def test_linear_shape_errors():
    with pytest.raises(ValueError, match="hidden must have shape"):
        ft.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target must have"):
        ft.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="bias must have shape"):
        ft.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long), torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_grad", [False, True])
def test_linear_products_run_on_torch_and_match_the_numpy_api(monkeypatch, dtype, with_grad):
    """The front-end's blocks multiply by torch.mm (MKL in the CPU wheels), with the NumPy API's results.

    Without a gradient and with N < V the loss goes by chunks of classes, so both of the
    NumPy API's sweeps (blocks of rows, chunks of classes) are covered.
    """
    from fastxent import _linear
    from fastxent.torch import _linear_products

    calls = []
    original = _linear_products.TorchProducts.logits

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[1].shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_linear_products.TorchProducts, "logits", spy)
    gen = seeded("linear-torch-products", str(dtype), with_grad)
    # ~3 MB of logits: the default sweep splits them into blocks or chunks
    hidden = torch.randn(96, 32, dtype=dtype, generator=gen)
    weight = torch.randn(8000, 32, dtype=dtype, generator=gen) / 4
    bias = torch.randn(8000, dtype=dtype, generator=gen)
    target = torch.randint(0, 8000, (96,), generator=gen)
    leaves = [t.clone().requires_grad_(with_grad) for t in (hidden, weight, bias)]
    loss = ft.linear_cross_entropy(*leaves[:2], target, leaves[2], label_smoothing=0.1)
    assert len(calls) > 1, "the call was not cut into blocks or chunks, or did not use torch's products"
    arrays = (hidden.numpy(), weight.numpy(), target.numpy(), bias.numpy())
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    if not with_grad:
        expected = _linear.linear_cross_entropy(*arrays, label_smoothing=0.1)
        torch.testing.assert_close(loss, torch.tensor(float(expected), dtype=dtype), **tolerance)
        return
    expected_loss, *expected_grads = _linear.linear_cross_entropy_and_grad(*arrays, label_smoothing=0.1)
    torch.testing.assert_close(loss.detach(), torch.tensor(float(expected_loss), dtype=dtype), **tolerance)
    for got, want in zip(torch.autograd.grad(loss, leaves), expected_grads):
        torch.testing.assert_close(got, torch.from_numpy(want), **tolerance)
