"""Concept sets shared by the doubt and review-loop benchmarks: nuclei tiles and procedural concepts.

Each set is a list of (name, HxWx3 float image, bool mask). Nothing here imports FiftyOne.
"""

from __future__ import annotations

import numpy as np

PROCEDURAL = ("circle", "red object", "striped object", "camouflaged blob")


def nuclei_tiles() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The 16 128x128 nuclei tiles of the bundled demo, normalised as the demo does."""
    from conceptseg.datasets import demo_data
    from conceptseg.imaging import to_rgb_float, to_uint8

    files = demo_data.fetch_demo_files()
    image, _ = demo_data.nuclei(files)
    image8 = to_uint8(to_rgb_float(image))
    out = []
    for name, _, labels in demo_data.nuclei_tiles(files):
        r, c = (int(p[1:]) for p in name.split("_")[1:])
        out.append((name, to_rgb_float(image8[r : r + 128, c : c + 128]), labels > 0))
    return out


def procedural(concept: str, count: int, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``count`` 128x128 images of one procedural concept with their exact masks."""
    from conceptseg.imaging import to_rgb_float
    from conceptseg.training.procedural import generate

    items = generate([concept], per_concept=count, size=128, seed=seed)
    return [(f"{concept}-{i}", to_rgb_float(item.image), item.mask) for i, item in enumerate(items)]


def concept_sets(per_concept: int = 16, concepts=PROCEDURAL) -> dict[str, list]:
    """{set name: items}: the nuclei tiles, then each procedural concept."""
    sets = {"nuclei": nuclei_tiles()}
    for concept in concepts:
        sets[concept] = procedural(concept, per_concept)
    return sets


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Foreground IoU; two empty masks agree (1)."""
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)
