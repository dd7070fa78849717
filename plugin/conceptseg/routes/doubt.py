"""Doubt per target: how likely a predicted mask is wrong, in [0, 1] (higher = look first).

Each route defines it from what it knows about its own prediction:

- appearance: the forest's uncertainty over the predicted region and its border. The
  forest's probability is the fraction of trees voting "concept"; a pixel's uncertainty is
  1 at the threshold and 0 where every tree agrees. Doubt is the mean uncertainty over the
  predicted mask dilated by a few pixels (its border is where forests hesitate). With an
  empty prediction, the near misses (probability above half the threshold) stand in; none
  at all is a confident "absent" (0).
- prototype: the score-map margin: how far the cosine score inside the predicted mask
  stands above the best-scoring pixels outside it (an empty prediction: how far the best
  pixel stayed below the similarity cut). A small or negative margin is high doubt.
- reasoning: the paper's per-target proxy: 1 - IoU of the policy's ``<check>`` box with the
  withheld demonstration box it must re-find in every episode; no parseable check is 1.
  A text query has no withheld box: the probability's uncertainty stands in.

Any route without its own definition gets the probability's uncertainty (the router fills it).
"""

from __future__ import annotations

import numpy as np

BORDER = 3  # pixels of band around the predicted region that count as its border
MARGIN_SCALE = 0.1  # score-map margin (cosine units) at which prototype doubt is ~0.25


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    import cv2

    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def probability_doubt(probability: np.ndarray, threshold: float = 0.5, border: int = BORDER) -> float:
    """Mean per-pixel uncertainty of a probability map over its predicted region and border."""
    probability = np.asarray(probability, np.float32)
    mask = probability > threshold
    region = _dilate(mask, border) if mask.any() else probability > threshold / 2
    if not region.any():
        return 0.0
    spread = max(threshold, 1.0 - threshold)
    uncertainty = 1.0 - np.abs(probability[region] - threshold) / spread
    return float(np.clip(uncertainty.mean(), 0.0, 1.0))


def margin_doubt(score: np.ndarray, mask: np.ndarray, cut: float, scale: float = MARGIN_SCALE) -> float:
    """Doubt from a similarity map's margin between the predicted mask and the rest.

    ``score`` is HxW (higher = more like the concept), ``mask`` the prediction, ``cut`` the
    score below which nothing is prompted. The margin is the mean score inside the mask
    minus the 95th percentile outside it; with an empty mask it is ``cut`` minus the best
    score (a near miss is doubtful). Doubt = 2 * sigmoid(-margin / scale), clipped to [0, 1].
    """
    score = np.asarray(score, np.float32)
    mask = np.asarray(mask, bool)
    if mask.any() and (~mask).any():
        margin = float(score[mask].mean() - np.percentile(score[~mask], 95))
    elif mask.any():  # the whole image: nothing to compare with
        return 1.0
    else:
        margin = float(cut - score.max())
    return float(np.clip(2.0 / (1.0 + np.exp(margin / scale)), 0.0, 1.0))


def check_doubt(check_iou: float | None) -> float:
    """Reasoning route: 1 - IoU of the re-found withheld box (1 when there is no check)."""
    if check_iou is None:
        return 1.0
    return float(np.clip(1.0 - check_iou, 0.0, 1.0))
