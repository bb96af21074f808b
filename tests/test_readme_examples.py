"""The README's Python examples run, and say what they compute."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastxent

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    return PYTHON_BLOCK.findall(text)


def section(text: str, title: str) -> str:
    """The text under the ``## title`` heading, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def run_block(source: str, namespace: dict[str, Any], first_values: dict[str, np.ndarray]) -> None:
    """Execute ``source`` statement by statement, keeping a copy of each array name's first value."""
    for statement in ast.parse(source).body:
        code = compile(ast.Module(body=[statement], type_ignores=[]), "README.md", "exec")
        exec(code, namespace)
        for name, value in namespace.items():
            if isinstance(value, np.ndarray) and name not in first_values:
                first_values[name] = value.copy()


def test_readme_has_python_examples():
    assert python_blocks(README)
    assert python_blocks(section(README, "Use"))


def test_every_python_block_runs():
    namespace: dict[str, Any] = {}
    for block in python_blocks(README):
        run_block(block, namespace, {})


@pytest.fixture(scope="module")
def use_example() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The namespace after running the "Use" section's example, and the arrays as first assigned."""
    namespace: dict[str, Any] = {}
    first_values: dict[str, np.ndarray] = {}
    for block in python_blocks(section(README, "Use")):
        run_block(block, namespace, first_values)
    return namespace, first_values


def test_use_example_computes_from_the_untouched_logits(use_example):
    namespace, first = use_example
    logits, labels = first["logits"], namespace["labels"]
    np.testing.assert_array_equal(namespace["logits"], logits)
    np.testing.assert_array_equal(
        namespace["per_example"], fastxent.sparse_softmax_cross_entropy_with_logits(labels, logits)
    )
    np.testing.assert_array_equal(namespace["p"], fastxent.softmax(logits))
    # And against NumPy in float64, so the check does not rest on fastxent alone.
    wide = logits.astype(np.float64)
    shifted = wide - wide.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    expected = log_z - shifted[np.arange(len(labels)), labels]
    np.testing.assert_allclose(namespace["per_example"], expected, rtol=1e-5, atol=1e-6)


def test_use_example_gradient_is_written_in_place(use_example):
    namespace, first = use_example
    grad = namespace["grad"]
    assert grad is namespace["scratch"]
    expected = fastxent.cross_entropy_and_grad(first["logits"], namespace["labels"])[1]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-12)
