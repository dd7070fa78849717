"""Runs users can manage: list the segmentation runs of a dataset, delete one with what it wrote.

A run is found by its prediction field, not by its key, so a run renamed with
``dataset.rename_run`` is still found (and resumed: every run carries a ``run_id`` in its
record and on its labels). Deleting a run removes its record, the labels it wrote (on
samples and video frames; a field goes only when nothing else is left in it), the conceptseg
evaluations of its fields, and the mask files its labels point to under its output
directory; nothing else, never a file a label of any dataset still uses, and never while a
live process writes the field.
"""

from __future__ import annotations

import datetime
import os
import uuid

import fiftyone as fo

from conceptseg.errors import ConceptSegError

SEGMENT_METHODS = ("conceptseg.segment_by_demonstration", "conceptseg.segment_by_query")
EVALUATE_METHOD = "conceptseg.evaluate"
# What the App's sidebar filters on: declared on the dataset so they show without a schema scan.
LABEL_ATTRIBUTES = {
    "route": fo.StringField,
    "verified": fo.BooleanField,
    "verification": fo.FloatField,
    "cost": fo.FloatField,
}


class RunNotFoundError(ConceptSegError):
    """No conceptseg segmentation run writes the given field."""


def fresh(dataset: fo.Dataset) -> None:
    """Reloads ``dataset`` when another process changed its fields, runs or saved views since it was loaded.

    FiftyOne keeps one object per dataset in a process and does not notice what a terminal, a
    delegated worker or a killed run wrote meanwhile: a run or a review from that stale object
    would miss those labels and records, and loading the samples that hold them fails. The check
    is one small query; only a changed dataset is reloaded, as ``dataset.reload()`` does (and
    FiftyOne's operators before each execution).
    """
    from fiftyone.core.odm import get_db_conn

    stored = get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"last_modified_at": 1}) or {}
    if _to_ms(stored.get("last_modified_at")) != _to_ms(dataset._doc.last_modified_at):
        dataset.reload()


def _to_ms(when: datetime.datetime | None) -> datetime.datetime | None:
    """MongoDB keeps milliseconds; the object in memory may hold microseconds."""
    return when and when.replace(microsecond=when.microsecond // 1000 * 1000, tzinfo=None)


def new_run_id() -> str:
    """A run's stable identity: it survives a renamed run key."""
    return uuid.uuid4().hex


def segment_runs(dataset: fo.Dataset) -> dict[str, object]:
    """{run key: run info} of the dataset's conceptseg segmentation runs."""
    infos = {key: dataset.get_run_info(key) for key in dataset.list_runs()}
    return {k: i for k, i in infos.items() if getattr(i.config, "method", None) in SEGMENT_METHODS}


def keys_for_field(dataset: fo.Dataset, pred_field: str) -> list[str]:
    """Keys of the segmentation runs that wrote ``pred_field``, newest first."""
    found = [(info.timestamp, key) for key, info in segment_runs(dataset).items()
             if info.config.pred_field == pred_field]
    return [key for _, key in sorted(found, reverse=True)]


def run_identity(dataset: fo.Dataset, pred_field: str, resume: bool, default_key: str) -> tuple[str, str]:
    """(run key, run id) of a run writing ``pred_field``.

    A resumed run keeps the key and id on record for the field, whatever the key was renamed
    to; a new run gets ``default_key`` and a fresh id.
    """
    if resume:
        for key in keys_for_field(dataset, pred_field):
            run_id = getattr(dataset.get_run_info(key).config, "run_id", None)
            return key, run_id or new_run_id()
    return default_key, new_run_id()


def declare_label_attributes(dataset: fo.Dataset, fields) -> None:
    """Declares route, verified, verification and cost on the labels of ``fields`` (sidebar filters)."""
    schema = dataset.get_field_schema()
    flat = dataset.get_field_schema(flat=True)
    missing = {}
    for field in fields:
        if not field or field not in schema:
            continue
        doc_type = getattr(schema[field], "document_type", None)
        prefix = f"{field}.detections" if doc_type is fo.Detections else field
        missing.update({f"{prefix}.{name}": kind() for name, kind in LABEL_ATTRIBUTES.items()
                        if f"{prefix}.{name}" not in flat})
    if missing:  # one schema update: a call per attribute reloads the dataset each time
        dataset.add_dynamic_sample_fields(missing)


def _iso(timestamp) -> str | None:
    return timestamp.replace(tzinfo=datetime.timezone.utc).isoformat() if timestamp else None


def describe_run(dataset: fo.Dataset, key: str) -> dict:
    """One run as a JSON-able dict: route, verification, targets, failures and time."""
    info = dataset.get_run_info(key)
    config = info.config
    results = dataset.load_run_results(key, cache=False)
    summary = getattr(results, "summary", None) or {}
    finished_at = getattr(results, "finished_at", None)
    started = info.timestamp.replace(tzinfo=datetime.timezone.utc).timestamp() if info.timestamp else None
    targets = summary.get("targets")
    if targets is None:  # still running, or interrupted: count the recorded target view
        targets = dataset.load_run_view(key).count()
    shards = None
    if getattr(config, "shards", None) is not None:  # a run spread over workers: how far its shards are
        from conceptseg.runs.shards.store import progress_of

        shards = progress_of(dataset, config.run_id)
    return {
        "run_key": key,
        "pred_field": config.pred_field,
        "instances_field": getattr(config, "instances_field", None),
        "method": config.method,
        "route": getattr(config, "route", None),
        "verification": getattr(config, "verification", None),
        "verified": getattr(config, "verified", None),
        "targets": targets,
        "segmented": summary.get("segmented"),
        "skipped": summary.get("skipped"),
        "failures": len(summary.get("failures") or []),
        "started": _iso(info.timestamp),
        "seconds": (finished_at - started) if finished_at and started else None,
        "finished": bool(summary),
        "shards": shards,
    }


def list_runs(dataset: fo.Dataset) -> list[dict]:
    """Every conceptseg segmentation run of the dataset, newest first."""
    fresh(dataset)
    runs = sorted(segment_runs(dataset).items(), key=lambda kv: kv[1].timestamp, reverse=True)
    return [describe_run(dataset, key) for key, _ in runs]


def is_under(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def evaluations_of(dataset: fo.Dataset, fields: list[str]) -> list[str]:
    return [key for key in dataset.list_runs()
            if getattr(dataset.get_run_info(key).config, "method", None) == EVALUATE_METHOD
            and dataset.get_run_info(key).config.pred_field in fields]


# --- which files labels point at, in every dataset of the database -------------------------

FILE_LEAVES = ("mask_path", "map_path")  # Segmentation, Detection: mask_path; Heatmap: map_path
_BY_TYPE = {"Segmentation": "mask_path", "Detection": "mask_path", "Heatmap": "map_path",
            "Detections": "detections.mask_path"}
_CHUNK = 5000  # file paths per query


def _file_paths_in_schema(fields, prefix: str = ""):
    """Document paths of the file references (mask_path, map_path) a stored schema declares, at any depth."""
    for field in fields or []:
        name = field.get("db_field") or field.get("name")
        if not name:
            continue
        path = prefix + name
        leaf = _BY_TYPE.get((field.get("embedded_doc_type") or "").rsplit(".", 1)[-1])
        if leaf:
            yield f"{path}.{leaf}"
        for sub in field.get("fields") or []:
            if (sub.get("db_field") or sub.get("name")) in FILE_LEAVES:
                yield f"{path}.{sub.get('db_field') or sub.get('name')}"
        yield from _file_paths_in_schema(field.get("fields"), path + ".")


def label_file_paths(field: str) -> list[str]:
    """Where a label in ``field`` keeps its file, whatever its type (Segmentation, Detection(s))."""
    return [f"{field}.mask_path", f"{field}.detections.mask_path"]


def referenced_files(paths, extra: dict[str, list[str]] | None = None) -> set[str]:
    """Those of ``paths`` that a label of any dataset of the database points at (clones share files).

    One ``distinct`` per file-reference path of each dataset's samples and frames, asked only
    about ``paths``. ``extra`` adds paths to look at in named collections (labels a schema
    lost). Views' own collections (patches, frames, clips) are copies and do not count.
    """
    from fiftyone.core.odm import get_db_conn

    conn, extra = get_db_conn(), extra or {}
    wanted, found = set(paths), set()
    datasets = conn.datasets.find({"sample_collection_name": {"$regex": "^samples\\."}},
                                  {"sample_collection_name": 1, "frame_collection_name": 1,
                                   "sample_fields": 1, "frame_fields": 1})
    for doc in datasets:
        for name, fields in ((doc.get("sample_collection_name"), doc.get("sample_fields")),
                             (doc.get("frame_collection_name"), doc.get("frame_fields"))):
            if not name:
                continue
            for path in sorted(set(_file_paths_in_schema(fields)) | set(extra.get(name, ()))):
                remaining = sorted(wanted - found)
                for i in range(0, len(remaining), _CHUNK):
                    chunk = remaining[i : i + _CHUNK]
                    found.update(p for p in conn[name].distinct(path, {path: {"$in": chunk}}) if p in wanted)
            if found == wanted:
                return found
    return found


# --- deleting a run -------------------------------------------------------------------------






























