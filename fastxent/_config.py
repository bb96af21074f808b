"""What this installation is made of: versions, CPU, threads, backends."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import TextIO

from . import _dispatch
from ._backends import AUTO_ORDER
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
        small, large = _dispatch.get_backend(size=1), _dispatch.get_backend()
        lines.append(f"selected {large}" + (f" ({small} below 2**20 elements)" if small != large else ""))
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
