"""Type stub of the compiled Cython kernels (see _kernels.pyx)."""

import numpy as np

ISA: str
OPENMP: bool
SERIAL_BELOW: int
TILE_BYTES: int

def tile_width(n_classes: int, n_positions: int, itemsize: int) -> int: ...
def logsumexp(x: np.ndarray, out: np.ndarray, n_threads: int) -> None: ...
def softmax(x: np.ndarray, out: np.ndarray, log_space: bool, n_threads: int) -> None: ...
def cross_entropy_index(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    ignore_index: int,
    eps: float,
    cap: float,
    z_coef: float,
    loss: np.ndarray,
    lse: np.ndarray,
    grad: np.ndarray,
    gscale: np.ndarray,
    with_grad: bool,
    n_threads: int,
) -> None: ...
def cross_entropy_probs(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    eps: float,
    cap: float,
    z_coef: float,
    loss: np.ndarray,
    lse: np.ndarray,
    grad: np.ndarray,
    gscale: np.ndarray,
    with_grad: bool,
    n_threads: int,
) -> None: ...
