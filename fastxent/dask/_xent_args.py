"""A cross-entropy's arguments for :mod:`fastxent.dask`: checked, and laid out as Dask arrays with matching blocks.

The graphs of :mod:`fastxent.dask._rows` (the class axis in one chunk) and
:mod:`fastxent.dask._classes` (the class axis in chunks) are built from an
:class:`XentArgs`.
"""

from __future__ import annotations

import math
from functools import partial

import dask.array as da
import numpy as np

from .. import _xent
from .._reduction import Partials
from .._validate import target_shape_error
from . import _blocks as blocks
from ._graph import (
    F64,
    OBJECT,
    Arg,
    as_dask,
    blockwise,
    indices,
    meta,
    one_key,
    options,
    probe,
    sum_partials,
    zeros,
)
from ._row_blocks import target_partials


class XentArgs:
    """A checked cross-entropy call laid out as Dask arrays with matching blocks."""

    def __init__(
        self,
        input: object,
        target: object,
        weight: object,
        ignore_index: object,
        reduction: object,
        label_smoothing: object,
        z_loss: object,
        softcap: object,
    ) -> None:
        if not isinstance(input, da.Array):
            array = np.asarray(input)
            axis = 0 if array.ndim <= 1 else 1
            input = da.from_array(array, chunks=tuple(-1 if i == axis else "auto" for i in range(array.ndim)))
        logits = as_dask(input)
        shape = logits.shape
        if logits.ndim == 0:
            raise ValueError("input must have at least 1 dimension (the class axis); got a 0-d array")
        self.ca = ca = 0 if logits.ndim == 1 else 1
        self.n_classes = n_classes = shape[ca]
        index_shape = shape[:1] + shape[2:] if logits.ndim > 1 else ()
        row_chunks = tuple(c for i, c in enumerate(logits.chunks) if i != ca)
        target_array = target if isinstance(target, da.Array) else np.asarray(target)
        kind = target_array.dtype.kind
        self.probabilities = kind == "f" or target_array.dtype.name == "bfloat16"
        expected_shape = shape if self.probabilities else index_shape
        # Other dtypes are for the probe below to reject, with the in-memory message.
        if (kind in "iu" or self.probabilities) and target_array.shape != expected_shape:
            raise target_shape_error(target_array, shape, index_shape)  # type: ignore[arg-type]
        # An in-memory call on zero rows checks every dtype and option with the usual messages.
        probe_shape = (0, n_classes, *shape[2:])
        probe_target = zeros(probe_shape if self.probabilities else (0, *shape[2:]), target_array.dtype)
        checked = _xent.cross_entropy(
            zeros(probe_shape, logits.dtype), probe_target, probe(weight), ignore_index, reduction,  # type: ignore[arg-type]
            label_smoothing, z_loss=z_loss, softcap=softcap,  # type: ignore[arg-type]
        )  # fmt: skip
        self.dtype = np.asarray(checked).dtype
        self.compute = blocks.compute_dtype(self.dtype)
        self.opts = options(ignore_index, label_smoothing, z_loss, softcap, reduction)
        self.logits = logits
        self.l_ind = indices(logits.ndim)
        self.t_ind = tuple(i for axis, i in enumerate(self.l_ind) if axis != ca)
        if self.probabilities:
            self.target = as_dask(target_array, chunks=logits.chunks).rechunk(logits.chunks)
            self.target_ind = self.l_ind
        else:
            self.target = as_dask(target_array, chunks=row_chunks).rechunk(row_chunks)
            self.target_ind = self.t_ind
        self.weight = one_key(weight)
        self.class_chunked = logits.numblocks[ca] > 1
        self.loss_shape = index_shape
        self.rows = math.prod(index_shape)

    @property
    def class_index(self) -> str:
        """The class axis's index name."""
        return self.l_ind[self.ca]

    def weight_arg(self) -> Arg:
        """The class weights as one block (one key of the graph)."""
        return (None, None) if self.weight is None else (self.weight, (self.class_index,))

    def block_weight_arg(self) -> Arg:
        """The class weights in the class axis's chunks."""
        if self.weight is None:
            return None, None
        return self.weight.rechunk((self.logits.chunks[self.ca],)), (self.class_index,)

    def starts_arg(self) -> tuple[da.Array, tuple[str, ...]]:
        """The first class of each class block, one block each."""
        starts = np.cumsum((0, *self.logits.chunks[self.ca][:-1]))
        return da.from_array(starts, chunks=1), (self.class_index,)

    def single_block(self) -> bool:
        """Whether the logits and the target are one block each: then the in-memory call is the whole graph."""
        return self.logits.npartitions == 1 and self.target.npartitions == 1

    def partials_chunks(self) -> dict[str, int]:
        """``adjust_chunks`` of blocks reduced to one Partials each."""
        return dict.fromkeys(self.t_ind, 1)

    def row_target(self) -> Arg:
        """The class indices by rows (None for probabilities: the stats hold all a row's loss needs)."""
        return (None, None) if self.probabilities else (self.target, self.t_ind)

    def totals(self) -> Arg:
        """The divisor and valid rows of the whole target: what a ``"mean"`` / ``"sum"`` gradient's scale needs.

        ``(None, None)`` for ``reduction="none"``, which has no scale.
        """
        if self.opts.reduction == "none":
            return None, None
        if self.probabilities:
            return blocks.object_block(Partials(0.0, float(self.rows), 0.0, float(self.rows)), 0), None
        per_block = blockwise(
            partial(target_partials, ignore_index=self.opts.ignore_index, dtype=self.compute, n_classes=self.n_classes),
            self.t_ind, self.target, self.t_ind, *self.weight_arg(),
            adjust_chunks=self.partials_chunks(), meta=meta(len(self.t_ind), OBJECT),
        )  # fmt: skip
        return sum_partials(per_block), ()

    def upstream(self, grad_output: object) -> Arg:
        """``grad_output`` as a blockwise argument: a float, a 0-d Dask array, or target-shaped blocks."""
        if grad_output is None:
            return None, None
        dtype = grad_output.dtype if isinstance(grad_output, da.Array) else np.asarray(grad_output).dtype
        if dtype.kind not in "fiu":
            raise TypeError(f"grad_output must hold real numbers; got dtype {dtype}")
        shape = np.shape(grad_output)  # type: ignore[call-overload]
        if self.opts.reduction != "none":
            if shape:
                raise ValueError(
                    f"grad_output must be a scalar for reduction={self.opts.reduction!r}; got shape {shape}"
                )
            return (grad_output, ()) if isinstance(grad_output, da.Array) else (float(grad_output), None)  # type: ignore[arg-type]
        if not shape and not isinstance(grad_output, da.Array):
            return float(grad_output), None  # type: ignore[arg-type]
        loss_shape = self.loss_shape
        try:
            if np.broadcast_shapes(shape, loss_shape) != loss_shape:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"grad_output must be a scalar or have the loss's shape {loss_shape}; got shape {shape}"
            ) from None
        row_chunks = tuple(c for i, c in enumerate(self.logits.chunks) if i != self.ca)
        rows = da.broadcast_to(as_dask(grad_output), loss_shape).astype(F64).rechunk(row_chunks)
        return rows, self.t_ind
