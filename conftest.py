"""Doctest collection: the optional front-ends' modules import their framework, so they are
collected only where it is installed (their tests in tests/ fail instead of skipping when
FASTXENT_REQUIRE_FRONTENDS names them)."""

import importlib.util

# Each front-end's framework and its code: a package (every module in it imports the framework) or a module.
_FRONTENDS = {"torch": "fastxent/torch", "jax": "fastxent/jax.py", "dask": "fastxent/dask.py"}

collect_ignore = [path for name, path in _FRONTENDS.items() if importlib.util.find_spec(name) is None]
