"""The number of threads the kernels may use.

``FASTXENT_NUM_THREADS`` is read once, at import; a bad value raises on first
use, naming the variable. :mod:`fastxent._dispatch` re-exports the public
functions.
"""

from __future__ import annotations

import os

__all__ = ["get_num_threads", "set_num_threads"]

_ENV_THREADS = os.environ.get("FASTXENT_NUM_THREADS", "").strip()
_process_threads: int | None = None
#: The default thread count, resolved on first use and again after a fork or ``set_num_threads(None)``.
_default_threads: int | None = None


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``), rounded up; None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def _usable_cpus() -> int:
    """CPUs this process may use: affinity, cgroup quota, and a valid ``OMP_NUM_THREADS``.

    An invalid ``OMP_NUM_THREADS`` (0, negative, not a number) is ignored, as
    GNU OpenMP ignores it.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, limit)
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        count = min(count, int(omp))
    return count


def _check_threads(n: object, source: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{source} must be an integer >= 1; got {n!r}")
    return n


def get_num_threads() -> int:
    """Number of threads the kernels may use.

    :func:`set_num_threads` wins over ``FASTXENT_NUM_THREADS``, which wins over
    the number of CPUs this process may run on (its affinity mask, its cgroup
    CPU quota, and ``OMP_NUM_THREADS`` when that is a positive integer).
    That last number is worked out once, and again in a forked child and
    after ``set_num_threads(None)``: call that after changing the affinity or
    ``OMP_NUM_THREADS`` at run time. Values above the number of cores are
    accepted; each backend uses at most as many threads as it can start
    (Numba: ``NUMBA_NUM_THREADS``).
    """
    global _default_threads
    if _process_threads is not None:
        return _process_threads
    if _default_threads is None:
        if _ENV_THREADS:
            if not _ENV_THREADS.isdigit() or int(_ENV_THREADS) < 1:
                raise ValueError(f"FASTXENT_NUM_THREADS must be an integer >= 1; got {_ENV_THREADS!r}")
            _default_threads = int(_ENV_THREADS)
        else:
            _default_threads = _usable_cpus()
    return _default_threads


def set_num_threads(n: int | None) -> None:
    """Set the number of threads the kernels may use, for the whole process.

    Parameters
    ----------
    n : int or None
        At least 1; None goes back to the default of :func:`get_num_threads`,
        worked out afresh. Results do not depend on it: kernels split work by
        rows and sum over rows in a fixed order.
    """
    global _process_threads, _default_threads
    if n is None:
        _process_threads = _default_threads = None
        return
    _process_threads = _check_threads(n, "n")


def _forget_default_threads() -> None:
    global _default_threads
    _default_threads = None


# A forked child may run on other CPUs (a pool pinned per worker, a new cgroup).
os.register_at_fork(after_in_child=_forget_default_threads)
