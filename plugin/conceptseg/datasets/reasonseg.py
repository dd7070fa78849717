"""LISA's ReasonSeg layout: ``name.jpg`` + ``name.json`` per sample, in train/ val/ test/ folders.

Each json holds ``text`` (a list of query sentences, or one string), ``is_sentence`` and
``shapes`` (labelme polygons: ``label`` and ``points`` [[x, y], ...] in pixels). The mask
is rasterised as LISA's ``get_mask_from_json`` does: shapes labelled "flag" are dropped
(deprecated annotations); the rest are drawn largest first (outline and fill), so a
smaller shape inside a larger one wins; a label containing "ignore" marks a region to
leave out of scoring, any other label is the target. The target becomes
``ground_truth`` (0/1 PNG at the image's own resolution) and the ignore regions, when
there are any, ``ignore_mask``. ``query`` is the first text (LISA evaluates the first
sentence), ``queries`` all of them. PATH is the ReasonSeg root (with train/, val/,
test/) or one of those folders; its split becomes the tag. An image without a json, or a
json without an image, is listed as missing; a second image of the same name (another
extension) is a duplicate.
"""

from __future__ import annotations

import os
from typing import Iterator

import cv2
import numpy as np

from conceptseg.datasets.base import (
    GT_FIELD,
    IGNORE_FIELD,
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    ImportReport,
    Record,
    image_size,
    mask_name,
    read_json,
    utf8_name,
    write_mask,
)

SPLITS = ("train", "val", "test")
LEVEL = "ReasonSeg"
_IGNORE, _TARGET = 255, 1


def split_dirs(path: str) -> list[tuple[str, str]]:
    """(split, folder) pairs: the split subfolders of ``path``, or ``path`` itself."""
    if not os.path.isdir(path):
        raise DatasetFormatError(f"{path} is not a folder; pass the ReasonSeg root or one of its split folders.")
    found = [(s, os.path.join(path, s)) for s in SPLITS if os.path.isdir(os.path.join(path, s))]
    if found:
        return found
    name = os.path.basename(os.path.normpath(path))
    return [(name if name in SPLITS else "test", path)]


def rasterise(shapes: list[dict], size: tuple[int, int]) -> np.ndarray:
    """LISA's mask: 0 background, 1 target, 255 ignore, at (width, height)."""
    width, height = size
    valid, areas = [], []
    for shape in shapes:
        if str(shape.get("label", "")).lower() == "flag":
            continue
        points = np.array([shape["points"]], dtype=np.int32)
        probe = np.zeros((height, width), np.uint8)
        cv2.polylines(probe, points, True, 1, 1)
        cv2.fillPoly(probe, points, 1)
        valid.append((shape, points))
        areas.append(int(probe.sum()))
    mask = np.zeros((height, width), np.uint8)
    for i in np.argsort(areas)[::-1]:
        shape, points = valid[i]
        value = _IGNORE if "ignore" in str(shape.get("label", "")).lower() else _TARGET
        cv2.polylines(mask, points, True, value, 1)
        cv2.fillPoly(mask, points, value)
    return mask


def _pairs(folder: str, report: ImportReport) -> list[tuple[str, str]]:
    """(image, json) pairs matched by stem; the rest is reported."""
    images: dict[str, str] = {}
    jsons: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        path = os.path.join(folder, name)
        if ext.lower() in IMAGE_EXTENSIONS + (".json",) and not utf8_name(path, report):
            continue
        if ext.lower() == ".json":
            jsons[stem] = path
        elif ext.lower() in IMAGE_EXTENSIONS:
            if stem in images:
                report.duplicates.append(path)
                report.skipped += 1
            else:
                images[stem] = path
    for stem in sorted(set(images) - set(jsons)):
        report.missing.append(os.path.join(folder, stem + ".json"))
        report.skipped += 1
    for stem in sorted(set(jsons) - set(images)):
        report.missing.append(os.path.join(folder, stem + ".jpg"))
        report.skipped += 1
    return [(images[s], jsons[s]) for s in sorted(set(images) & set(jsons))]


def _annotation(path: str, report: ImportReport) -> tuple[list[str], list[dict], bool] | None:
    try:
        anno = read_json(path)
        texts = anno["text"]
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        shapes = [s for s in anno["shapes"] if isinstance(s.get("points"), list) and s["points"]]
        return texts, shapes, bool(anno.get("is_sentence", False))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        report.invalid.append(f"{path}: {type(e).__name__} {e}; needs text and shapes")
        return None


def records(path: str, report: ImportReport, mask_dir: str, resize_masks: bool = False) -> Iterator[Record]:
    """Yields one Record per image + json pair under ``path`` (``resize_masks`` is moot: polygons)."""
    index = 0
    for split, folder in split_dirs(path):
        for image, json_path in _pairs(folder, report):
            size = image_size(image)
            anno = _annotation(json_path, report) if size is not None else None
            if size is None:
                report.unreadable.append(image)
            if anno is None:
                report.skipped += 1
                continue
            texts, shapes, is_sentence = anno
            raster = rasterise(shapes, size)
            masks = {GT_FIELD: write_mask(raster == _TARGET, os.path.join(mask_dir, GT_FIELD, mask_name(index, image)))}
            if (raster == _IGNORE).any():
                masks[IGNORE_FIELD] = write_mask(
                    raster == _IGNORE, os.path.join(mask_dir, IGNORE_FIELD, mask_name(index, image))
                )
            fields = dict(
                level=LEVEL, category="Reasoning segmentation", dataset_key=LEVEL,
                query=texts[0] if texts else None, queries=texts, is_sentence=is_sentence,
            )
            index += 1
            yield Record(os.path.abspath(image), size[0], size[1], [split], fields, masks)
