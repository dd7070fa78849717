"""How many CPU threads this process's numeric work may use.

Several shard workers on one machine each default to every core: the forest's joblib
threads, scikit-image's feature pool, OpenCV's pool, the BLAS and OpenMP pools of numpy,
scikit-learn and torch. Two workers on two cores then run four or more busy threads and
spend their time switching. A process therefore has one budget (:func:`set_threads`;
``CONCEPTSEG_THREADS`` in the environment, or every core the process may use) that every
pool is limited to; a shard sets it to its share of the cores (:mod:`conceptseg.runs.shards.queue`).
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "CONCEPTSEG_THREADS"
logger = logging.getLogger(__name__)
_budget: int | None = None
_limits = None  # threadpoolctl's limiter, kept so that the limit lasts


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def budget() -> int:
    """The thread budget: the last :func:`set_threads`, else ``CONCEPTSEG_THREADS``, else every core."""
    if _budget is not None:
        return _budget
    env = os.environ.get(ENV, "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return cores()


def explicit() -> bool:
    """Whether the user fixed the budget (``CONCEPTSEG_THREADS``), so that nothing adjusts it."""
    env = os.environ.get(ENV, "").strip()
    return env.isdigit() and int(env) >= 1


def set_threads(n: int) -> int:
    """Limits every numeric thread pool of this process to ``n`` threads (at least 1); returns n."""
    global _budget, _limits
    n = max(1, int(n))
    if n == _budget:
        return n
    _budget = n
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(n)
    if _limits is not None:
        _limits.restore_original_limits()
    _limits = threadpool_limits(limits=n)  # BLAS and OpenMP pools (numpy, scikit-learn)
    if "torch" in sys.modules:  # only where a model route already loaded it
        sys.modules["torch"].set_num_threads(n)
    logger.debug("numeric threads limited to %d", n)
    return n


def reset() -> None:
    """Gives the pools back their own defaults (a worker process runs other operations too)."""
    global _budget, _limits
    if _budget is None:
        return
    import cv2

    cv2.setNumThreads(-1)  # OpenCV's default
    if _limits is not None:
        _limits.restore_original_limits()
    _budget = _limits = None


# Below this many pixels the forest's trees are too quick to share out: joblib's dispatch and
# result polling cost more than the threads save (128² tiles: 13 ms with 1 thread, 16 ms with 2).
PARALLEL_PIXELS = 256 * 256


def forest_jobs(n_jobs: int | None, pixels: int) -> int:
    """Threads for one forest call over ``pixels``: ``n_jobs`` when set, else the budget on large images, else 1."""
    if n_jobs is not None:
        return n_jobs
    return budget() if pixels >= PARALLEL_PIXELS else 1
