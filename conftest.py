"""Doctest collection: the optional front-ends' modules import their framework, so they are
collected only where it is installed (their tests in tests/ fail instead of skipping when
FASTXENT_REQUIRE_FRONTENDS names them)."""

import importlib.util

collect_ignore = [f"fastxent/{name}.py" for name in ("torch", "jax", "dask") if importlib.util.find_spec(name) is None]
