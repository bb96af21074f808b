"""Fast fused softmax and cross-entropy-with-logits kernels for the CPU.

Pass NumPy arrays (or anything :func:`numpy.asarray` accepts) of logits and
labels; get losses, softmax / log-softmax / logsumexp and gradients, each
computed in one sweep per row by the fastest available backend.
"""

from ._config import show_config
from ._dispatch import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from ._linear import linear_cross_entropy, linear_cross_entropy_and_grad
from ._normalize import log_softmax, logsumexp, softmax
from ._tf_compat import softmax_cross_entropy_with_logits, sparse_softmax_cross_entropy_with_logits
from ._version import __version__
from ._xent import cross_entropy, cross_entropy_and_grad

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "available_backends",
    "cross_entropy",
    "cross_entropy_and_grad",
    "get_backend",
    "get_num_threads",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "log_softmax",
    "logsumexp",
    "set_backend",
    "set_num_threads",
    "show_config",
    "softmax",
    "softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits",
    "use_backend",
]
