"""Doubt per target: how likely a predicted mask is wrong, in [0, 1] (higher = look first).

Each route defines it from what it knows about its own prediction:

- appearance: the forest's uncertainty over the predicted region and its border. The
  forest's probability is the fraction of trees voting "concept"; a pixel's uncertainty is
  1 at the threshold and 0 where every tree agrees. Doubt is the mean uncertainty over the
  predicted mask dilated by a few pixels (its border is where forests hesitate). With an
  empty prediction, the near misses (probability above half the threshold) stand in; none
  at all is a confident "absent" (0).
- object: no definition of its own; the router gives it the appearance route's formula on
  its probability (as for any route without one).
- prototype: the score-map margin: how far the cosine score inside the predicted mask
  stands above the best-scoring pixels outside it (an empty prediction: how far the best
  pixel stayed below the similarity cut). A small or negative margin is high doubt.
- exemplar: SAM 3's own scores (:func:`exemplar_doubt`): how far the presence score is from
  undecided, times how far the kept instances score above the keep threshold.
- reasoning: a weighted mean of per-term doubts, each in [0, 1], over the terms the target has
  (a missing term is left out and the weights renormalised; :data:`WEIGHTS`):

  * check (1.0): 1 - IoU of the policy's ``<check>`` with the demonstration box every episode
    withholds (the paper's proxy; no parseable check is 1). It grades the policy on the
    demonstrations, the same canvas for every target, so it alone cannot rank targets.
  * segmenter (1.0): 1 - the segmenter's own score for the mask it returned: SAM 2's
    predicted IoU x object presence, SAM 3's best instance score sigmoid(class logit) x presence.
  * box (1.0): 1 - IoU of the policy's ``<bbox>`` with the bounding box of the mask (the box the
    policy was trained to write, method.md §2.2). Asked for but not parseable, or a box with
    an empty mask: 1.
  * boundary (0.5): how soft the mask's border is: the mean uncertainty of the probability in a
    band across it (:func:`boundary_doubt`). Weighted lower: a low-resolution decoder makes
    every upsampled border somewhat soft, right masks included.

  Terms by case: a demonstration episode has all four; a text query or a reference-image episode
  has no check; SAM 3's shortcut (no policy) has only segmenter and boundary. The terms are on
  the label as ``doubt_terms`` ({term: its doubt}), so a user sees why a target is doubted.
- reasoning-fast: the reasoning formula, where the check is the one of the episode that
  induced the rule (the same for every target; none when a run's recorded rule is reused).

Any route without its own definition gets the probability's uncertainty (the router fills it).
The weights are priors, not fitted: ``benchmarks/doubt.py --model DIR`` measures how well
each route's doubt ranks its wrong masks.
"""

from __future__ import annotations

import numpy as np

BORDER = 3  # pixels of band around the predicted region that count as its border
BOUNDARY_FRACTION = 0.01  # boundary_doubt's band: this share of the image's longer side, at least BORDER
WEIGHTS = {"check": 1.0, "segmenter": 1.0, "box": 1.0, "boundary": 0.5}  # the reasoning doubt's terms
MARGIN_SCALE = 0.1  # score-map margin (cosine units) at which prototype doubt is ~0.25


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    import cv2

    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    import cv2

    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    # Outside the image counts as inside the mask: the image's edge is not the mask's border.
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE) > 0


def _uncertainty(probability: np.ndarray, region: np.ndarray, threshold: float) -> float:
    """Mean of 1 - |p - threshold| / spread over ``region``: 1 at the threshold, 0 at 0 or 1."""
    spread = max(threshold, 1.0 - threshold)
    uncertainty = 1.0 - np.abs(probability[region] - threshold) / spread
    return float(np.clip(uncertainty.mean(), 0.0, 1.0))


def probability_doubt(probability: np.ndarray, threshold: float = 0.5, border: int = BORDER) -> float:
    """Mean per-pixel uncertainty of a probability map over its predicted region and border."""
    probability = np.asarray(probability, np.float32)
    mask = probability > threshold
    region = _dilate(mask, border) if mask.any() else probability > threshold / 2
    if not region.any():
        return 0.0
    return _uncertainty(probability, region, threshold)


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


# ---- the reasoning routes' terms ---------------------------------------------------------


def boundary_doubt(probability: np.ndarray, threshold: float = 0.5, width: int | None = None) -> float:
    """How soft the predicted region's border is: the mean uncertainty in a band across it.

    The band is the pixels within ``width`` of the border, inside and out (default: 1% of the
    image's longer side, at least ``BORDER``), so a crisp edge scores near 0 at any size. An
    empty prediction is judged by its near misses as in :func:`probability_doubt`; a
    prediction with no border (the whole image) is judged over all of it.
    """
    probability = np.asarray(probability, np.float32)
    mask = probability > threshold
    if not mask.any():
        return probability_doubt(probability, threshold)
    width = width or max(BORDER, round(BOUNDARY_FRACTION * max(mask.shape)))
    band = _dilate(mask, width) & ~_erode(mask, width)
    return _uncertainty(probability, band if band.any() else mask, threshold)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive XYXY pixel box around every foreground pixel (as the policy's ``<bbox>``); None if empty."""
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def box_doubt(box, mask: np.ndarray) -> float:
    """1 - IoU of the policy's box (inclusive XYXY pixels of the image; None = none parseable)
    with the mask's bounding box. No box, or a box where the mask is empty, is 1."""
    from conceptseg.model.prompts import box_iou

    around = mask_box(mask)
    if box is None or around is None:
        return 1.0
    return float(np.clip(1.0 - box_iou(tuple(box), around), 0.0, 1.0))


def score_doubt(score: float) -> float:
    """1 - a segmenter's score for its mask (in [0, 1]; a non-finite score is full doubt)."""
    score = float(score)
    return 1.0 if not np.isfinite(score) else float(np.clip(1.0 - score, 0.0, 1.0))


def combine(terms: dict[str, float | None], weights: dict[str, float] = WEIGHTS) -> float:
    """Weighted mean of the per-term doubts that are present (None: left out, weights renormalised).

    With no term at all there is nothing to go on: 1.
    """
    present = {name: value for name, value in terms.items() if value is not None}
    total = sum(weights[name] for name in present)
    if total <= 0:
        return 1.0
    return float(np.clip(sum(weights[name] * value for name, value in present.items()) / total, 0.0, 1.0))


def reasoning_doubt(probability: np.ndarray, threshold: float = 0.5, *, checked: bool = False,
                    check_iou: float | None = None, score: float | None = None, box_asked: bool = False,
                    box=None) -> tuple[float, dict[str, float]]:
    """The reasoning routes' doubt and its terms ({term: doubt}, only those present).

    checked: the episode asked for a ``<check>`` (``check_iou`` None then means none parseable).
    score: the segmenter's score for the mask, None when it gives none.
    box_asked: the policy was asked for a ``<bbox>`` (``box`` None then means none parseable);
    ``box`` is in pixels of the image the probability covers.
    """
    mask = np.asarray(probability) > threshold
    terms = {
        "check": check_doubt(check_iou) if checked else None,
        "segmenter": None if score is None else score_doubt(score),
        "box": box_doubt(box, mask) if box_asked else None,
        "boundary": boundary_doubt(probability, threshold),
    }
    terms = {name: value for name, value in terms.items() if value is not None}
    return combine(terms), terms


def exemplar_doubt(scores: np.ndarray, presence: float, min_score: float) -> float:
    """1 - (presence certainty x instance certainty), in [0, 1].

    presence certainty = |2 p - 1|: 0 when SAM 3 cannot tell whether the concept is there.
    instance certainty = mean over kept instances of (s - t) / (1 - t), their margin above the
    keep threshold t; with none kept, (t - max s) / t, the best instance's margin below it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    kept = scores[scores > min_score]
    if kept.size:
        instances = float(np.mean((kept - min_score) / (1.0 - min_score)))
    else:
        best = float(scores.max()) if scores.size else 0.0
        instances = (min_score - best) / min_score
    certainty = abs(2.0 * presence - 1.0) * min(max(instances, 0.0), 1.0)
    return float(min(max(1.0 - certainty, 0.0), 1.0))
