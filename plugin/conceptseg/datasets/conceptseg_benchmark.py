"""The ConceptSeg-Benchmark layout: ``all_meta.json`` with train/test splits of items per class.

Schema (shared/reference/method.md §4.3)::

    {"train": {"<cls_name>": [item, ...], ...}, "test": {...}}
    item = {"img_path": ["rel/target.jpg"] or ["rel/ref1.jpg", ..., "rel/target.jpg"],
            "mask_path": "rel/target_mask.png", "cls_name": str, "dataset_name": str,
            "task_name": str, "problem": str (optional), "ref_box": [...] (optional)}

Paths are relative to the image root (the manifest's directory unless given). Each item
becomes one sample whose image is the *last* path (the target). Multi-image (MIG)
items keep the other images, which have no masks, in the ``references`` list field and
their question in ``question``; ``ref_box`` is kept as ``ref_boxes``. The ground truth
always belongs to the target. Sample fields: ``level`` (CI/CD/CR, or "other"),
``category``, ``dataset_key``, ``concept`` (cls_name without its dataset prefix),
``cls_name``, ``task_name``, ``question`` (the paper's task text for the reasoning route);
tags: the split ("train", "test"). An item is a duplicate when its split, image paths
and mask path were seen before.
"""

from __future__ import annotations

import os
from typing import Iterator

from conceptseg.datasets.base import (
    GT_FIELD,
    DatasetFormatError,
    ImportReport,
    Record,
    convert_mask,
    image_size,
    mask_name,
    read_json,
)

MANIFEST_NAMES = ("all_meta.json", "data.json")

# Dataset key → (level, category), method.md §4.1. The Consistency/Difference split of
# the MIG keys is inferred there; keys not listed get level "other".
DATASET_LEVELS: dict[str, tuple[str, str]] = {
    "coco2014_Living": ("CI", "Diverse Classes"),
    "coco2014_Artifact": ("CI", "Diverse Classes"),
    "rare": ("CI", "Diverse Classes"),
    "ultra_rare": ("CI", "Diverse Classes"),
    "DUTS": ("CD", "Saliency"),
    "COD10K1024": ("CD", "Camouflage"),
    "transparent1024": ("CD", "Optical properties"),
    "Shadow_detection": ("CD", "Optical properties"),
    "ESDIDefects": ("CD", "Industrial anomaly"),
    "Polyp": ("CD", "Medical lesion"),
    "isic2018": ("CD", "Medical lesion"),
    "Breast_Tumor": ("CD", "Medical lesion"),
    **{f"MIG_{k}": ("CR", "Consistency") for k in (
        "correspondence", "object_tracking", "refer_grounding", "reasoning", "common_object", "multi_view")},
    "MIG_diff": ("CR", "Difference"),
    "MIG_view_diff": ("CR", "Difference"),
    "cityscape": ("other", "Zero-shot"),
    "MGrounding": ("other", "Training source"),
    "CoSOD3k1024": ("other", "Training source"),
    "fewshot1000": ("other", "Training source"),
}

# gen_problem_by_dataset's task texts (method.md §2.2); class-name datasets use the concept.
QUESTIONS = {
    "COD10K1024": "camouflaged object segmentation",
    "DUTS": "salient object segmentation",
    "CoSOD3k1024": "Common object segmentation",
    "fewshot1000": "Common object segmentation",
    "Shadow_detection": "shadow",
    "transparent1024": "transparent",
    "Breast_Tumor": "breast tumor segmentation",
    "isic2018": "skin melanocytic tumor segmentation",
    "Polyp": "polyp colon segmentation",
    "ESDIDefects": "industrial defect segmentation",
}

_SEPARATORS = "_-/: "


def level_of(dataset_key: str) -> tuple[str, str]:
    """(level, category) of a dataset key; unknown MIG_/coco2014_ keys follow their family."""
    if dataset_key in DATASET_LEVELS:
        return DATASET_LEVELS[dataset_key]
    if dataset_key.startswith("MIG_"):
        return "CR", "Consistency"
    if dataset_key.startswith("coco2014_"):
        return "CI", "Diverse Classes"
    return "other", "Unknown"


def strip_prefix(cls_name: str, dataset_key: str) -> str:
    """cls_name without its dataset prefix (and separator); the key itself if nothing is left."""
    if dataset_key and cls_name.lower().startswith(dataset_key.lower()):
        rest = cls_name[len(dataset_key):].lstrip(_SEPARATORS)
        return rest or dataset_key
    return cls_name


def dataset_key_of(item: dict, cls_name: str) -> str:
    """The item's dataset_name, else the longest known key that prefixes cls_name."""
    if item.get("dataset_name"):
        return str(item["dataset_name"])
    known = [k for k in DATASET_LEVELS if cls_name.lower().startswith(k.lower())]
    return max(known, key=len) if known else "unknown"


def find_manifest(path: str) -> str:
    """The manifest file: ``path`` itself, or all_meta.json / data.json inside it."""
    if os.path.isfile(path):
        return path
    for name in MANIFEST_NAMES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise DatasetFormatError(
        f"No {' or '.join(MANIFEST_NAMES)} in {path}; pass the manifest file or the directory holding it."
    )


def _load(manifest: str) -> dict:
    try:
        data = read_json(manifest)
    except ValueError as e:
        raise DatasetFormatError(f"{manifest} is not valid JSON ({e}); check the file.") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DatasetFormatError(
            f"{manifest} must map splits (\"train\", \"test\") to {{cls_name: [items]}}; "
            "see the ConceptSeg-Benchmark all_meta.json layout."
        )
    return data


def records(
    path: str, report: ImportReport, mask_dir: str, resize_masks: bool = False, image_root: str | None = None
) -> Iterator[Record]:
    """Yields one Record per readable, unique item of the manifest at ``path``."""
    manifest = find_manifest(path)
    reader = _Reader(image_root or os.path.dirname(os.path.abspath(manifest)), report, mask_dir, resize_masks)
    for split, classes in _load(manifest).items():
        for cls_name, items in classes.items():
            for position, item in enumerate(items if isinstance(items, list) else []):
                record = reader.record(item, split, cls_name, f"{split}/{cls_name}[{position}]")
                if record is None:
                    report.skipped += 1
                else:
                    yield record


class _Reader:
    """Turns manifest items into Records, remembering the ids it has seen."""

    def __init__(self, root: str, report: ImportReport, mask_dir: str, resize_masks: bool):
        self.root, self.report, self.mask_dir, self.resize_masks = root, report, mask_dir, resize_masks
        self.seen: set[tuple] = set()
        self.count = 0

    def _paths(self, item, split: str, where: str) -> tuple[list[str], str] | None:
        images = item.get("img_path") if isinstance(item, dict) else None
        images = [images] if isinstance(images, str) else images
        mask = item.get("mask_path") if isinstance(item, dict) else None
        if not images or not all(isinstance(p, str) for p in images) or not isinstance(mask, str):
            self.report.invalid.append(f"{where}: needs img_path (a path or list of paths) and mask_path")
            return None
        key = (split, tuple(images), mask)  # an item's id
        if key in self.seen:
            self.report.duplicates.append(f"{where}: {images[-1]}")
            return None
        self.seen.add(key)
        return [os.path.join(self.root, p) for p in images], os.path.join(self.root, mask)

    def record(self, item, split: str, cls_name: str, where: str) -> Record | None:
        """The item's Record, or None (reported) when it is invalid, a duplicate or unreadable."""
        paths = self._paths(item, split, where)
        if paths is None:
            return None
        images, mask = paths
        absent = [p for p in [*images, mask] if not os.path.isfile(p)]
        if absent:
            self.report.missing.extend(absent)
            return None
        size = image_size(images[-1])
        if size is None:
            self.report.unreadable.append(images[-1])
            return None
        out_path = os.path.join(self.mask_dir, GT_FIELD, mask_name(self.count, mask))
        written = convert_mask(mask, size, out_path, self.resize_masks, self.report)
        if written is None:
            return None
        self.count += 1
        cls_name = str(item.get("cls_name") or cls_name)
        dataset_key = dataset_key_of(item, cls_name)
        level, category = level_of(dataset_key)
        concept = strip_prefix(cls_name, dataset_key)
        fields = dict(
            level=level, category=category, dataset_key=dataset_key, concept=concept, cls_name=cls_name,
            task_name=item.get("task_name"),
            question=item.get("problem") or QUESTIONS.get(dataset_key) or concept.replace("_", " "),
            references=[os.path.abspath(p) for p in images[:-1]] or None, ref_boxes=item.get("ref_box"),
        )
        return Record(os.path.abspath(images[-1]), size[0], size[1], [split], fields, {GT_FIELD: written})
