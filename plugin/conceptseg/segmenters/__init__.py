"""Frozen promptable segmenters that take a box and concept tokens and return mask logits.

Importing this package is cheap: the SAM 2 segmenter (torch, hydra, torchvision) loads
only when one of its names is first used, e.g. ``from conceptseg.segmenters import
Sam2Segmenter`` or ``from conceptseg.segmenters.sam2 import Sam2Segmenter``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Sam2Segmenter": "conceptseg.segmenters.sam2",
    "Sam2SegmenterConfig": "conceptseg.segmenters.sam2",
    "CheckpointError": "conceptseg.segmenters.sam2",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
