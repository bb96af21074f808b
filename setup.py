"""Builds fastxent's Cython extension; all metadata lives in pyproject.toml.

Environment switches:

- ``FASTXENT_USE_OPENMP=0`` builds a serial extension (OpenMP is otherwise
  used when the compiler accepts it; when it does not, the build says so and
  goes serial).
- ``FASTXENT_NATIVE=1`` compiles for this machine only (``-march=native``);
  by default the build is portable and picks AVX2 code at run time.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def _compiler() -> str:
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"


def _openmp_flags() -> list[str]:
    """Compile/link flags for OpenMP, or [] when it is switched off or unavailable."""
    if os.environ.get("FASTXENT_USE_OPENMP", "1") == "0":
        print("fastxent: FASTXENT_USE_OPENMP=0, building the serial extension", file=sys.stderr)
        return []
    if sys.platform == "win32":
        return ["/openmp"]
    candidates = [["-fopenmp"], ["-Xpreprocessor", "-fopenmp", "-lomp"]]
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w", encoding="ascii") as handle:
            handle.write(PROBE)
        for flags in candidates:
            result = subprocess.run(
                [_compiler(), source, "-o", os.path.join(tmp, "probe"), *flags],
                capture_output=True,
                check=False,
            )
            if result.returncode == 0:
                return flags
    print("fastxent: the compiler does not support OpenMP; building the serial extension", file=sys.stderr)
    return []


def _extension() -> Extension:
    openmp = _openmp_flags()
    compile_args: list[str] = []
    link_args: list[str] = []
    macros: list[tuple[str, str | None]] = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if sys.platform != "win32":
        # -fopenmp-simd honours `#pragma omp simd` even in the serial build;
        # -fno-trapping-math lets gcc turn float selects into blends (we never
        # read FP exception flags). No -ffast-math: it would break -inf/NaN.
        compile_args += ["-O3", "-fopenmp-simd", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]
        compile_args += [flag for flag in openmp if flag != "-lomp"]
        link_args += openmp
    else:
        compile_args += ["/O2", *openmp]
    if os.environ.get("FASTXENT_NATIVE") == "1":
        compile_args.append("-march=native")
        macros.append(("FASTXENT_NATIVE", "1"))
    return Extension(
        "fastxent._backends.cython_backend._kernels",
        ["fastxent/_backends/cython_backend/_kernels.pyx"],
        include_dirs=["fastxent/_backends/cython_backend", numpy.get_include()],
        # The C headers are #included by the generated C, not cimported: list
        # them so an edited header rebuilds the extension in place.
        depends=sorted(glob.glob("fastxent/_backends/cython_backend/*.h")),
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


if shutil.which(_compiler()) is None and sys.platform != "win32":
    print(f"fastxent: C compiler {_compiler()!r} not found", file=sys.stderr)

setup(ext_modules=cythonize([_extension()], compiler_directives={"language_level": "3"}))
