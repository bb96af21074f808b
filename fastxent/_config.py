"""What this installation is made of: versions, CPU, threads, backends."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections import Counter
from typing import TextIO

from . import _dispatch
from ._backends import AUTO_ORDER, _auto
from ._version import __version__

_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "neon", "asimd")


def cpu_simd_features() -> list[str]:
    """SIMD feature flags of this CPU that matter to the kernels (Linux only)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in _SIMD_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def auto_summary() -> str:
    """What ``auto`` picks here: how many of its table's shape classes go to each backend, and the fallback."""
    available = _dispatch.available_backends()
    table = _auto.table()
    counts = Counter(next(name for name in (winner, *AUTO_ORDER) if name in available) for winner, _ in table.values())
    shares = ", ".join(f"{name} in {count}" for name, count in counts.most_common())
    fallback = _dispatch.get_backend()
    if not table:
        return f"{fallback} (no table measured for this CPU's SIMD level)"
    return (
        f"per call, from a table measured by shape class for {_auto.simd_level()} "
        f"({shares} of {len(table)} classes; {fallback} otherwise)"
    )


def config_lines() -> list[str]:
    """The lines :func:`show_config` prints."""
    available = set(_dispatch.available_backends())
    errors = _dispatch.backend_errors()
    lines = [
        f"fastxent {__version__}",
        f"python   {sys.version.split()[0]} ({platform.python_implementation()}, {platform.machine()})",
    ]
    lines += [f"{name:<8} {_version_of(name)}" for name in ("numpy", "numba", "llvmlite", "Cython")]
    lines += [
        f"cpu      {platform.processor() or platform.machine()}; SIMD: {' '.join(cpu_simd_features()) or 'unknown'}",
        f"threads  {_dispatch.get_num_threads()}",
        "backends:",
    ]
    for name in AUTO_ORDER:
        if name in available:
            details = getattr(_dispatch._loaded[name], "details", "")
            lines.append(f"  {name:<7} available" + (f" ({details})" if details else ""))
        else:
            lines.append(f"  {name:<7} unavailable: {errors.get(name, 'unknown reason')}")
    try:
        choice = _dispatch.backend_choice()
        if choice == "auto":
            lines.append(f"selected auto: {auto_summary()}")
        else:
            lines.append(f"selected {_dispatch.get_backend()}")
    except (ValueError, RuntimeError) as exc:
        lines.append(f"selected none: {exc}")
    return lines


def show_config(file: TextIO | None = None) -> None:
    """Print versions, CPU features, threads and each backend's availability.

    Parameters
    ----------
    file : text stream, optional
        Where to print; standard output by default.
    """
    print("\n".join(config_lines()), file=file or sys.stdout)
