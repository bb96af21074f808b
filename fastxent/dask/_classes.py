"""Cross-entropy graphs with the class axis in chunks: a two-pass online log-sum-exp.

Each (row block, class block) task reduces its block to three float64
numbers per row (:mod:`fastxent.dask._class_blocks`); one task per row block
combines its class blocks; the rows' losses follow. The gradient is a
second pass over the class blocks with each row's statistics broadcast.
"""

from __future__ import annotations

from functools import partial

import dask.array as da

from . import _class_blocks as class_blocks
from ._graph import F64, OBJECT, Arg, blockwise, meta, reduce_partials
from ._tasks import in_backend
from ._xent_args import XentArgs

#: The index name of the statistics' trailing axis.
STATS = "stats"


def stats(call: XentArgs) -> tuple[da.Array, da.Array]:
    """Each class block's ``(lse, a, b)`` per row, and each row's over all class blocks.

    The first is the logits' shape with the class axis of one per block,
    the second target-shaped; both with a trailing axis of 3. A task per
    (row block, class block) computes a block's stats; one task per row
    block combines those of all its class blocks.
    """
    per_block = blockwise(
        partial(class_blocks.class_stats, opts=call.opts, n_classes=call.n_classes, probabilities=call.probabilities),
        (*call.l_ind, STATS),
        call.logits, call.l_ind, call.target, call.target_ind, *call.block_weight_arg(), *call.starts_arg(),
        new_axes={STATS: class_blocks.N_STATS}, adjust_chunks={call.class_index: 1},
        align_arrays=False, meta=meta(call.logits.ndim + 1, F64),
    )  # fmt: skip
    # All class blocks of a row block in one task (their stats are 24 bytes a row): measured
    # faster than dask.array.reduction's tree (split_every 4 or 32), most with many class blocks.
    combined = da.blockwise(
        in_backend(partial(class_blocks.combine_stats, axis=(call.ca,), keepdims=False)),
        (*call.t_ind, STATS), per_block, (*call.l_ind, STATS),
        concatenate=True, meta=meta(len(call.t_ind) + 1, F64),
    )  # fmt: skip
    return per_block, combined


def loss_from_stats(call: XentArgs, combined: da.Array) -> da.Array:
    """The loss (per row, or reduced as ``call.opts.reduction`` says) from the rows' combined stats."""
    opts, t_ind = call.opts, call.t_ind
    if opts.reduction == "none":
        return blockwise(
            partial(class_blocks.stats_losses, opts=opts, n_classes=call.n_classes, dtype=call.dtype),
            t_ind, combined, (*t_ind, STATS), *call.row_target(),
            meta=meta(len(t_ind), call.dtype),
        )  # fmt: skip
    partials = blockwise(
        partial(class_blocks.stats_partials, opts=opts, n_classes=call.n_classes, dtype=call.compute),
        t_ind, combined, (*t_ind, STATS), *call.row_target(), *call.weight_arg(),
        adjust_chunks=call.partials_chunks(), meta=meta(len(t_ind), OBJECT),
    )  # fmt: skip
    return reduce_partials(partials, opts, call.dtype)


def loss(call: XentArgs) -> da.Array:
    """The lazy loss of :func:`fastxent.dask.cross_entropy`."""
    return loss_from_stats(call, stats(call)[1])


def loss_and_grad(call: XentArgs, upstream: Arg, totals: Arg) -> tuple[da.Array, da.Array]:
    """The lazy loss and gradient of :func:`fastxent.dask.cross_entropy_and_grad`.

    ``upstream`` and ``totals`` are :meth:`XentArgs.upstream` and :meth:`XentArgs.totals`.
    """
    l_ind, t_ind = call.l_ind, call.t_ind
    block_stats, combined = stats(call)
    grad = blockwise(
        partial(
            class_blocks.class_grad, opts=call.opts, n_classes=call.n_classes, probabilities=call.probabilities,
            dtype=call.dtype,
        ),
        l_ind, call.logits, l_ind, call.target, call.target_ind, *call.block_weight_arg(), *call.starts_arg(),
        block_stats, (*l_ind, STATS), combined, (*t_ind, STATS), *upstream, *totals,
        align_arrays=False, meta=meta(call.logits.ndim, call.dtype),
    )  # fmt: skip
    return loss_from_stats(call, combined), grad
