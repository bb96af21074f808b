"""How the fused linear cross-entropy cuts a call: rows per block, classes per chunk, weight rows per scratch.

Every size keeps to one memory budget, a call's scratch within 10% of the
``(N, V)`` logits it never makes, and otherwise favours the matrix products,
which slow down on thin operands (docs/linear.md).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["block_size", "classes_per_chunk", "linear_chunk_rows", "weight_chunk_rows"]

#: A block has this many rows or this many bytes, whichever is more rows: the
#: products of a block of R rows each pack all of ``weight``, so their speed
#: falls with R (1 thread, V=32000, H=1024: 86-91 GFLOPS at 512 rows, 77-83
#: at 158, 45-79 at 79). Fitting the block in the last-level cache would cost
#: more in the products than it saves in the kernel.
BLOCK_ROWS = 256
BLOCK_BYTES = 64 * 2**20
#: ... but at most this fraction of the ``(N, V)`` logits, so that the scratch
#: of a call (the block and a few vectors) stays within 10% of the logits.
BLOCK_FRACTION = 0.09
#: ... and at least this many rows and bytes, whatever the fraction: fewer
#: save too little memory to pay for a block's fixed costs.
MIN_BLOCK_ROWS = 16
MIN_BLOCK_BYTES = 2**20
#: Without SciPy, the weight gradient is summed through a scratch of at most
#: this many bytes and a tenth of a block (so that block and scratch stay
#: within 10% of the logits); float16/bfloat16 weights are converted to
#: float32 as much at a time.
CHUNK_BYTES = 8 * 2**20


def linear_chunk_rows(n_rows: int, n_classes: int, dtype: npt.DTypeLike = np.float32) -> int:
    """Rows per block that :func:`fastxent.linear_cross_entropy` uses by default.

    A block of ``rows x n_classes`` logits in the compute dtype has 256 rows
    or 64 MiB, whichever is more rows (the matrix products slow down on
    thinner blocks), but at most 9% of the whole ``n_rows x n_classes``
    logits (the issue's memory goal: a call's scratch within 10% of them);
    at least 16 rows and 1 MiB (smaller blocks save too little to pay for
    themselves), at most ``n_rows``. The blocks are then evened out so that
    the last one is not a sliver.

    Parameters
    ----------
    n_rows : int
        ``N``, the number of rows of ``hidden`` (the product of its leading axes).
    n_classes : int
        ``V``, the number of rows of ``weight``.
    dtype : dtype, default float32
        The inputs' dtype; float16 and bfloat16 count as float32 (their
        compute dtype).

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> from fastxent._linear import linear_chunk_rows
    >>> linear_chunk_rows(100, 1000)
    100
    >>> linear_chunk_rows(2048, 32000) < 0.1 * 2048
    True
    """
    return block_size(n_rows, n_classes, max(np.dtype(dtype).itemsize, 4))


def block_size(count: int, width: int, itemsize: int) -> int:
    """How many of ``count`` lines of ``width`` logits go in a block: see :func:`linear_chunk_rows`."""
    line_bytes = max(width, 1) * itemsize
    lines = min(max(BLOCK_ROWS, BLOCK_BYTES // line_bytes), int(BLOCK_FRACTION * count))
    lines = min(max(lines, MIN_BLOCK_ROWS, MIN_BLOCK_BYTES // line_bytes), count)
    if lines <= 0:
        return 1
    blocks = -(-count // lines)
    return -(-count // blocks)


def classes_per_chunk(n_rows: int, n_classes: int, itemsize: int) -> int | None:
    """Classes per chunk when the loss alone is cheaper by chunks of classes than by blocks of rows; else None.

    A block of rows multiplies by all of ``weight`` (V x H), a chunk of
    classes by all of ``hidden`` (N x H): the cheaper way streams the smaller
    operand (the forward of an LM head: N << V). Both keep to the same budget.
    """
    if not n_rows or not n_classes:
        return None
    classes = block_size(n_classes, n_rows, itemsize)
    rows = block_size(n_rows, n_classes, itemsize)
    within_budget = classes * n_rows * itemsize <= max(BLOCK_FRACTION * n_rows * n_classes * itemsize, MIN_BLOCK_BYTES)
    cheaper = -(-n_classes // classes) * n_rows < -(-n_rows // rows) * n_classes
    return classes if within_budget and cheaper else None


def weight_chunk_rows(n_classes: int, n_hidden: int, itemsize: int, block_rows: int) -> int:
    """Rows of ``weight (n_classes, n_hidden)`` per chunk of scratch beside ``block_rows``: see :data:`CHUNK_BYTES`."""
    budget = min(CHUNK_BYTES, block_rows * n_classes * itemsize // 10)
    return max(1, min(n_classes, budget // max(1, n_hidden * itemsize)))
