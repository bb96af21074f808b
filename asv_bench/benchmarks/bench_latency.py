"""Latency of small calls under ``auto``: what a user's small training step pays per call.

The operations are those of ``python -m fastxent bench``'s latency table:
``loss`` is ``cross_entropy(reduction="none")``, ``loss+grad`` is
``cross_entropy_and_grad(reduction="sum")`` allocating the gradient.
"""

from __future__ import annotations

import fastxent

from .common import DTYPES, LATENCY_SHAPES, make_logits, make_targets


class Latency:
    params = (list(LATENCY_SHAPES), DTYPES, ["loss", "loss+grad"])
    param_names = ["shape", "dtype", "operation"]

    def setup(self, shape: str, dtype: str, operation: str) -> None:
        fastxent.set_backend("auto")
        self.logits = make_logits(LATENCY_SHAPES[shape], dtype)
        self.target = make_targets(LATENCY_SHAPES[shape])
        self.run = self.loss if operation == "loss" else self.loss_and_grad
        self.run()

    def loss(self) -> object:
        return fastxent.cross_entropy(self.logits, self.target, reduction="none")

    def loss_and_grad(self) -> object:
        return fastxent.cross_entropy_and_grad(self.logits, self.target, reduction="sum")

    def time_latency(self, shape: str, dtype: str, operation: str) -> None:
        self.run()
