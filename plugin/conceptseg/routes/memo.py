"""What a weight-free route computed, remembered by a digest of what it was computed from.

A run verifies the appearance route by leaving each demonstration out and then fits it on all
of them; a re-run after a review round, a saved concept applied again, each shard worker and
every run from the App server's process start from the same demonstrations. Their pixel
features and, with the route's fixed seed, their forests come out the same, and computing
them is most of the route's cost (3 nuclei tiles of 128²: features 0.25 s per image, a forest
0.7 s, four forests per run). So the process keeps the most recent ones:

- the demonstrations' features by the image's bytes and the feature settings, up to
  ``FEATURE_BYTES`` in all (an image whose features alone exceed it is not kept; targets'
  are never kept: a run visits each once);
- fitted forests by their training pixels, labels and settings, the most recent up to
  ``FOREST_BYTES`` in all (a forest of 32 trees takes 0.1-1 MB: hundreds fit, so a re-run
  still finds its forests after other runs in the same process).

What is returned is shared: feature arrays are read-only, and a forest is only read after
it is fitted (predict; the route sets its thread count per call, which changes no result).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

FEATURE_BYTES = 128 * 2**20
FOREST_BYTES = 64 * 2**20
NODE_BYTES = 80  # a fitted tree node's arrays (children, feature, threshold, impurity, counts, value)

_lock = threading.Lock()
_features: OrderedDict[str, np.ndarray] = OrderedDict()
_forests: OrderedDict[str, object] = OrderedDict()


def digest(*arrays: np.ndarray, **settings) -> str:
    """A key for arrays (their dtype, shape and bytes) computed with ``settings``."""
    h = hashlib.blake2b(digest_size=20)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()


def features(key: str | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The features under ``key``, computed (and kept, read-only) when missing; ``None``: not kept."""
    if key is None:
        return compute()
    with _lock:
        if key in _features:
            _features.move_to_end(key)
            return _features[key]
    value = compute()
    value.flags.writeable = False  # shared by every later caller: a write would change theirs
    if value.nbytes <= FEATURE_BYTES:
        with _lock:
            _features[key] = value
            while sum(v.nbytes for v in _features.values()) > FEATURE_BYTES:
                _features.popitem(last=False)
    return value


def forest(key: str, fit: Callable[[], object]):
    """The fitted forest under ``key``, fitted (and kept, within ``FOREST_BYTES``) when missing."""
    with _lock:
        if key in _forests:
            _forests.move_to_end(key)
            return _forests[key]
    value = fit()
    if forest_bytes(value) <= FOREST_BYTES:
        with _lock:
            _forests[key] = value
            while sum(forest_bytes(v) for v in _forests.values()) > FOREST_BYTES:
                _forests.popitem(last=False)
    return value


def forest_bytes(forest) -> int:
    """Memory a fitted scikit-learn forest's trees take, from their node counts."""
    return sum(tree.tree_.node_count for tree in getattr(forest, "estimators_", ())) * NODE_BYTES


def clear() -> None:
    """Forgets everything kept (for measuring the cost of a first run)."""
    with _lock:
        _features.clear()
        _forests.clear()


def kept() -> tuple[int, int]:
    """How many feature arrays and forests are kept now."""
    with _lock:
        return len(_features), len(_forests)
