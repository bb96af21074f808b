"""The Numba backend: row-parallel fused kernels compiled on first use and cached on disk.

Importing this module imports Numba but compiles nothing; each kernel is
compiled for a dtype on its first call (or loaded from Numba's cache).
"""

from __future__ import annotations

import numpy as np

from .._interface import FloatArray, IntArray, LossParams, fill_totals, row_outputs, row_scale
from . import (
    _cache,  # noqa: F401  (first: every kernel's cache entry is stamped with the package hash)
    _launch,
    _rows,
    _scaled,
    _targets,
    _tiles,
)
from ._launch import NUMBA_CONFIG


def _scratch(x: FloatArray, out: FloatArray) -> np.ndarray:
    """Per-thread chunk buffers when ``out`` is ``x`` (an in-place call), else empty ones; see row_store_exp."""
    in_place = out.size > 0 and out.__array_interface__["data"][0] == x.__array_interface__["data"][0]
    return np.empty((NUMBA_CONFIG.NUMBA_NUM_THREADS, _rows.CHUNK if in_place else 0), x.dtype)


def _dummy(dtype: np.dtype, ndim: int) -> np.ndarray:
    """A placeholder for an output that is not wanted (kernels never touch it)."""
    return np.zeros((1,) * ndim, dtype=dtype)


_DUMMY_SCALE = np.zeros((1, 1))


class NumbaBackend:
    """Numba kernels; see :class:`fastxent._backends._interface.Backend`."""

    name = "numba"
    index_target_stats = staticmethod(_targets.index_target_stats)

    @property
    def details(self) -> str:
        """Threading layer and where compiled kernels are cached."""
        cache = _launch.NUMBA_CONFIG.CACHE_DIR or "__pycache__ beside the sources (else a user cache directory)"
        return f"threading layer {_launch.threading_layer()}, cache {cache}"

    def logsumexp(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        k = x.shape[2]
        if k == 1:
            _rows.logsumexp_rows(n_threads, x.size, x[:, :, 0], out[:, 0])
        else:
            _tiles.logsumexp_tiles(n_threads, x.size, x, out, _tiles.tile_width(x.shape[0], k, n_threads))

    def logsumexp_scaled(self, x: FloatArray, b: FloatArray, out: FloatArray, sign: FloatArray, n_threads: int) -> None:
        _scaled.logsumexp_scaled(n_threads, x.size, x, b, out, sign)

    def _softmax(self, x: FloatArray, out: FloatArray, n_threads: int, log: bool) -> None:
        k = x.shape[2]
        if k == 1:
            _rows.softmax_rows(n_threads, x.size, x[:, :, 0], out[:, :, 0], log, _scratch(x, out))
        else:
            _tiles.softmax_tiles(n_threads, x.size, x, out, log, _tiles.tile_width(x.shape[0], k, n_threads))

    def softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        self._softmax(x, out, n_threads, False)

    def log_softmax(self, x: FloatArray, out: FloatArray, n_threads: int) -> None:
        self._softmax(x, out, n_threads, True)

    def cross_entropy_index(
        self,
        logits: FloatArray,
        target: IntArray,
        weight: FloatArray | None,
        params: LossParams,
        loss: FloatArray | None,
        lse: FloatArray | None,
        grad: FloatArray | None,
        grad_scale: FloatArray | float | None,
        totals: FloatArray | None,
        n_threads: int,
    ) -> None:
        _, c, k = logits.shape
        loss, lse = row_outputs(loss, lse, logits)
        if weight is None:
            weight = np.ones(c, dtype=logits.dtype)
        with_grad = grad is not None and grad_scale is not None
        grad = grad if grad is not None and with_grad else _dummy(logits.dtype, 3)
        grad_scale = row_scale(grad_scale, loss.shape) if grad_scale is not None and with_grad else _DUMMY_SCALE
        options = (params.ignore_index, params.label_smoothing, params.softcap, params.z_coef)
        if k == 1:
            _rows.xent_index_rows(
                n_threads, logits.size, logits[:, :, 0], target[:, 0], weight, *options,
                loss[:, 0], lse[:, 0], grad[:, :, 0], grad_scale[:, 0], with_grad, _scratch(logits, grad),
            )  # fmt: skip
        else:
            _tiles.xent_index_tiles(
                n_threads, logits.size, logits, target, weight, *options,
                loss, lse, grad, grad_scale, with_grad, _tiles.tile_width(logits.shape[0], k, n_threads),
            )  # fmt: skip
        fill_totals(loss, lse, totals)

    def cross_entropy_probs(
        self,
        logits: FloatArray,
        target: FloatArray,
        weight: FloatArray | None,
        params: LossParams,
        loss: FloatArray | None,
        lse: FloatArray | None,
        grad: FloatArray | None,
        grad_scale: FloatArray | float | None,
        totals: FloatArray | None,
        n_threads: int,
    ) -> None:
        _, c, k = logits.shape
        loss, lse = row_outputs(loss, lse, logits)
        if c == 0:
            # No classes: every loss is an empty sum (the kernels would form 0 * -inf).
            loss[...] = 0
            lse[...] = -np.inf
            fill_totals(loss, lse, totals)
            return
        if weight is None:
            weight = np.ones(c, dtype=logits.dtype)
        with_grad = grad is not None and grad_scale is not None
        grad = grad if grad is not None and with_grad else _dummy(logits.dtype, 3)
        grad_scale = row_scale(grad_scale, loss.shape) if grad_scale is not None and with_grad else _DUMMY_SCALE
        options = (params.label_smoothing, params.softcap, params.z_coef)
        if k == 1:
            _rows.xent_probs_rows(
                n_threads, logits.size, logits[:, :, 0], target[:, :, 0], weight, *options,
                loss[:, 0], lse[:, 0], grad[:, :, 0], grad_scale[:, 0], with_grad, _scratch(logits, grad),
            )  # fmt: skip
        else:
            _tiles.xent_probs_tiles(
                n_threads, logits.size, logits, target, weight, *options,
                loss, lse, grad, grad_scale, with_grad, _tiles.tile_width(logits.shape[0], k, n_threads),
            )  # fmt: skip
        fill_totals(loss, lse, totals)


BACKEND = NumbaBackend()
