"""Doctest collection: the optional front-ends' modules import their framework, so they are
collected only where it is installed (their tests in tests/ fail instead of skipping when
FASTXENT_REQUIRE_FRONTENDS names them)."""

import importlib.util

# framework -> its front-end; a package is ignored whole (each of its modules imports the framework).
_FRONTENDS = {"torch": "fastxent/torch", "jax": "fastxent/jax", "dask": "fastxent/dask"}

collect_ignore = [path for name, path in _FRONTENDS.items() if importlib.util.find_spec(name) is None]
