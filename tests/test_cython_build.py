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


def _listing() -> dict[str, str]:
    """Disassembled bodies of every function of the extension, by name."""
    from fastxent._backends.cython_backend import _kernels

    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed")
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", _kernels.__file__], capture_output=True, text=True, check=True
    ).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^[0-9a-f]+ <([^>]*)>:\n(.*?)(?=\n\n)", listing, re.M | re.S)}


def disassembly_of(function: str) -> dict[str, str]:
    """The bodies of ``function`` and of the fx_ functions it calls or jumps to, transitively (the compiler
    decides which helpers it inlines)."""
    bodies = _listing()
    if function not in bodies:
        return {}
    reached, pending = {function}, [function]
    while pending:
        for callee in re.findall(r"(?:call|jmp)\w*\s+[0-9a-f]+ <(fx_\w+)>", bodies[pending.pop()]):
            if callee in bodies and callee not in reached:
                reached.add(callee)
                pending.append(callee)
    return {name: bodies[name] for name in reached}


@pytest.mark.parametrize(
    "primitive", ["fx_shift_sum", "fx_store_exp", "fx_tile_stats", "fx_tile_scale", "fx_rows_stats"]
)
@pytest.mark.parametrize("suffix", ["f32", "f64"])
def test_avx2_variants_are_vectorised_without_libm_exp(primitive, suffix):
    from fastxent._config import cpu_simd_features

    if "avx2" not in cpu_simd_features():
        pytest.skip("needs an x86-64 CPU with AVX2")
    bodies = disassembly_of(f"{primitive}_{suffix}_avx2")
    assert bodies, f"{primitive}_{suffix}_avx2 not found in the extension"
    code = "\n".join(bodies.values())
    assert re.search(r"vfmadd\w+\s+.*%ymm", code), "the exp polynomial is not evaluated on ymm registers"
    assert not re.search(r"call.*\bexp", code), "a scalar libm exp is called"


@pytest.mark.parametrize("suffix", ["f32", "f64"])
def test_short_rows_load_lanes_without_gathers(suffix):
    """Lanes across rows are loaded by in-register transposes: a gather is microcoded on AMD (it halved the
    short rows' speed)."""
    from fastxent._config import cpu_simd_features

    if "avx2" not in cpu_simd_features():
        pytest.skip("needs an x86-64 CPU with AVX2")
    for primitive in ("fx_rows_stats", "fx_rows_scale", "fx_rows_shifted"):
        bodies = disassembly_of(f"{primitive}_{suffix}_avx2")
        assert bodies, f"{primitive}_{suffix}_avx2 not found in the extension"
        assert not re.search(r"vgather", "\n".join(bodies.values())), f"{primitive} gathers"


def test_dispatch_picked_avx2_on_an_avx2_cpu():
    from fastxent._backends.cython_backend import ISA
    from fastxent._config import cpu_simd_features

    features = cpu_simd_features()
    if "avx2" in features and "fma" in features:
        assert ISA in ("avx2+fma", "native")
    else:
        assert ISA == "baseline"
