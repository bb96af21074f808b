"""What ``auto`` picks for a call: the backend measured fastest on its shape class.

A call's shape class is its dtype, its operation, its layout (the class axis
last: ``rows``; up to 4095 positions after it: ``tiles``; more: ``planes``),
a bucket of its number of classes and a bucket of its size in bytes. The
table was measured on one machine kind at its default thread count (2); the
thread count is not part of the key. The measured table is
one per SIMD level Numba compiles for (``_auto_table_avx512``,
``_auto_table_avx2``: Numba's code follows the CPU, Cython's is AVX2 on
both), written by ``python -m fastxent._auto_measure --write`` on the
project's machine kind. A class the table lacks, a CPU with neither level,
or a backend that is not available here falls back to
:data:`fastxent._backends.AUTO_ORDER`.
"""

from __future__ import annotations

import importlib
import os
from bisect import bisect_left, bisect_right

from . import AUTO_ORDER

#: The operations the table distinguishes (the bench's).
OPERATIONS = ("loss", "loss+grad", "softmax", "log_softmax", "logsumexp")
#: Upper edges of the class buckets (a bucket holds C <= its edge); the last bucket has no edge.
CLASS_EDGES = (4, 16, 32, 128, 1024, 8192)
#: The classes each bucket is measured at.
CLASS_SAMPLES = (2, 10, 32, 100, 1000, 8192, 32000)
#: Sizes (bytes of logits) where the size buckets change: small calls are dominated by the per-call
#: cost, huge ones by the memory beyond the last-level cache (16-32 MB on the machines measured).
SIZE_EDGES = (1 << 18, 1 << 22, 1 << 24)
SIZE_NAMES = ("small", "medium", "large", "huge")
#: The bytes each size bucket is measured at.
SIZE_SAMPLES = (1 << 15, 1 << 20, 1 << 23, 1 << 26)
_ITEMSIZE = {"float32": 4, "float64": 8}
#: Positions after the class axis where the layouts change: the class axis last (rows), short runs of
#: positions per class (tiles), images of 64 x 64 and more (planes).
POSITION_EDGES = (1, 4095)
LAYOUTS = ("rows", "tiles", "planes")
DTYPES = ("float32", "float64")
#: A challenger must beat the preferred backend (the first of AUTO_ORDER: no JIT start-up) by this much.
MARGIN = 1.05
#: Backends that compile their kernels on first use (seconds; ~20 s with an empty on-disk cache).
JIT_BACKENDS = frozenset({"numba"})

#: SIMD level -> the module of its table.
TABLE_MODULES = {level: f"fastxent._backends._auto_table_{level}" for level in ("avx512", "avx2")}
Key = tuple[str, str, str, int, str]
Table = dict[Key, tuple[str, dict[str, float]]]
_table: Table | None = None


def simd_level() -> str | None:
    """The SIMD level of the code Numba makes here ("avx512", "avx2"), or None for neither.

    Numba compiles for this CPU's features unless ``NUMBA_CPU_FEATURES`` lists
    others (``NUMBA_CPU_NAME`` alone keeps the host's features).
    """
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if features is not None:
        enabled = {part.strip()[1:] for part in features.split(",") if part.strip().startswith("+")}
    else:
        from .._config import cpu_simd_features  # imported here: _config imports the dispatch, which imports this

        enabled = set(cpu_simd_features())
    if "avx512f" in enabled:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= enabled else None


def table() -> Table:
    """The measured table for this machine's SIMD level (empty where there is none); read once."""
    global _table
    if _table is None:
        level = simd_level()
        _table = importlib.import_module(TABLE_MODULES[level]).TABLE if level in TABLE_MODULES else {}
    return _table


def table_key(dtype: str, operation: str, n_classes: int, positions: int, size: int) -> Key:
    """The table's key for a call of ``size`` elements.

    That is ``(dtype, operation, layout, the class bucket's sample, the size bucket)``.
    """
    return (
        dtype,
        operation,
        LAYOUTS[bisect_left(POSITION_EDGES, positions)],
        CLASS_SAMPLES[bisect_left(CLASS_EDGES, n_classes)],
        SIZE_NAMES[bisect_right(SIZE_EDGES, size * _ITEMSIZE[dtype])],
    )


def measured_choice(key: Key) -> str | None:
    """The backend the table names for a call of table key ``key``, or None where it has no entry."""
    entry = table().get(key)
    return None if entry is None else entry[0]


def pick(speeds: dict[str, float], order: tuple[str, ...]) -> str:
    """The winner of one measured class: the first of ``order`` unless another is MARGIN faster.

    ``speeds`` maps backend names to GB/s (higher is better).
    """
    preferred = next(name for name in order if name in speeds)
    fastest = max(speeds, key=speeds.__getitem__)
    return fastest if speeds[fastest] > MARGIN * speeds[preferred] else preferred


def saving(key: Key, nbytes: int) -> float:
    """Seconds the table's winner saves on a call of ``nbytes`` bytes of logits in class ``key``.

    Against the preferred backend; 0 where the table has no numbers.
    """
    entry = table().get(key)
    if entry is None:
        return 0.0
    winner, speeds = entry
    fallback = next((name for name in AUTO_ORDER if name in speeds), winner)
    if winner == fallback or not speeds.get(winner) or not speeds.get(fallback):
        return 0.0
    return max(0.0, nbytes / 1e9 * (1 / speeds[fallback] - 1 / speeds[winner]))
