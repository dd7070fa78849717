"""Rewards of Meta-GRPO, as plain functions: completion text (and masks) in, a float out.

Total reward = format + box + mask IoU, at most 3 (method.md §2.5). Two sets: "official"
(the default, the official code's semantics, at the end of this file) and "strict" (every
reward needs the whole completion to parse, as inference does). In the strict set boxes use the
inclusive-pixel convention of ``conceptseg.model.prompts.box_iou`` (width = x2 − x1 + 1) for
both intersection and union; the official reward uses plain areas for its union, which
differs by a pixel row and column and changes no ranking between rollouts.

An empty ground-truth mask has no box: the box reward is then None ("unscorable"), and
GRPO gives such rollouts zero advantage rather than a fabricated score.
"""

from __future__ import annotations

import re

import numpy as np

from conceptseg.model.prompts import CompletionParseError, box_iou, parse_completion

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


# ---- the official reward functions (method.md §2.5): the default ------------------------
#
# They differ from the strict ones above in what they accept: the format needs the tags in
# order (a <check> of 4 integers when a box is withheld) but not that the whole completion
# parses; the box reward reads the LAST well-formed <bbox>[a, b, c, d]</bbox> (and <check>)
# wherever they are, and their IoU is the official one (see official_box_iou).

_ANY = r".*?"
_FOUR = r"\[\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*\]"
_FORMAT = re.compile(rf"<think>{_ANY}</think>\s*<rule>{_ANY}</rule>\s*<bbox>{_ANY}</bbox>\s*<answer>{_ANY}</answer>", re.S)
_FORMAT_CHECK = re.compile(
    rf"<think>{_ANY}</think>\s*<rule>{_ANY}</rule>\s*<check>\s*{_FOUR}\s*</check>\s*<bbox>{_ANY}</bbox>"
    rf"\s*<answer>{_ANY}</answer>", re.S)
_BOX = {tag: re.compile(rf"<{tag}>\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]\s*</{tag}>")
        for tag in ("bbox", "check")}


def official_format_reward(completion: str, with_check: bool) -> float:
    """1.0 when the tags appear in order, only whitespace between them, anywhere in the text."""
    pattern = _FORMAT_CHECK if with_check else _FORMAT
    return 1.0 if pattern.search(completion) else 0.0


def _last_box(completion: str, tag: str) -> Box | None:
    found = _BOX[tag].findall(completion)
    return tuple(int(v) for v in found[-1]) if found else None


def official_box_iou(a: Box, b: Box) -> float:
    """The official box IoU: areas (x2 − x1)(y2 − y1); the overlap counts only when it is more
    than one pixel wide and high, and is then (min x2 − max x1)(min y2 − max y1)."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]) - 1, min(a[3], b[3]) - 1
    inter = (x2 - x1 + 1) * (y2 - y1 + 1) if x1 < x2 and y1 < y2 else 0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def official_box_reward(completion: str, gt_box: Box | None, proxy_box: Box | None = None) -> float | None:
    """IoU(last bbox, gt)², or IoU(last bbox, gt)·IoU(last check, proxy); 0 when one is missing."""
    if gt_box is None:
        return None
    bbox = _last_box(completion, "bbox")
    if bbox is None:
        return 0.0
    if proxy_box is None:
        return official_box_iou(bbox, gt_box) ** 2
    check = _last_box(completion, "check")
    return 0.0 if check is None else official_box_iou(bbox, gt_box) * official_box_iou(check, proxy_box)


REWARDS = {"official": (official_format_reward, official_box_reward), "strict": (format_reward, box_reward)}
