"""Segmentation metrics for binary masks: per-sample scores and their dataset aggregates.

Fω, Sα, Eφ, MAE, Dice and BER are thin wrappers over pysodmetrics 1.6.2, fed in one
place (`_to_psm`) so that its input conventions cannot leak; IoU, gIoU, cIoU and the
ConceptSeg-R1 fg/bg "mIoU" are plain numpy. Definitions and oracle values:
shared/reference/metrics.md. Every prediction is binarised first: the ConceptSeg-R1
protocol scores hard masks, so soft-map behaviour of the SOD metrics is out of scope.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import py_sod_metrics as psm

# The ConceptSeg-R1 concept benchmark resizes every mask to 600×600 before scoring.
PAPER_SIZE = 600

# ConceptSeg's cal_iou_f / cal_iou_b smoothing; it makes empty-on-empty score 1.
_MIOU_SMOOTH = 1e-5

# Keys of score_sample that are pixel counts for cIoU, not per-sample metrics to average.
_COUNT_KEYS = ("intersection", "union")


def binarize(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Returns a 2-D bool foreground mask from a bool, integer or float mask.

    Rule, by dtype:
    - bool: as is.
    - float (probability maps): value > threshold. For logits pass threshold=0.
    - uint8: value > threshold * maxval, maxval = 1 if the mask's max is <= 1 (0/1
      masks), else 255 (0/255 masks and 8-bit soft maps; 0.5 gives > 127.5, the same
      cut as ConceptSeg's "> 127"). An 8-bit *label* image with small ids (2, 3, ...)
      would lose them: pass `labels > 0` instead.
    - any other integer (uint16/int32 instance or label images): value > 0.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"Masks must be 2-D (HxW); got shape {mask.shape}.")
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating):
        return mask > threshold
    if mask.dtype == np.uint8:
        maxval = 1 if mask.size == 0 or mask.max() <= 1 else 255
        return mask > threshold * maxval
    if np.issubdtype(mask.dtype, np.integer):
        return mask > 0
    raise TypeError(f"Cannot binarise a mask of dtype {mask.dtype}; use bool, int or float.")


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes a mask with nearest neighbour to size×size, or to (height, width); bool out.

    Non-bool masks are binarised first with `binarize`'s default rule. Nearest neighbour
    (cv2.INTER_NEAREST, as FiftyOne's evaluate_segmentations uses) keeps the mask binary.
    """
    mask = binarize(mask)
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if mask.shape == (height, width):
        return mask
    # cv2 has no bool resize; uint8 0/1 round-trips exactly under nearest neighbour.
    out = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


def _to_psm(mask: np.ndarray) -> np.ndarray:
    """Encodes a bool mask as uint8 0/255, the only form pysodmetrics reads safely.

    pysodmetrics binarises gt as `gt > 128` (a 0/1 mask would become all background) and
    min-max stretches pred per image; 0/255 survives both unchanged, and an all-0 or
    all-255 pred is left as is (the stretch is skipped when max == min).
    """
    return mask.astype(np.uint8) * np.uint8(255)


def _psm_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Runs pysodmetrics on one 0/255 pair; values equal a direct pysodmetrics call exactly."""
    # Fresh objects per call: they accumulate across step() calls, and are cheap to build.
    sm, wfm, em, mae = psm.Smeasure(), psm.WeightedFmeasure(), psm.Emeasure(), psm.MAE()
    binary = dict(with_adaptive=False, with_dynamic=False, with_binary=True, sample_based=True)
    counts = psm.FmeasureV2(
        metric_handlers={"dice": psm.DICEHandler(**binary), "ber": psm.BERHandler(**binary)}
    )
    for metric in (sm, wfm, em, mae, counts):
        metric.step(pred=pred, gt=gt)
    fm = counts.get_results()
    return {
        "wfm": float(wfm.get_results()["wfm"]),  # 0 when gt is empty (pysodmetrics' choice)
        "sm": float(sm.get_results()["sm"]),
        "em": float(np.mean(em.get_results()["em"]["curve"])),  # mean-Em over 256 thresholds
        "mae": float(mae.get_results()["mae"]),
        "dice": float(fm["dice"]["binary"]),  # 0 when both masks are empty
        "ber": float(fm["ber"]["binary"]),  # 0.5 for a correct empty prediction
    }


def _iou_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Returns the foreground intersection and union pixel counts of two bool masks."""
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def fg_bg_miou(pred: np.ndarray, gt: np.ndarray) -> float:
    """ConceptSeg-R1's "mIoU" in [0, 1], higher is better: ½(IoU_fg + IoU_bg), smoothed 1e-5.

    Not foreground IoU: the background term inflates it. Kept only to compare with the
    paper's Table 1; report `iou` alongside.
    """
    fg_i, fg_u = _iou_counts(pred, gt)
    bg_i, bg_u = _iou_counts(~pred, ~gt)
    fg = (fg_i + _MIOU_SMOOTH) / (fg_u + _MIOU_SMOOTH)
    bg = (bg_i + _MIOU_SMOOTH) / (bg_u + _MIOU_SMOOTH)
    return 0.5 * (fg + bg)


def score_sample(pred: np.ndarray, gt: np.ndarray, size: int | None = None) -> dict[str, float]:
    """Scores one prediction against its ground truth; returns the metrics listed below.

    Both masks go through `binarize`. With `size`, both are resized (nearest) to
    size×size, the paper's 600² protocol (`PAPER_SIZE`); otherwise a prediction of
    another shape is resized to the gt's shape, as FiftyOne does.

    Keys (range, direction):
    - iou [0, 1] higher: foreground IoU; empty-on-empty is 1.0 (LISA), no smoothing.
    - intersection, union: foreground pixel counts, summed by `aggregate` for cIoU.
    - wfm [0, 1] higher: weighted F-measure Fω (β² = 1); 0 when gt is empty.
    - sm [0, 1] higher: S-measure (α = 0.5).
    - em [0, ~1] higher: mean of the E-measure curve; pysodmetrics divides by N − 1, so
      it can slightly exceed 1 (64/63 for empty-on-empty 8×8).
    - mae [0, 1] lower: mean absolute error, i.e. the misclassified-pixel fraction.
    - dice [0, 1] higher: foreground Dice (F1).
    - ber [0, 1] lower: balanced error rate 1 − ½(TPR + TNR).
    - miou [0, 1] higher: ConceptSeg-R1's fg/bg mean IoU (`fg_bg_miou`).
    """
    pred, gt = binarize(pred), binarize(gt)
    if size is not None:
        pred, gt = resize_mask(pred, size), resize_mask(gt, size)
    elif pred.shape != gt.shape:
        pred = resize_mask(pred, gt.shape)
    intersection, union = _iou_counts(pred, gt)
    scores = {
        "iou": intersection / union if union else 1.0,
        "intersection": float(intersection),
        "union": float(union),
    }
    scores.update(_psm_scores(_to_psm(pred), _to_psm(gt)))
    scores["miou"] = fg_bg_miou(pred, gt)
    return scores


def aggregate(samples: Iterable[dict[str, float]]) -> dict[str, float]:
    """Averages per-sample scores over a set; adds gIoU and cIoU, both in [0, 1], higher is better.

    Every metric of `score_sample` becomes its mean over samples (the paper's and
    pysodmetrics' per-image averaging); `giou` is the mean `iou` and `ciou` is
    Σintersection / Σunion (1.0 when every union is empty). The pixel counts themselves
    are not returned. No samples gives an empty dict, so callers can tell "nothing scored"
    from a score.
    """
    samples = list(samples)
    if not samples:
        return {}
    keys = [k for k in samples[0] if k not in _COUNT_KEYS]
    for i, sample in enumerate(samples):
        missing = set(keys) | set(_COUNT_KEYS)
        missing -= sample.keys()
        if missing:
            raise ValueError(
                f"Sample {i} lacks {sorted(missing)}; pass dicts returned by score_sample."
            )
    # np.mean over float64, as pysodmetrics' get_results does, so means match it exactly.
    out = {k: float(np.mean(np.array([s[k] for s in samples], dtype=np.float64))) for k in keys}
    out["giou"] = out["iou"]
    total_i = sum(s["intersection"] for s in samples)
    total_u = sum(s["union"] for s in samples)
    out["ciou"] = total_i / total_u if total_u else 1.0
    return out
