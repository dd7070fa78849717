"""Runs users can manage: list the segmentation runs of a dataset, delete one with what it wrote.

A run is found by its prediction field, not by its key, so a run renamed with
``dataset.rename_run`` is still found (and resumed: every run carries a ``run_id`` in its
record and on its labels). Deleting a run removes its record, its prediction fields, the
conceptseg evaluations of those fields, and the mask files its labels point to under its
output directory; nothing else, and never a file another field's labels use.
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
    for field in fields:
        if not field or field not in schema:
            continue
        doc_type = getattr(schema[field], "document_type", None)
        prefix = f"{field}.detections" if doc_type is fo.Detections else field
        for name, kind in LABEL_ATTRIBUTES.items():
            if f"{prefix}.{name}" not in flat:
                dataset.add_sample_field(f"{prefix}.{name}", kind)


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
        from conceptseg.shards import progress_of

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
    runs = sorted(segment_runs(dataset).items(), key=lambda kv: kv[1].timestamp, reverse=True)
    return [describe_run(dataset, key) for key, _ in runs]


def _under(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def _mask_paths(dataset: fo.Dataset, field: str) -> set[str]:
    """Mask files the labels of ``field`` point to (Segmentation, Detection(s))."""
    doc_type = getattr(dataset.get_field_schema().get(field), "document_type", None)
    if doc_type is fo.Segmentation or doc_type is fo.Detection:
        paths = dataset.values(f"{field}.mask_path")
    elif doc_type is fo.Detections:
        paths = dataset.values(f"{field}.detections.mask_path", unwind=True)
    else:
        return set()
    return {p for p in paths if p}


def _evaluations_of(dataset: fo.Dataset, fields: list[str]) -> list[str]:
    return [key for key in dataset.list_runs()
            if getattr(dataset.get_run_info(key).config, "method", None) == EVALUATE_METHOD
            and dataset.get_run_info(key).config.pred_field in fields]


def delete_run(dataset: fo.Dataset, pred_field: str) -> dict:
    """Deletes the run(s) that wrote ``pred_field``: record, fields, its evaluations, its mask files.

    Returns what went: run keys, fields, evaluation keys, and the number of files deleted.
    """
    from conceptseg.jobs import default_output_dir

    keys = keys_for_field(dataset, pred_field)
    if not keys:
        known = sorted({info.config.pred_field for info in segment_runs(dataset).values()})
        raise RunNotFoundError(
            f"No conceptseg run wrote {pred_field!r} on dataset {dataset.name!r}; runs here write: "
            f"{', '.join(known) or 'none'} (see `conceptseg runs --dataset {dataset.name}`)."
        )
    configs = [dataset.get_run_info(k).config for k in keys]
    fields = [pred_field] + [c.instances_field for c in configs if getattr(c, "instances_field", None)]
    fields = [f for f in dict.fromkeys(fields) if dataset.has_field(f)]
    out_dirs = {getattr(c, "output_dir", None) or default_output_dir(dataset, pred_field) for c in configs}

    others = set()  # a file any other field still uses is kept
    for name in dataset.get_field_schema():
        if name not in fields:
            others |= _mask_paths(dataset, name)
    files = {p for f in fields for p in _mask_paths(dataset, f)}
    files = {p for p in files - others if any(_under(p, d) for d in out_dirs)}

    evaluations = _evaluations_of(dataset, fields)
    eval_fields = [f for key in evaluations for f in (dataset.get_run_info(key).config.metric_fields or [])
                   if dataset.has_field(f)]
    dataset.delete_sample_fields(fields + eval_fields)
    for key in keys + evaluations:
        dataset.delete_run(key)
    if any(f in dataset.mask_targets for f in fields):
        dataset.mask_targets = {k: v for k, v in dataset.mask_targets.items() if k not in fields}
        dataset.save()
    for path in files:  # after the labels are gone: no label is left pointing at a missing file
        if os.path.isfile(path):
            os.remove(path)
    _delete_shard_state(dataset, configs)
    for directory in out_dirs:
        if os.path.isdir(directory) and not os.listdir(directory):
            os.rmdir(directory)
    return {"run_keys": keys, "fields": fields + eval_fields, "evaluations": evaluations, "files": len(files)}


def _delete_shard_state(dataset: fo.Dataset, configs) -> None:
    """A sharded run's saved demonstrations and shard records (its queued shards then end unwritten)."""
    import shutil

    for config in configs:
        path = getattr(config, "demonstrations_file", None)
        if path:
            from conceptseg.shards import clear_records

            from conceptseg.shard_lock import release

            clear_records(dataset, config.run_id)
            release(dataset, config.pred_field, config.run_id)  # its queued shards end without writing
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            shards_dir = os.path.dirname(os.path.dirname(path))
            if os.path.isdir(shards_dir) and not os.listdir(shards_dir):
                os.rmdir(shards_dir)
