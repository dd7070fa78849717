"""From SAM 2 features to prompts: prototypes of the demonstrations, the cells they cover, points and boxes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class Pooled:
    """One demonstration's mean feature vectors (C,) under and outside its mask."""

    foreground: torch.Tensor
    background: torch.Tensor | None
    fallback: bool  # the mask covered no cell enough; its centroid cell stood in


def prototypes(pooled: Sequence[Pooled]):
    """Foreground and background prototypes: the means over demonstrations (each counts once)."""
    import torch

    foreground = torch.stack([p.foreground for p in pooled]).mean(0)
    backgrounds = [p.background for p in pooled if p.background is not None]
    background = torch.stack(backgrounds).mean(0) if backgrounds else None
    return foreground, background


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell the mask covers (h x w float32), by area."""
    import cv2

    h, w = grid
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


def central_cell(mask: np.ndarray, grid: tuple[int, int]) -> tuple[int, int]:
    """The grid cell under the mask pixel nearest the mask's centroid (on the mask, even for rings)."""
    ys, xs = np.nonzero(mask)
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    (height, width), (h, w) = mask.shape, grid
    return min(ys[i] * h // height, h - 1), min(xs[i] * w // width, w - 1)


def upsample(score, size: tuple[int, int]) -> np.ndarray:
    """h x w tensor → HxW float32 numpy, bilinear as SAM 2 upsamples its masks."""
    import torch.nn.functional as F

    up = F.interpolate(score[None, None], size, mode="bilinear", align_corners=False)[0, 0]
    return up.cpu().numpy().astype(np.float32)


def extrema(score, k: int, threshold: float | None) -> list[tuple[int, int]]:
    """Up to k local maxima (3x3) of an h x w tensor above threshold, best first, as (row, col)."""
    import torch
    import torch.nn.functional as F

    if k <= 0:
        return []
    peak = score == F.max_pool2d(score[None, None], 3, stride=1, padding=1)[0, 0]
    if threshold is not None:
        peak &= score > threshold
    rows, cols = torch.nonzero(peak, as_tuple=True)
    order = torch.argsort(score[rows, cols], descending=True, stable=True)
    return [(int(rows[i]), int(cols[i])) for i in order[:k]]


def cell_centre(cell: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]) -> list[float]:
    """XY pixel (SAM 2's convention: pixel indices) of a grid cell's centre in the image."""
    (i, j), (h, w), (height, width) = cell, grid, size
    return [(j + 0.5) * width / w - 0.5, (i + 0.5) * height / h - 0.5]


def region_prompts(score, upsampled: np.ndarray, above: np.ndarray, c) -> list[dict]:
    """Per region (connected above-threshold pixels), best first: positive points and a box."""
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(above.astype(np.uint8), connectivity=8)
    size, grid = above.shape, tuple(score.shape)
    regions: dict[int, list[list[float]]] = {}
    for cell in extrema(score, score.numel(), threshold=c.min_similarity):
        x, y = cell_centre(cell, grid, size)
        label = int(labels[min(max(round(y), 0), size[0] - 1), min(max(round(x), 0), size[1] - 1)])
        if label == 0:  # the peak's own pixel fell below the threshold after upsampling
            continue
        if label not in regions and len(regions) == c.max_regions:
            continue
        points = regions.setdefault(label, [])
        if len(points) < c.num_positive_points:
            points.append([x, y])
        if len(regions) == c.max_regions and all(len(p) == c.num_positive_points for p in regions.values()):
            break
    if not regions:  # no grid peak lands in a region: the best pixel speaks for the image
        y, x = np.unravel_index(int(np.argmax(upsampled)), size)
        regions[int(labels[y, x])] = [[float(x), float(y)]]
    prompts = []
    for label, positives in regions.items():
        x0, y0, bw, bh = (int(v) for v in stats[label, :4])
        box = [float(x0), float(y0), float(x0 + bw), float(y0 + bh)] if c.use_box else None
        prompts.append({"positives": positives, "box": box})
    return prompts


def pack(prompts: list[dict], negatives: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """B prompts → BxNx2 float32 points and BxN int32 labels (box corners first, then -1 pads)."""
    rows = []
    for p in prompts:
        pts = [(xy, 1) for xy in p["positives"]] + [(xy, 0) for xy in negatives]
        if p["box"] is not None:
            x0, y0, x1, y1 = p["box"]
            pts = [([x0, y0], 2), ([x1, y1], 3)] + pts
        rows.append(pts)
    n = max(len(r) for r in rows)
    points = np.zeros((len(rows), n, 2), np.float32)
    labels = np.full((len(rows), n), -1, np.int32)
    for b, row in enumerate(rows):
        for k, (xy, label) in enumerate(row):
            points[b, k], labels[b, k] = xy, label
    return points, labels
