"""Importers of benchmark layouts into FiftyOne datasets: one module per format.

``import_dataset(format, path, name)`` reads the source (never modifying it), writes
every ground-truth mask as a 0/1 PNG under the dataset's media directory and returns an
`ImportReport`. Formats: ``conceptseg-benchmark`` (all_meta.json), ``reasonseg``
(LISA's image + polygon json), ``folder`` (images/ + masks/ + optional concepts.csv).
"""

from __future__ import annotations

import importlib
import os

from conceptseg.datasets.base import (
    GT_FIELD,
    IGNORE_FIELD,
    DatasetExistsError,
    DatasetFormatError,
    ImportReport,
    MaskSizeError,
    Record,
)

# Format name → module (imported when used, so the CLI starts fast).
FORMATS = {
    "conceptseg-benchmark": "conceptseg.datasets.conceptseg_benchmark",
    "reasonseg": "conceptseg.datasets.reasonseg",
    "folder": "conceptseg.datasets.folder",
}


def import_dataset(
    format: str,
    path: str,
    name: str,
    overwrite: bool = False,
    resize_masks: bool = False,
    media_dir: str | None = None,
    **options,
) -> ImportReport:
    """Imports ``path`` in ``format`` as the persistent FiftyOne dataset ``name``.

    ``resize_masks`` resizes masks of another size than their image (nearest neighbour)
    instead of raising MaskSizeError. ``media_dir`` (default: FiftyOne's dataset dir /
    conceptseg / name) receives the mask PNGs. ``options`` go to the format's reader:
    ``image_root`` (conceptseg-benchmark), ``concepts_csv`` and ``split`` (folder).

    With ``overwrite``, an existing dataset is replaced only after the new one was read
    completely: any error leaves it as it was. An import that finds no sample is an error.
    """
    from conceptseg.datasets import store

    if format not in FORMATS:
        raise DatasetFormatError(f"Unknown format {format!r}; choose one of: {', '.join(FORMATS)}.")
    if not os.path.exists(path):
        raise DatasetFormatError(f"{path} does not exist; pass the dataset's root folder (or manifest).")
    reader = importlib.import_module(FORMATS[format])
    replacing = store.prepare(name, overwrite)
    # Replacing an existing dataset: build under a temporary name, masks in a directory of
    # their own, and swap only once everything was read, so a failed import loses nothing.
    build_name = store.temporary_name(name) if replacing else name
    report = ImportReport(dataset=name, format=format, source=os.path.abspath(path))
    mask_dir = media_dir or store.default_media_dir(name)
    if replacing:
        mask_dir = os.path.join(mask_dir, store.import_dir_name(build_name))
    records = reader.records(path, report, mask_dir, resize_masks=resize_masks, **options)
    store.write_records(build_name, records, report, mask_dir, os.path.abspath(path))
    if replacing:
        store.swap(build_name, name)
    return report


__all__ = [
    "FORMATS", "GT_FIELD", "IGNORE_FIELD", "DatasetExistsError", "DatasetFormatError", "ImportReport",
    "MaskSizeError", "Record", "import_dataset",
]
