"""What both segmenters share: the per-image feature cache, the input check and the
check that weights and outputs are finite."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from conceptseg.errors import ConceptSegError


class NonFiniteError(ConceptSegError):
    """A segmenter's weights or output hold NaN or infinite values."""


class FiniteWeights:
    """Checks that a frozen model's floating-point weights are all finite.

    Checking the output alone is not enough: PyTorch's fused CPU attention kernel can drop
    a NaN (a query row of NaN gives finite output for some sequence lengths: SAM 2's decoder
    with 14 prompt and output tokens does, with 17 it does not), so a model with NaN weights
    can return finite logits, and whether it does depends on the prompt and the CPU. The
    weights are read again only after one of them changed (an in-place write bumps a
    tensor's version counter), so the check costs one pass per load, not per image.
    """

    def __init__(self, model):
        self.model = model
        self._checked_stamp = None

    def _stamp(self):
        try:
            return tuple((id(t), t._version) for t in self._tensors())
        except RuntimeError:  # inference-mode tensors keep no version: check every time
            return None

    def _tensors(self):
        return [t for t in list(self.model.parameters()) + list(self.model.buffers()) if t.is_floating_point()]

    def check(self, what: str = "segmenter") -> None:
        """Raises NonFiniteError naming the first broken tensors, unless all are finite."""
        import torch

        stamp = self._stamp()
        if stamp is not None and stamp == self._checked_stamp:
            return
        tensors = self._tensors()
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            named = list(self.model.named_parameters()) + list(self.model.named_buffers())
            bad = [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]
            raise NonFiniteError(
                f"The {what}'s weights hold NaN or infinite values ({', '.join(bad[:3])}"
                f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); reload or re-download the model."
            )
        self._checked_stamp = stamp


def check_finite_output(values, what: str) -> None:
    """Raises NonFiniteError when a tensor or array holds NaN or infinite values."""
    import torch

    finite = bool(torch.isfinite(values).all()) if isinstance(values, torch.Tensor) else bool(np.isfinite(values).all())
    if not finite:
        raise NonFiniteError(f"The {what} returned NaN or infinite values for this image; check the model weights.")


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
