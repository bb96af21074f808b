"""Smoke test of an installed fastxent (wheels, sdist): the compiled backend loads and agrees.

Run from outside the source tree so the installed package is the one imported.
"""

from __future__ import annotations

import numpy as np

import fastxent

fastxent.show_config()
assert "cython" in fastxent.available_backends(), fastxent._dispatch.backend_errors()
rng = np.random.default_rng(0)
logits = rng.standard_normal((300, 257)).astype(np.float32)
target = rng.integers(0, 257, 300)
results = {}
for name in fastxent.available_backends():
    with fastxent.use_backend(name):
        results[name] = fastxent.cross_entropy_and_grad(logits, target, label_smoothing=0.1)
for loss, grad in results.values():
    np.testing.assert_allclose(loss, results["numpy"][0], rtol=1e-5)
    np.testing.assert_allclose(grad, results["numpy"][1], atol=1e-6)
print("smoke test passed:", ", ".join(results))
