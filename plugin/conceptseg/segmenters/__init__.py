"""Frozen promptable segmenters that take concept tokens (plus a box for SAM 2, an answer
phrase for SAM 3) and return mask logits.

Importing this package is cheap: each segmenter (torch, hydra, transformers) loads only
when one of its names is first used, e.g. ``from conceptseg.segmenters import
Sam2Segmenter`` or ``from conceptseg.segmenters.sam3 import Sam3Segmenter``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Sam2Segmenter": "conceptseg.segmenters.sam2",
    "Sam2SegmenterConfig": "conceptseg.segmenters.sam2",
    "CheckpointError": "conceptseg.segmenters.sam2",
    "Sam3Segmenter": "conceptseg.segmenters.sam3",
    "Sam3SegmenterConfig": "conceptseg.segmenters.sam3",
}

__all__ = sorted(_LAZY)


def is_sam3(segmenter) -> bool:
    """SAM 3 reads an answer phrase; SAM 2 a box (both read the concept tokens)."""
    return hasattr(segmenter, "try_shortcut")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
