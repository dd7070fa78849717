"""The loop's record of a run: who was accepted, rejected or shown absent, every round; and the review by doubt.

It lives in ``dataset.info["conceptseg_review"][pred_field]``; every change is one compare-and-set
in the database (:func:`update_record`), so processes reviewing the same run at once all land.
"""

from __future__ import annotations

import copy
import datetime
import random
import time

import fiftyone as fo

from conceptseg.runs import names
from conceptseg.runs.records import fresh
from conceptseg.errors import ConceptSegError


ACCEPTED_TAG = "conceptseg_accepted"


REJECTED_TAG = "conceptseg_rejected"


INFO_KEY = "conceptseg_review"


SEGMENT_METHOD = "conceptseg.segment_by_demonstration"


class ReviewError(ConceptSegError):
    """A review action that cannot be done as asked (no prediction, already accepted, nothing new)."""


def id_list(ids) -> list[str]:
    """Sample ids from "A,B", ["A", "B"] or one id; refuses an empty list."""
    if isinstance(ids, str):
        ids = ids.split(",")
    out = [str(i).strip() for i in ids or [] if str(i).strip()]
    if not out:
        raise ReviewError("No sample ids given: pass --ids ID[,ID] (or select samples in the App).")
    return list(dict.fromkeys(out))


def run_config(dataset, pred_field: str):
    """The config of the demonstration run that wrote ``pred_field`` (ReviewError if none)."""
    names.check_field_name(pred_field, "prediction")
    run_key = names.run_key_for(pred_field)
    if run_key not in dataset.list_runs() or not (dataset.has_sample_field(pred_field)
                                                  or dataset.has_frame_field(pred_field)):
        fresh(dataset)  # the run may have been recorded, or its labels written, by another process
    if run_key not in dataset.list_runs():
        raise ReviewError(
            f"No ConceptSeg run wrote {pred_field!r} on dataset {dataset.name!r}: segment by demonstration "
            "first (`conceptseg segment ...`), then review its predictions."
        )
    config = dataset.get_run_info(run_key).config
    if config.method != SEGMENT_METHOD:
        raise ReviewError(
            f"{pred_field!r} was written by a text query, which has no demonstrations to learn from "
            "corrections; review a segment-by-demonstration run."
        )
    return config


def state(dataset, pred_field: str) -> dict:
    """The loop's record for ``pred_field`` as stored now; a fresh one (round 1 = the run) for a new run."""
    return _current(run_config(dataset, pred_field), _saved(dataset, pred_field))


def _current(config, saved: dict | None) -> dict:
    """``saved`` when it is the loop of the run that ``config`` describes, else a fresh record."""
    demos = sorted(config.demonstration_ids or [])
    # A run started anew over the same field (other demonstrations) starts a new loop. A re-run in
    # progress (its demonstrations already in the run's config, its round not yet recorded) does not.
    if saved and any(sorted(d) == demos for d in [saved["rounds"][-1]["demonstrations"], *saved.get("pending", [])]):
        return saved
    return {
        "accepted": [], "corrected": [], "rejected": [], "negatives": [],
        "rounds": [new_round(1, list(config.demonstration_ids or []), config.route, config.verification,
                          config.verified, 0, 0, None)],
    }


def new_round(number, demos, route, verification, verified, accepted, negatives, segmented) -> dict:
    return dict(round=number, demonstrations=list(demos), route=route, verification=verification,
                verified=bool(verified), accepted=accepted, negatives=negatives, segmented=segmented,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _datasets():
    import fiftyone.core.odm.database as fod

    return fod.get_db_conn()["datasets"]


def _record_path(pred_field: str) -> str:
    return f"info.{INFO_KEY}.{pred_field}"  # a plain name (names.check_field_name): no dots, no $


def _saved(dataset, pred_field: str) -> dict | None:
    """The record as the database holds it now (not the in-memory dataset's copy, which may be stale)."""
    doc = _datasets().find_one({"_id": dataset._doc.id}, {_record_path(pred_field): 1}) or {}
    loops = (doc.get("info") or {}).get(INFO_KEY)
    saved = loops.get(pred_field) if isinstance(loops, dict) else None
    return saved if isinstance(saved, dict) and saved.get("rounds") else None


def update_record(dataset, pred_field: str, change, attempts: int = 200):
    """Applies ``change(record) -> result`` to the current record and stores it atomically; returns the result.

    ``change`` may run more than once (on a fresher record each time): it must only change the
    record it is given.
    """
    config = run_config(dataset, pred_field)
    path, collection = _record_path(pred_field), _datasets()
    # A field cannot be set inside a null ``info``.
    collection.update_one({"_id": dataset._doc.id, "info": None}, {"$set": {"info": {}}})
    for attempt in range(attempts):
        raw = _saved(dataset, pred_field)
        record = copy.deepcopy(_current(config, raw))
        result = change(record)
        revision = raw.get("revision") if raw else None
        record["revision"] = (revision or 0) + 1
        where = {"_id": dataset._doc.id}
        if raw is None:
            where[path + ".rounds"] = {"$exists": False}
        else:
            where[path + ".revision"] = {"$exists": False} if revision is None else revision
        if collection.update_one(where, {"$set": {path: record}}).matched_count:
            dataset._doc.reload("info")  # the in-memory dataset shows it too
            return result
        time.sleep(random.uniform(0.002, 0.02) * min(attempt + 1, 10))
    raise ReviewError(
        f"The review record of {pred_field!r} kept changing while this command tried to update it "
        f"({attempts} tries): other processes are reviewing the same run; try again."
    )


def check_predictions_here(dataset, pred_field: str) -> None:
    """The run's prediction field must still exist (a user can delete it and leave the run's record)."""
    if not dataset.has_field(pred_field):
        raise ReviewError(
            f"The prediction field {pred_field!r} of this run is no longer on dataset {dataset.name!r} (it was "
            f"deleted), so there is nothing to review: segment again with --pred-field {pred_field} --overwrite, "
            "or drop the run's record with `conceptseg delete-run`."
        )


def check_demonstrations_here(dataset, config) -> None:
    ids = list(config.demonstration_ids or [])
    if ids and len(dataset.select(ids)) == 0:
        raise ReviewError(
            "This run's demonstrations are not on this dataset (a saved concept applied here, or a run whose "
            "demonstrations came from elsewhere): add demonstrations to this dataset and segment by "
            "demonstration, then accept and re-run here."
        )


LABEL_TYPES = {"Segmentation": fo.Segmentation, "Detections": fo.Detections, "Detection": fo.Detections,
               "Polylines": fo.Polylines, "Polyline": fo.Polylines}


def applied_source(config) -> dict | None:
    """The saved concept a run was made from (by `concepts apply`), else None."""
    source = getattr(config, "concept_source", None)
    return dict(source) if source else None


def sample_ids(ids) -> list[str]:
    """The ids that can be samples here (a saved concept's demonstrations are named, not ids)."""
    from bson import ObjectId

    return [i for i in ids if ObjectId.is_valid(i)]


def concept_label_type(source: dict) -> type:
    return LABEL_TYPES.get(source.get("label_type") or "Segmentation", fo.Segmentation)
