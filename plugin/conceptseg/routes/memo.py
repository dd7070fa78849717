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

Processes do not share memory, so shard workers, command-line re-runs and the App server each
fit the same forests again. With ``CONCEPTSEG_FOREST_CACHE_DIR`` set, fitted forests are also
written there (pickles, one per key, under the scikit-learn version that made them; the most
recently used up to ``FOREST_DISK_BYTES``), and a process loads one instead of fitting it. Point
it only at a directory you trust: loading a pickle runs what it says. A file that cannot be read
is fitted again and replaced; a directory that cannot be written costs the speed-up, not the run.

What is returned is shared: feature arrays are read-only, and a forest is only read after
it is fitted (predict; the route sets its thread count per call, which changes no result).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import tempfile
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

FEATURE_BYTES = 128 * 2**20
FOREST_BYTES = 64 * 2**20
FOREST_DISK_BYTES = 512 * 2**20  # in CONCEPTSEG_FOREST_CACHE_DIR, when set
CACHE_DIR_VAR = "CONCEPTSEG_FOREST_CACHE_DIR"
NODE_BYTES = 80  # a fitted tree node's arrays (children, feature, threshold, impurity, counts, value)

_lock = threading.Lock()
_features: OrderedDict[str, np.ndarray] = OrderedDict()
_forests: OrderedDict[str, object] = OrderedDict()
logger = logging.getLogger(__name__)


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
    """The fitted forest under ``key``, fitted (and kept, within ``FOREST_BYTES``) when missing.

    Between memory and fitting: the forest cache directory, when ``CONCEPTSEG_FOREST_CACHE_DIR`` names one.
    """
    with _lock:
        if key in _forests:
            _forests.move_to_end(key)
            return _forests[key]
    value = _load(key)
    if value is None:
        value = fit()
        _store(key, value)
    if forest_bytes(value) <= FOREST_BYTES:
        with _lock:
            _forests[key] = value
            while sum(forest_bytes(v) for v in _forests.values()) > FOREST_BYTES:
                _forests.popitem(last=False)
    return value


def forest_cache_dir() -> str | None:
    """Where forests are kept between processes: ``$CONCEPTSEG_FOREST_CACHE_DIR/sklearn-<version>``, or None."""
    root = os.environ.get(CACHE_DIR_VAR)
    if not root:
        return None
    import sklearn

    return os.path.join(root, f"sklearn-{sklearn.__version__}")  # another version's pickles may not load right


def _load(key: str):
    folder = forest_cache_dir()
    if folder is None:
        return None
    path = os.path.join(folder, key + ".pkl")
    try:
        with open(path, "rb") as f:
            value = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # torn or foreign: fit again, and _store replaces it
        logger.warning("Ignoring unreadable cached forest %s (%s); fitting it again.", path, e)
        return None
    with contextlib.suppress(OSError):  # recently used: the budget removes the others first (best effort)
        os.utime(path)
    return value


def _store(key: str, value) -> None:
    """Writes the forest whole or not at all (a temporary file renamed), then keeps the folder within budget."""
    folder = forest_cache_dir()
    if folder is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, os.path.join(folder, key + ".pkl"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        _prune(folder)
    except OSError as e:
        logger.warning("Could not cache the fitted forest in %s (%s); the run goes on without.", folder, e)


def _prune(folder: str) -> None:
    """Removes the least recently used forests until the folder holds at most ``FOREST_DISK_BYTES``."""
    files = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".pkl"):
            with contextlib.suppress(FileNotFoundError):  # another process pruned it meanwhile
                st = entry.stat()
                files.append((st.st_mtime, st.st_size, entry.path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= FOREST_DISK_BYTES:
            break
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        total -= size


def forest_bytes(forest) -> int:
    """Memory a fitted scikit-learn forest's trees take, from their node counts."""
    return sum(tree.tree_.node_count for tree in getattr(forest, "estimators_", ())) * NODE_BYTES


def clear() -> None:
    """Forgets everything kept in this process (for measuring the cost of a first run; not the cache directory)."""
    with _lock:
        _features.clear()
        _forests.clear()


def kept() -> tuple[int, int]:
    """How many feature arrays and forests are kept now."""
    with _lock:
        return len(_features), len(_forests)
