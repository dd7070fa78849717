"""A small multi-class dataset, as COCO-style users have: two classes in one label field.

Red discs and blue squares on gray noise, with the same ground truth as a Segmentation
(integer mask targets), an RGB Segmentation (hex mask targets) and Detections with
instance masks. The first three samples are tagged ``demo``; the last shows blue squares
only (a negative for "red"). Tests and the browser test build it on the fly.
"""

from __future__ import annotations

import os

import cv2
import fiftyone as fo
import numpy as np

RED, BLUE = (220, 40, 40), (40, 60, 220)


def scene(rng: np.random.Generator, size: int = 128, red: int = 2, blue: int = 2):
    """A noisy gray RGB image with red discs and blue squares, and their bool masks by class."""
    image = np.clip(rng.normal(128, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    masks = {"red": np.zeros((size, size), np.uint8), "blue": np.zeros((size, size), np.uint8)}
    for kind, count in (("red", red), ("blue", blue)):
        for _ in range(count):
            x, y, r = (int(v) for v in rng.integers([14, 14, 7], [size - 14, size - 14, 13]))
            shape = np.zeros((size, size), np.uint8)
            if kind == "red":
                cv2.circle(shape, (x, y), r, 1, -1)
            else:
                cv2.rectangle(shape, (x - r, y - r), (x + r, y + r), 1, -1)
            shape &= (masks["red"] | masks["blue"]) == 0
            image[shape > 0] = RED if kind == "red" else BLUE
            masks[kind] |= shape
    return image, {k: v > 0 for k, v in masks.items()}


def detections(masks: dict[str, np.ndarray]) -> fo.Detections:
    """One Detection with an instance mask per connected component of each class."""
    dets = []
    for kind, mask in masks.items():
        count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
        h, w = mask.shape
        for i in range(1, count):
            x, y, bw, bh, _ = (int(v) for v in stats[i])
            dets.append(fo.Detection(label=kind, bounding_box=[x / w, y / h, bw / w, bh / h],
                                     mask=components[y:y + bh, x:x + bw] == i))
    return fo.Detections(detections=dets)


def build(name: str, media_dir: str, count: int = 12, seed: int = 0) -> tuple[fo.Dataset, dict]:
    """The dataset (fields gt, gt_rgb, dets) and each sample's true masks by class."""
    rng = np.random.default_rng(seed)
    os.makedirs(media_dir, exist_ok=True)
    dataset = fo.Dataset(name)
    truth = {}
    for i in range(count):
        image, masks = scene(rng, red=0 if i == count - 1 else 2)
        path = os.path.join(media_dir, f"scene{i}.png")
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        seg = np.zeros(image.shape[:2], np.uint8)
        seg[masks["red"]], seg[masks["blue"]] = 1, 2
        rgb = np.zeros(image.shape, np.uint8)
        rgb[masks["red"]], rgb[masks["blue"]] = (255, 0, 0), (0, 0, 255)
        sample = fo.Sample(filepath=path, tags=["demo"] if i < 3 else [],
                           gt=fo.Segmentation(mask=seg), gt_rgb=fo.Segmentation(mask=rgb),
                           dets=detections(masks))
        dataset.add_sample(sample)
        truth[sample.id] = masks
    dataset.mask_targets = {"gt": {1: "red", 2: "blue"}, "gt_rgb": {"#ff0000": "red", "#0000ff": "blue"}}
    dataset.save()
    return dataset, truth
