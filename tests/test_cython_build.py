"""The Cython extension's machine code: AVX2 variants vectorised, no scalar libm exp in the loops."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import fastxent

pytestmark = pytest.mark.skipif(
    "cython" not in fastxent.available_backends(), reason="the Cython backend is not built (CI requires it)"
)


def disassembly_of(function_prefix: str) -> dict[str, str]:
    """Disassembled bodies of the extension's functions whose names start with ``function_prefix``."""
    from fastxent._backends.cython_backend import _kernels

    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed")
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", _kernels.__file__], capture_output=True, text=True, check=True
    ).stdout
    bodies = {}
    for match in re.finditer(rf"^[0-9a-f]+ <({function_prefix}[^>]*)>:\n(.*?)(?=\n\n)", listing, re.M | re.S):
        bodies[match.group(1)] = match.group(2)
    return bodies


@pytest.mark.parametrize("primitive", ["fx_shift_sum", "fx_store_exp", "fx_tile_stats", "fx_tile_scale"])
@pytest.mark.parametrize("suffix", ["f32", "f64"])
def test_avx2_variants_are_vectorised_without_libm_exp(primitive, suffix):
    from fastxent._config import cpu_simd_features

    if "avx2" not in cpu_simd_features():
        pytest.skip("needs an x86-64 CPU with AVX2")
    bodies = disassembly_of(f"{primitive}_{suffix}_avx2")
    assert bodies, f"{primitive}_{suffix}_avx2 not found in the extension"
    for body in bodies.values():
        assert re.search(r"vfmadd\w+\s+.*%ymm", body), "the exp polynomial is not evaluated on ymm registers"
        assert not re.search(r"call.*\bexp", body), "a scalar libm exp is called"


def test_dispatch_picked_avx2_on_an_avx2_cpu():
    from fastxent._backends.cython_backend import ISA
    from fastxent._config import cpu_simd_features

    features = cpu_simd_features()
    if "avx2" in features and "fma" in features:
        assert ISA in ("avx2+fma", "native")
    else:
        assert ISA == "baseline"
