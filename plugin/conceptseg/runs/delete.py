"""Deleting a run: its record, the labels it wrote, their mask files; never another run's or a user's.

Refused while a process or a shard still writes the field (:class:`RunBusyError`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import fiftyone as fo

from conceptseg.runs import locks
from conceptseg.runs.locks import FieldLockedError
from conceptseg.runs.records import (RunNotFoundError, evaluations_of, label_file_paths, is_under,
                                     keys_for_field, referenced_files, segment_runs)


class RunBusyError(FieldLockedError):
    """A live process (a run, a shard's worker) writes the field of the run to delete."""


def _collections(dataset: fo.Dataset) -> list[tuple[object, dict, bool]]:
    """(raw collection, field schema, is frames) for the dataset's samples and, for videos, frames."""
    from fiftyone.core.odm import get_db_conn

    conn = get_db_conn()
    out = [(conn[dataset._sample_collection_name], dataset.get_field_schema(), False)]
    if dataset._has_frame_fields():
        out.append((conn[dataset._frame_collection_name], dataset.get_frame_field_schema(), True))
    return out


def _live_shards(dataset: fo.Dataset, run_id: str) -> list[dict]:
    """Shard records of the run whose worker is alive and writing (RUNNING, heartbeat fresh, pid alive here)."""
    from conceptseg.runs.shards.store import STALE_AFTER, dead_reason, db_time, operation, shard_records

    now, live = db_time(), []  # heartbeats are the database's clock
    for record in shard_records(dataset, run_id):
        op = operation(record.get("op_id"))
        if op is not None and op.run_state == "running" and dead_reason(dataset, record, op, now,
                                                                         STALE_AFTER) is None:
            live.append(record)
    return live


@contextlib.contextmanager
def _no_writer(dataset: fo.Dataset, pred_field: str, run_ids, what: str) -> Iterator[None]:
    """Holds ``pred_field``'s lock for the deletion; refuses while a live process writes the field.

    A sharded run's own lock (shards queued, none running) does not stop its deletion: that is
    how queued shards are cancelled (they end without writing when their run is gone).
    """
    run_ids = set(run_ids)
    what = f"Cannot delete {what} (field {pred_field!r} of dataset {dataset.name!r}) now"
    token = None
    for _ in range(3):  # the holder may finish between our two reads
        try:
            token = locks.acquire(dataset.name, pred_field, "delete_run")
            break
        except FieldLockedError:
            held = locks.holder(dataset.name, pred_field)
        if held is None:
            continue
        if held.get("run_id") not in run_ids:
            raise RunBusyError(f"{what}: {locks.describe(held)} is writing that field and is still running. "
                               "Wait for it to finish (or stop it), then delete the run.") from None
        workers = _live_shards(dataset, held["run_id"])
        if workers:
            w = workers[0]
            raise RunBusyError(
                f"{what}: shard {w.get('index', 0) + 1} of it is being written by worker pid {w.get('pid')} on "
                f"{w.get('host')}, alive{' with ' + str(len(workers) - 1) + ' more' if len(workers) > 1 else ''}. "
                f"Wait for its shards to finish (`conceptseg shards --dataset {dataset.name} --pred-field "
                f"{pred_field}`) or stop the worker, then delete the run.") from None
        break  # the run's own lock, no shard running: released with the run's shard state
    else:
        raise RunBusyError(f"{what}: another process keeps taking and releasing the field's lock; try again.")
    try:
        yield
    finally:
        if token is not None:
            locks.release(dataset.name, pred_field, token)


def _own_filter(field: str, run_ids: list[str], keys: list[str], live_ids: list[str]) -> dict:
    """The run's labels in ``field``: its run ids, and labels of its keys whose run no longer exists.

    The second half finds what an earlier run under the same key left (its record was
    replaced when the field was run again, e.g. by ``rerun``, or it predates run ids).
    """
    clauses = [{f"{field}.run_key": {"$in": keys}, f"{field}.run_id": {"$nin": live_ids}}]
    if run_ids:
        clauses.insert(0, {f"{field}.run_id": {"$in": run_ids}})
    return {"$or": clauses}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # FiftyOne's naive UTC


def _remove_labels(dataset: fo.Dataset, fields: list[str], query) -> tuple[dict, set]:
    """Sets the labels ``query(field)`` selects to None (unset where the schema lacks the field).

    Works on the raw documents of samples and frames, so labels the schema lost are found too.
    Returns ({field: labels removed}, mask files they pointed at).
    """
    removed, files = {}, set()
    for coll, schema, _ in _collections(dataset):
        for field in fields:
            match = query(field)
            for path in label_file_paths(field):
                files.update(p for p in coll.distinct(path, match) if isinstance(p, str) and p)
            change = ({"$set": {field: None, "last_modified_at": _now()}} if field in schema
                      else {"$unset": {field: ""}, "$set": {"last_modified_at": _now()}})
            removed[field] = removed.get(field, 0) + coll.update_many(match, change).modified_count
    return removed, files


def _drop_if_empty(dataset: fo.Dataset, fields: list[str]) -> tuple[list[str], dict]:
    """Deletes each field that no sample (or frame) holds a value in anymore; ([dropped], {kept: count})."""
    dropped, kept = [], {}
    for coll, schema, frames in _collections(dataset):
        for field in fields:
            left = coll.count_documents({field: {"$ne": None}})
            if left:
                kept[field] = kept.get(field, 0) + left
            elif field in schema:
                (dataset.delete_frame_field if frames else dataset.delete_sample_field)(field)
                dropped.append(field)
            elif coll.count_documents({field: {"$exists": True}}, limit=1):  # None values the schema lost
                coll.update_many({field: {"$exists": True}}, {"$unset": {field: ""}})
    dropped = [f for f in dict.fromkeys(dropped) if f not in kept]
    gone = set(dropped) | {dataset._FRAMES_PREFIX + f for f in dropped}
    if gone & set(dataset.mask_targets):
        dataset.mask_targets = {k: v for k, v in dataset.mask_targets.items() if k not in gone}
        dataset.save()
    return dropped, kept


def _delete_files(dataset: fo.Dataset, files: set, fields: list[str], out_dirs: set) -> int:
    """Deletes those ``files`` under ``out_dirs`` that no label of any dataset points at; returns how many."""
    files = {p for p in files if any(is_under(p, d) for d in out_dirs)}
    lost = {coll.name: [p for f in fields for p in label_file_paths(f)] for coll, _, _ in _collections(dataset)}
    files -= referenced_files(files, extra=lost)
    for path in files:  # after the labels are gone: no label is left pointing at a missing file
        if os.path.isfile(path):
            os.remove(path)
    return len(files)


def _prune(directory: str) -> None:
    """Removes ``directory`` if empty, and (inside the plugin's folder) its parents while they are empty."""
    from conceptseg.runs.outputs import conceptseg_root

    root = os.path.realpath(conceptseg_root())
    while os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
        parent = os.path.dirname(os.path.abspath(directory))
        if not is_under(parent, root) or os.path.realpath(parent) == root:
            return  # a directory of the user's own choosing: only itself
        directory = parent


def _out_dirs(dataset: fo.Dataset, pred_field: str, configs) -> set[str]:
    from conceptseg.runs.names import default_output_dir
    from conceptseg.runs.outputs import legacy_prediction_dir

    dirs = {getattr(c, "output_dir", None) for c in configs} - {None}
    return dirs | {default_output_dir(dataset, pred_field), legacy_prediction_dir(dataset.name, pred_field)}


def delete_run(dataset: fo.Dataset, pred_field: str) -> dict:
    """Deletes the run(s) that wrote ``pred_field``: record, its labels, its evaluations, its mask files.

    Only labels carrying the run's id (or an earlier run's of the same key whose record is
    gone) are removed, on samples and on video frames; ``pred_field`` and its instances field
    are deleted only when nothing else is left in them. A mask file is deleted only when no
    label of any dataset in the database points at it (a clone shares its files). Refused
    (:class:`RunBusyError`) while a live process, or a shard's worker, writes the field.

    Returns what went: run keys, fields, evaluation keys, labels per field, the number of
    files deleted, and the fields kept with the count of labels left in them.
    """
    dataset.reload()
    keys = keys_for_field(dataset, pred_field)
    if not keys:
        lost = _delete_lost_labels(dataset, pred_field)
        if lost is not None:
            return lost
        known = sorted({info.config.pred_field for info in segment_runs(dataset).values()})
        raise RunNotFoundError(
            f"No conceptseg run wrote {pred_field!r} on dataset {dataset.name!r}; runs here write: "
            f"{', '.join(known) or 'none'} (see `conceptseg runs --dataset {dataset.name}`)."
        )
    from conceptseg.runs.names import run_key_for

    configs = [dataset.get_run_info(k).config for k in keys]
    run_ids = sorted({getattr(c, "run_id", None) for c in configs} - {None})
    with _no_writer(dataset, pred_field, run_ids, f"run {keys[0]!r}"):
        fields = [pred_field] + [c.instances_field for c in configs if getattr(c, "instances_field", None)]
        fields = list(dict.fromkeys(fields))
        live_ids = _live_run_ids(dataset)
        own_keys = sorted(set(keys) | {run_key_for(pred_field)})
        out_dirs = _out_dirs(dataset, pred_field, configs)
        evaluations = evaluations_of(dataset, fields)
        eval_fields = [f for key in evaluations for f in (dataset.get_run_info(key).config.metric_fields or [])
                       if dataset.has_field(f)]

        for key in keys:  # first: a shard that starts now finds its run gone and writes nothing
            dataset.delete_run(key)
        removed, files = _remove_labels(dataset, fields, lambda f: _own_filter(f, run_ids, own_keys, live_ids))
        dataset.reload()
        dropped, kept = _drop_if_empty(dataset, fields)
        if eval_fields:
            dataset.delete_sample_fields(eval_fields)
        for key in evaluations:
            dataset.delete_run(key)
        deleted = _delete_files(dataset, files, fields, out_dirs)
        _delete_shard_state(dataset, configs)
    for directory in out_dirs:
        _prune(directory)
    return {"run_keys": keys, "fields": dropped + eval_fields, "evaluations": evaluations, "files": deleted,
            "labels": {f: n for f, n in removed.items() if n}, "kept": kept}


def _live_run_ids(dataset: fo.Dataset) -> list[str]:
    return sorted({getattr(i.config, "run_id", None) for i in segment_runs(dataset).values()} - {None})


def _delete_lost_labels(dataset: fo.Dataset, pred_field: str) -> dict | None:
    """Labels a deleted run left in ``pred_field`` (and its instances field); None when there are none.

    They carry the field's run key and the id of no run on record: the record went without
    them (FiftyOne's own ``delete_run``, a deletion cut short), or the field was deleted while
    the run still wrote it, leaving sample documents with a key the schema lacks (every later
    load of those samples fails). They go like a run's labels, with their mask files.
    """
    from conceptseg.runs.names import FIELD_NAME, instances_field_for, run_key_for

    if not isinstance(pred_field, str) or not FIELD_NAME.fullmatch(pred_field):
        return None  # no run writes a field of another name ('$x', 'a.b', '')
    keys, live_ids = [run_key_for(pred_field)], _live_run_ids(dataset)
    fields = [pred_field, instances_field_for(pred_field)]
    fields = [f for f in fields if any(coll.count_documents(_own_filter(f, [], keys, live_ids), limit=1)
                                      for coll, _, _ in _collections(dataset))]
    if not fields:
        return None
    with _no_writer(dataset, pred_field, [], "the labels a deleted run left"):
        removed, files = _remove_labels(dataset, fields, lambda f: _own_filter(f, [], keys, live_ids))
        dataset.reload()
        dropped, kept = _drop_if_empty(dataset, fields)
        out_dirs = _out_dirs(dataset, pred_field, [])
        deleted = _delete_files(dataset, files, fields, out_dirs)
    for directory in out_dirs:
        _prune(directory)
    return {"run_keys": [], "fields": dropped, "evaluations": [], "files": deleted,
            "labels": {f: n for f, n in removed.items() if n}, "kept": kept}


def _delete_shard_state(dataset: fo.Dataset, configs) -> None:
    """A sharded run's saved demonstrations and shard records (its queued shards then end unwritten)."""
    import shutil

    for config in configs:
        path = getattr(config, "demonstrations_file", None)
        if path:
            from conceptseg.runs.shards.store import clear_records

            from conceptseg.runs.shards.lock import release

            clear_records(dataset, config.run_id)
            release(dataset, config.pred_field, config.run_id)  # its queued shards end without writing
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            shards_dir = os.path.dirname(os.path.dirname(path))
            if os.path.isdir(shards_dir) and not os.listdir(shards_dir):
                os.rmdir(shards_dir)
