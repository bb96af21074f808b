"""``require_frontend``: import an optional front-end's dependency, skipping or failing without it.

``FASTXENT_REQUIRE_FRONTENDS=torch,jax`` (comma-separated) names the
front-ends that must be tested: a listed one whose import fails makes the
test module fail, so CI cannot pass by skipping it. Unlisted ones skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

ENV = "FASTXENT_REQUIRE_FRONTENDS"


def required_frontends() -> set[str]:
    """The front-ends ``FASTXENT_REQUIRE_FRONTENDS`` names."""
    return {name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()}


def require_frontend(frontend: str, module: str | None = None) -> ModuleType:
    """Import ``module`` (default: ``frontend``) for testing the front-end ``frontend``.

    On an ``ImportError`` the calling test module is skipped, unless
    ``FASTXENT_REQUIRE_FRONTENDS`` names ``frontend``: then it fails, with the
    import error as the reason.
    """
    name = module or frontend
    try:
        return importlib.import_module(name)
    except ImportError as error:
        reason = f"{name} cannot be imported ({error})"
        if frontend in required_frontends():
            pytest.fail(f"{ENV} requires the {frontend} front-end, but {reason}", pytrace=False)
        pytest.skip(f"the {frontend} front-end is not tested: {reason}", allow_module_level=True)
        raise  # unreachable: skip raises; keeps type checkers from seeing a missing return
