"""Records → FiftyOne samples, added in batches so that imports of any size stay flat in memory.

The only module of ``conceptseg.datasets`` that imports FiftyOne.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from typing import Iterable

import fiftyone as fo

from conceptseg.datasets.base import (
    GT_FIELD, IGNORE_FIELD, DatasetExistsError, DatasetFormatError, ImportReport, Record,
)

BATCH_SIZE = 500


def default_media_dir(name: str) -> str:
    """Where an import writes its 0/1 mask PNGs unless told otherwise."""
    return os.path.join(fo.config.default_dataset_dir, "conceptseg", name)


def prepare(name: str, overwrite: bool) -> bool:
    """Refuses an existing dataset unless ``overwrite``; returns whether one will be replaced."""
    if not fo.dataset_exists(name):
        return False
    if not overwrite:
        raise DatasetExistsError(
            f"Dataset {name!r} exists; pass overwrite=True (--overwrite) to replace it, or choose another name."
        )
    return True


def temporary_name(name: str) -> str:
    """The name a replacing import builds under until it swaps."""
    return f"{name}.importing-{uuid.uuid4().hex[:8]}"


def import_dir_name(build_name: str) -> str:
    """The mask sub-directory of a replacing import (the old dataset's masks stay untouched)."""
    return "import-" + build_name.rsplit("-", 1)[-1]


def swap(build_name: str, name: str) -> None:
    """Deletes the old dataset ``name`` and gives the freshly built one its name."""
    fo.delete_dataset(name)
    fo.load_dataset(build_name).name = name


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


def write_records(name: str, records: Iterable[Record], report: ImportReport, mask_dir: str | None = None,
                  source: str | None = None) -> fo.Dataset:
    """Creates the persistent dataset ``name`` from ``records``; deleted again if reading fails.

    A failed or empty import also removes ``mask_dir`` when it created it. ``source``
    names the folder in the error an empty import raises.
    """
    made_mask_dir = mask_dir is not None and not os.path.exists(mask_dir)
    dataset = fo.Dataset(name, persistent=True)
    try:
        iterator = iter(records)
        while batch := list(itertools.islice(iterator, BATCH_SIZE)):
            dataset.add_samples([_sample(r) for r in batch], progress=False)
            report.imported += len(batch)
            for record in batch:
                for tag in record.tags:
                    report.splits[tag] = report.splits.get(tag, 0) + 1
        if report.imported == 0:
            raise DatasetFormatError(
                f"Found no sample to import in {source or 'the source'} (skipped {report.skipped}: missing files "
                f"{len(report.missing)}, unreadable {len(report.unreadable)}, invalid {len(report.invalid)}); check "
                f"the path and that it has the {report.format} layout (docs/your-data.md)."
            )
    except BaseException:
        fo.delete_dataset(name)
        if made_mask_dir:
            shutil.rmtree(mask_dir, ignore_errors=True)
        raise
    targets = {GT_FIELD: {1: "concept"}, IGNORE_FIELD: {1: "ignore"}}
    dataset.mask_targets = {f: t for f, t in targets.items() if dataset.has_field(f)}
    dataset.info = {"conceptseg_import": report.to_dict()}
    dataset.save()
    return dataset
