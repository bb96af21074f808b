"""Loss, fused gradient and the normalising functions, per backend x shape x dtype.

``setup`` builds the arrays once and calls the operation once, so Numba's
compilation (or cache load) is never timed.
"""

from __future__ import annotations

import numpy as np

import fastxent

from .common import BACKENDS, DTYPES, SHAPES, gigabytes_per_second, make_logits, make_targets


class _Rows:
    params = (BACKENDS, list(SHAPES), DTYPES)
    param_names = ["backend", "shape", "dtype"]
    timeout = 300

    def setup(self, backend: str, shape: str, dtype: str) -> None:
        fastxent.set_backend(backend)
        self.logits = make_logits(SHAPES[shape], dtype)
        self.target = make_targets(SHAPES[shape])
        self.run()

    def teardown(self, backend: str, shape: str, dtype: str) -> None:
        fastxent.set_backend("auto")

    def run(self) -> object:
        raise NotImplementedError

    def track_gigabytes_per_second(self, backend: str, shape: str, dtype: str) -> float:
        return gigabytes_per_second(self.run, self.logits.nbytes)

    track_gigabytes_per_second.unit = "GB/s"  # type: ignore[attr-defined]


class LossOnly(_Rows):
    def run(self) -> object:
        return fastxent.cross_entropy(self.logits, self.target, reduction="none")

    def time_cross_entropy(self, backend: str, shape: str, dtype: str) -> None:
        self.run()

    def peakmem_cross_entropy(self, backend: str, shape: str, dtype: str) -> None:
        self.run()


class LossAndGrad(_Rows):
    def setup(self, backend: str, shape: str, dtype: str) -> None:
        super().setup(backend, shape, dtype)
        self.scratch = self.logits.copy()

    def run(self) -> object:
        return fastxent.cross_entropy_and_grad(self.logits, self.target, reduction="none")

    def time_cross_entropy_and_grad(self, backend: str, shape: str, dtype: str) -> None:
        self.run()

    def peakmem_cross_entropy_and_grad(self, backend: str, shape: str, dtype: str) -> None:
        self.run()

    def peakmem_cross_entropy_and_grad_inplace(self, backend: str, shape: str, dtype: str) -> None:
        fastxent.cross_entropy_and_grad(self.scratch, self.target, reduction="none", inplace=True)

    def time_cross_entropy_and_grad_into(self, backend: str, shape: str, dtype: str) -> None:
        fastxent.cross_entropy_and_grad(self.logits, self.target, reduction="none", grad_out=self.scratch)

    def time_cross_entropy_and_grad_inplace(self, backend: str, shape: str, dtype: str) -> None:
        # Each call turns the scratch into a gradient (values in [-1, 1]): the same work every time.
        fastxent.cross_entropy_and_grad(self.scratch, self.target, reduction="none", inplace=True)


class Softmax(_Rows):
    def run(self) -> object:
        return fastxent.softmax(self.logits)

    def time_softmax(self, backend: str, shape: str, dtype: str) -> None:
        self.run()


class LogSoftmax(_Rows):
    def run(self) -> object:
        return fastxent.log_softmax(self.logits)

    def time_log_softmax(self, backend: str, shape: str, dtype: str) -> None:
        self.run()


class LogSumExp(_Rows):
    def run(self) -> object:
        return fastxent.logsumexp(self.logits)

    def time_logsumexp(self, backend: str, shape: str, dtype: str) -> None:
        self.run()


class DenseLabels(_Rows):
    def setup(self, backend: str, shape: str, dtype: str) -> None:
        labels = make_logits(SHAPES[shape], dtype, seed=2)
        self.labels = np.abs(labels) / np.abs(labels).sum(axis=-1, keepdims=True)
        super().setup(backend, shape, dtype)

    def run(self) -> object:
        return fastxent.softmax_cross_entropy_with_logits(self.labels, self.logits)

    def time_softmax_cross_entropy_with_logits(self, backend: str, shape: str, dtype: str) -> None:
        self.run()


class ClassAxis1:
    """Segmentation-style ``(N, C, H, W)`` logits: the class axis is not last."""

    params = (BACKENDS, DTYPES)
    param_names = ["backend", "dtype"]
    shape = (8, 21, 256, 256)
    timeout = 300

    def setup(self, backend: str, dtype: str) -> None:
        fastxent.set_backend(backend)
        self.logits = make_logits(self.shape, dtype)
        self.target = make_targets(self.shape)
        fastxent.cross_entropy_and_grad(self.logits, self.target, reduction="none")

    def teardown(self, backend: str, dtype: str) -> None:
        fastxent.set_backend("auto")

    def time_cross_entropy(self, backend: str, dtype: str) -> None:
        fastxent.cross_entropy(self.logits, self.target, reduction="none")

    def time_cross_entropy_and_grad(self, backend: str, dtype: str) -> None:
        fastxent.cross_entropy_and_grad(self.logits, self.target, reduction="none")

    def track_gigabytes_per_second(self, backend: str, dtype: str) -> float:
        return gigabytes_per_second(
            lambda: fastxent.cross_entropy(self.logits, self.target, reduction="none"), self.logits.nbytes
        )

    track_gigabytes_per_second.unit = "GB/s"  # type: ignore[attr-defined]


class StartUp:
    """Import plus the first call, in a fresh process (warm on-disk cache after the first run)."""

    params = BACKENDS
    param_names = ["backend"]
    repeat = 5
    number = 1

    def timeraw_import_and_first_call(self, backend: str) -> str:
        return (
            "import numpy as np, fastxent\n"
            "x = np.zeros((64, 1000), np.float32)\n"
            "t = np.zeros(64, np.int64)\n"
            f"with fastxent.use_backend({backend!r}):\n"
            "    fastxent.cross_entropy(x, t)\n"
        )
