"""Numba's on-disk cache, keyed on this whole package rather than on one file.

Numba stamps a cached kernel with its defining file only. Our kernels inline
helpers from other files of this package (``_simd.py`` into ``_rows.py``), so
a change to a helper alone left the old machine code in the cache; and a
process still running old code could save it under a newer file's stamp. Both
ended in wrong results or a crash. Importing this module (the package does it
before any kernel is decorated) puts locators first in Numba's list that add
a hash of every source file of the package, taken once, when this process
imported it: a kernel is reused only by processes that import the very same
code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba.core import caching

_PACKAGE = Path(__file__).resolve().parent


def _package_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


PACKAGE_STAMP = _package_hash()


def _stamped(base: type) -> type:
    """``base`` (a Numba locator class), for this package's files only, with the package hash in its stamp."""

    class PackageStamped(base):  # type: ignore[valid-type, misc]
        def get_source_stamp(self) -> object:
            return (super().get_source_stamp(), PACKAGE_STAMP)

        @classmethod
        def from_function(cls, py_func, py_file):  # type: ignore[no-untyped-def]
            if Path(py_file).resolve().parent != _PACKAGE:
                return None
            return super().from_function(py_func, py_file)

    PackageStamped.__name__ = PackageStamped.__qualname__ = f"PackageStamped{base.__name__}"
    return PackageStamped


def _install() -> None:
    names = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
    bases = [getattr(caching, name, None) or getattr(caching, "_" + name) for name in names]
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # type: ignore[attr-defined]  # 0.59 renamed it
    locators = impl._locator_classes
    if not any(getattr(cls, "__name__", "").startswith("PackageStamped") for cls in locators):
        locators[:0] = [_stamped(base) for base in bases]


_install()
