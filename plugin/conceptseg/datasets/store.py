"""Records → FiftyOne samples, added in batches so that imports of any size stay flat in memory.

The only module of ``conceptseg.datasets`` that imports FiftyOne.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterable

import fiftyone as fo

from conceptseg.datasets.base import GT_FIELD, IGNORE_FIELD, DatasetExistsError, ImportReport, Record

BATCH_SIZE = 500


def default_media_dir(name: str) -> str:
    """Where an import writes its 0/1 mask PNGs unless told otherwise."""
    return os.path.join(fo.config.default_dataset_dir, "conceptseg", name)


def prepare(name: str, overwrite: bool) -> None:
    """Refuses an existing dataset unless ``overwrite``, which deletes it first."""
    if not fo.dataset_exists(name):
        return
    if not overwrite:
        raise DatasetExistsError(
            f"Dataset {name!r} exists; pass overwrite=True (--overwrite) to replace it, or choose another name."
        )
    fo.delete_dataset(name)


def _sample(record: Record) -> fo.Sample:
    fields = {k: v for k, v in record.fields.items() if v is not None}
    masks = {field: fo.Segmentation(mask_path=path) for field, path in record.masks.items()}
    return fo.Sample(
        filepath=record.filepath,
        tags=list(record.tags),
        metadata=fo.ImageMetadata(width=record.width, height=record.height),
        **fields,
        **masks,
    )


def write_records(name: str, records: Iterable[Record], report: ImportReport) -> fo.Dataset:
    """Creates the persistent dataset ``name`` from ``records``; deleted again if reading fails."""
    dataset = fo.Dataset(name, persistent=True)
    try:
        iterator = iter(records)
        while batch := list(itertools.islice(iterator, BATCH_SIZE)):
            dataset.add_samples([_sample(r) for r in batch], progress=False)
            report.imported += len(batch)
            for record in batch:
                for tag in record.tags:
                    report.splits[tag] = report.splits.get(tag, 0) + 1
    except BaseException:
        fo.delete_dataset(name)
        raise
    targets = {GT_FIELD: {1: "concept"}, IGNORE_FIELD: {1: "ignore"}}
    dataset.mask_targets = {f: t for f, t in targets.items() if dataset.has_field(f)}
    dataset.info = {"conceptseg_import": report.to_dict()}
    dataset.save()
    return dataset
