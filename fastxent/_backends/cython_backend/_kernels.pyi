"""Type stub of the compiled Cython kernels (see _kernels.pyx)."""

import numpy as np

from .._interface import LossParams

ISA: str
OPENMP: bool
SERIAL_BELOW: int
TILE_BYTES: int

def tile_width(n_classes: int, n_positions: int, itemsize: int, n_rows: int = 1, n_threads: int = 1) -> int: ...
def logsumexp(x: np.ndarray, out: np.ndarray, n_threads: int) -> None: ...
def logsumexp_scaled(x: np.ndarray, b: np.ndarray, out: np.ndarray, sign: np.ndarray, n_threads: int) -> None: ...
def softmax(x: np.ndarray, out: np.ndarray, log_space: bool, n_threads: int) -> None: ...
def index_target_stats(
    target: np.ndarray, weight: np.ndarray | None, n_classes: int, ignore_index: int
) -> tuple[int, float, int]: ...
def cross_entropy_index(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    params: LossParams,
    loss: np.ndarray,
    lse: np.ndarray,
    grad: np.ndarray | None,
    grad_scale: np.ndarray | float | None,
    totals: np.ndarray | None,
    n_threads: int,
) -> None: ...
def cross_entropy_probs(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    params: LossParams,
    loss: np.ndarray,
    lse: np.ndarray,
    grad: np.ndarray | None,
    grad_scale: np.ndarray | float | None,
    totals: np.ndarray | None,
    n_threads: int,
) -> None: ...
