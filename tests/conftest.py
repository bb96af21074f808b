"""Shared fixtures: every test that takes ``backend`` runs once per available backend.

``FASTXENT_REQUIRE_BACKENDS=numba,cython`` makes the session fail at start when
a listed backend is unavailable, so CI can never pass by skipping one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import fastxent
from fastxent._dispatch import backend_errors


def _required_backends() -> list[str]:
    raw = os.environ.get("FASTXENT_REQUIRE_BACKENDS", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def pytest_sessionstart(session: pytest.Session) -> None:
    available = fastxent.available_backends()
    errors = backend_errors()
    missing = [name for name in _required_backends() if name not in available]
    if missing:
        reasons = "; ".join(f"{name}: {errors.get(name, 'not a known backend')}" for name in missing)
        raise pytest.UsageError(
            f"FASTXENT_REQUIRE_BACKENDS asks for {', '.join(missing)}, unavailable here ({reasons})"
        )


def pytest_report_header() -> list[str]:
    return [f"fastxent backends: {', '.join(fastxent.available_backends())}"]


@pytest.fixture(params=fastxent.available_backends())
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of a backend, in use for the duration of the test."""
    with fastxent.use_backend(request.param) as name:
        yield name
