"""What both segmenters share: the per-image feature cache and the input check."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


def check_rgb_uint8(image) -> None:
    """Raises ValueError unless ``image`` is an HxWx3 uint8 RGB array."""
    ok = isinstance(image, np.ndarray) and image.dtype == np.uint8
    if not ok or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"embed expects an HxWx3 uint8 RGB array; got {got}.")


class EmbeddingCache:
    """Image features by key, least recently used dropped first; counts hits and misses.

    Each entry is a dict with at least ``orig_hw``: a key cached for an image of another
    size is a miss, so keys must name the image content (a sample id, a content hash).
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: OrderedDict[str, dict] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def lookup(self, key: str, hw: tuple[int, int]) -> dict | None:
        """The entry for ``key`` if it was computed for an image of size ``hw`` (counted)."""
        entry = self._items.get(key)
        if entry is not None and tuple(entry["orig_hw"]) == tuple(hw):
            self.hits += 1
            self._items.move_to_end(key)
            return entry
        self.misses += 1
        return None

    def store(self, key: str, entry: dict) -> None:
        """Keeps ``entry`` under ``key``, dropping the least recently used beyond maxsize."""
        self._items[key] = entry
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def require(self, key: str) -> dict:
        """The entry for ``key``; RuntimeError naming the fix when it was never embedded."""
        if key not in self._items:
            raise RuntimeError(
                f"No embedding for image key {key!r}: call embed(image, {key!r}) first "
                f"(the cache keeps the {self.maxsize} most recently used images)."
            )
        self._items.move_to_end(key)
        return self._items[key]

    def __getitem__(self, key: str) -> dict:
        return self._items[key]

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def info(self) -> dict[str, int]:
        """Embed calls served from the cache (hits), computed (misses), and images kept."""
        return {"hits": self.hits, "misses": self.misses, "size": len(self._items), "maxsize": self.maxsize}

    def clear(self) -> None:
        self._items.clear()
