"""What SAM 3 answers: a semantic mask with its presence (the reasoning route), or instances (the exemplar route)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Sam3Prediction:
    """One SAM 3 answer: HxW float32 logits at the original image size, presence in [0, 1], and
    ``score``: the best instance's sigmoid(pred_logits) x presence (None where none was made)."""

    logits: np.ndarray
    presence: float
    score: float | None = None

    def mask(self, threshold: float = 0.0) -> np.ndarray:
        """HxW bool mask: logits above ``threshold`` (method.md §1.3 uses 0)."""
        return self.logits > threshold

    def __repr__(self) -> str:
        h, w = self.logits.shape[:2]
        return f"Sam3Prediction(logits={self.logits.dtype}[{h}x{w}], presence={self.presence:.4f})"


@dataclasses.dataclass(frozen=True)
class Sam3TensorPrediction:
    """As ``Sam3Prediction`` but torch tensors that backpropagate into the concept tokens:
    ``logits`` HxW float32, ``presence`` a 0-d float32 tensor (sigmoid of the presence logit)."""

    logits: torch.Tensor
    presence: torch.Tensor
    score: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class Detections:
    """SAM 3's instances on one image, at the image's own size.

    probability: HxW float32, per pixel the highest sigmoid(mask logit) of the kept instances
        (0 where none was kept); above 0.5 is SAM 3's own mask threshold
    scores: (Q,) every query's instance score, sigmoid(logit) x presence
    kept: (Q,) bool, scores above ``min_score``
    boxes: (Q, 4) every query's box, x0 y0 x1 y1 in pixels
    masks: (K, H, W) bool, the kept instances' masks (sigmoid above 0.5), best first
    presence: sigmoid of the presence logit: is the concept in the image at all
    """

    probability: np.ndarray
    scores: np.ndarray
    kept: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    presence: float
