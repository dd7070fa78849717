"""A folder of ``images/`` and ``masks/`` matched by file stem, with an optional concepts CSV.

Layout::

    PATH/images/a.jpg   PATH/masks/a.png   PATH/concepts.csv (optional)

The CSV has a header with ``name`` (an image stem or file name) and ``concept``, and
optionally ``split`` (train/val/test: the tag the benchmark reads) and ``level``. Rows
override the defaults: concept = the folder's name, level "custom", no split tag (the
``split`` option gives one to every sample). ``dataset_key`` is the folder's name.
Images without a mask are imported without ground truth and listed; masks without an
image and CSV rows naming no image are listed as missing; a second file with the same
stem (another extension) or a repeated CSV name is a duplicate (the first is kept).
"""

from __future__ import annotations

import csv
import os
from typing import Iterator

from conceptseg.datasets.base import (
    GT_FIELD,
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    ImportReport,
    Record,
    convert_mask,
    image_size,
    mask_name,
    utf8_name,
)

CSV_NAME = "concepts.csv"
DEFAULT_LEVEL = "custom"


def _by_stem(folder: str, report: ImportReport) -> dict[str, str]:
    """stem → file for the images in ``folder`` (sorted, so the kept duplicate is stable)."""
    out: dict[str, str] = {}
    if not os.path.isdir(folder):
        return out
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS or not utf8_name(os.path.join(folder, name), report):
            continue
        if stem in out:
            report.duplicates.append(os.path.join(folder, name))
            report.skipped += 1
        else:
            out[stem] = os.path.join(folder, name)
    return out


def read_concepts(path: str, report: ImportReport) -> dict[str, dict[str, str]]:
    """stem → {concept, split, level} from the CSV; repeated names are duplicates."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "name" not in columns or "concept" not in columns:
            raise DatasetFormatError(
                f"{path} needs a header with the columns name,concept (and optionally split, level); "
                f"it has {', '.join(columns) or 'none'}."
            )
        rows: dict[str, dict[str, str]] = {}
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            stem, ext = os.path.splitext(row["name"])
            stem = stem if ext.lower() in IMAGE_EXTENSIONS else row["name"]
            if stem in rows:
                report.duplicates.append(f"{path}: {row['name']}")
            else:
                rows[stem] = row
    return rows


def records(
    path: str,
    report: ImportReport,
    mask_dir: str,
    resize_masks: bool = False,
    concepts_csv: str | None = None,
    split: str | None = None,
) -> Iterator[Record]:
    """Yields one Record per image in ``PATH/images``, with its mask when ``PATH/masks`` has one."""
    images_dir = os.path.join(path, "images")
    if not os.path.isdir(images_dir):
        raise DatasetFormatError(f"No images/ folder in {path}; the folder format needs images/ and masks/.")
    images = _by_stem(images_dir, report)
    masks = _by_stem(os.path.join(path, "masks"), report)
    csv_path = concepts_csv or os.path.join(path, CSV_NAME)
    rows = read_concepts(csv_path, report) if os.path.isfile(csv_path) else {}
    if concepts_csv and not os.path.isfile(concepts_csv):
        raise DatasetFormatError(f"Concepts CSV {concepts_csv} not found; check the path.")
    for stem in sorted(set(masks) - set(images)):
        report.missing.append(os.path.join(images_dir, stem + ".*"))  # the image that mask needs
        report.skipped += 1
    for stem in sorted(set(rows) - set(images)):
        report.missing.append(os.path.join(images_dir, rows[stem]["name"]))
        report.skipped += 1
    key = os.path.basename(os.path.normpath(path))
    for index, stem in enumerate(sorted(images)):
        image = images[stem]
        size = image_size(image)
        if size is None:
            report.unreadable.append(image)
            report.skipped += 1
            continue
        out = {}
        if stem in masks:
            written = convert_mask(masks[stem], size, os.path.join(mask_dir, GT_FIELD, mask_name(index, image)),
                                   resize_masks, report)
            if written is None:
                report.skipped += 1
                continue
            out[GT_FIELD] = written
        else:
            report.without_mask.append(image)
        row = rows.get(stem, {})
        tag = row.get("split") or split
        fields = dict(concept=row.get("concept") or key, level=row.get("level") or DEFAULT_LEVEL,
                      category=None, dataset_key=key)
        yield Record(os.path.abspath(image), size[0], size[1], [tag] if tag else [], fields, out)
