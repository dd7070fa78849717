"""Rewards of Meta-GRPO, as plain functions: completion text (and masks) in, a float out.

Total reward = format + box + mask IoU, at most 3 (method.md §2.5). Boxes use the
inclusive-pixel convention of ``conceptseg.prompts.box_iou`` (width = x2 − x1 + 1) for
both intersection and union; the official reward uses plain areas for its union, which
differs by a pixel row and column and changes no ranking between rollouts.

An empty ground-truth mask has no box: the box reward is then None ("unscorable"), and
GRPO gives such rollouts zero advantage rather than a fabricated score.
"""

from __future__ import annotations

import numpy as np

from conceptseg.prompts import CompletionParseError, box_iou, parse_completion

Box = tuple[int, int, int, int]


def format_reward(completion: str, with_check: bool) -> float:
    """1.0 when the completion has every tag in order (``<check>`` required with a proxy), else 0.0.

    >>> format_reward("<think>a</think><rule>b</rule><bbox>[1, 2, 3, 4]</bbox><answer>c</answer>", False)
    1.0
    """
    try:
        parse_completion(completion, require_check=with_check)
    except CompletionParseError:
        return 0.0
    return 1.0


def box_reward(completion: str, gt_box: Box | None, proxy_box: Box | None = None) -> float | None:
    """Without a proxy IoU(bbox, gt)²; with one IoU(bbox, gt)·IoU(check, proxy); 0 if unparsable.

    The product makes a rollout score only when its rule verifies on the withheld
    demonstration *and* transfers to the target. None when the target has no box.
    """
    if gt_box is None:
        return None
    try:
        parsed = parse_completion(completion, require_check=proxy_box is not None)
    except CompletionParseError:
        return 0.0
    target = box_iou(parsed.bbox, gt_box)
    if proxy_box is None:
        return target**2
    return target * box_iou(parsed.check, proxy_box)


def mask_iou_reward(pred: np.ndarray, gt: np.ndarray) -> float:
    """Hard foreground IoU of the rollout's mask with the ground truth, in [0, 1] (empty-on-empty 1)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0
