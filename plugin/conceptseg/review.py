"""The labeling loop on a run's predictions: review by doubt, accept, reject, promote corrections, re-run.

A run of :func:`conceptseg.jobs.segment_by_demonstration` writes predictions in ``pred_field``.
Here a user

- **reviews** its targets, most doubtful first (``doubt`` on each label, see :mod:`conceptseg.doubt`);
- **accepts** a prediction: it becomes ground truth in the demonstrations' mask field under the
  concept's class (other classes' pixels and labels are kept), and the sample is tagged
  ``conceptseg_accepted`` and joins the demonstrations; ground truth of the concept's class
  already there is replaced only when asked (``replace``), never silently;
- **rejects** a prediction: tagged ``conceptseg_rejected``; with ``absent`` the concept is not
  in the image at all and the sample joins the demonstrations as a negative;
- **promotes** corrected masks from any field (drawn in an annotation tool, written by a
  script) exactly as an accept would;
- **re-runs**: the targets not yet accepted are segmented again with the enlarged
  demonstration set, as a new round of the same run.

The loop's record (accepted, rejected and negative ids, every round with its demonstrations
and verification) lives in ``dataset.info["conceptseg_review"][pred_field]``; every change to it
is one compare-and-set in the database, so processes reviewing the same run at once (an accept
during a re-run) all land.

A run made by `concepts apply` learned from a saved concept's demonstrations, which are not
samples here: its accepted masks go into a mask field of this dataset that the user names
once (see :func:`truth_field`), and a re-run fits on the concept's demonstrations plus the
accepted and absent samples (the section at the end of this module).
"""

from __future__ import annotations

import copy
import datetime
import os
import random
import time

import cv2
import fiftyone as fo
import numpy as np
from bson import ObjectId
from fiftyone import ViewField as F

from conceptseg import classes as classes_
from conceptseg import fiftyone_io as fio
from conceptseg import jobs
from conceptseg.errors import ConceptSegError, DemonstrationError, FieldError

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
    jobs.check_field_name(pred_field, "prediction")
    run_key = jobs.run_key_for(pred_field)
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
        "rounds": [_round(1, list(config.demonstration_ids or []), config.route, config.verification,
                          config.verified, 0, 0, None)],
    }


def _round(number, demos, route, verification, verified, accepted, negatives, segmented) -> dict:
    return dict(round=number, demonstrations=list(demos), route=route, verification=verification,
                verified=bool(verified), accepted=accepted, negatives=negatives, segmented=segmented,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


# The record is one value of the dataset's document, ``info.conceptseg_review.<pred_field>``. Every
# change is a compare-and-set on its ``revision``: read the record, change it, write it only if no one
# wrote it in between, else read it again and redo the change. Two processes changing the record at
# once (an accept during a re-run, two accepts) therefore both land.


def _datasets():
    import fiftyone.core.odm.database as fod

    return fod.get_db_conn()["datasets"]


def _record_path(pred_field: str) -> str:
    return f"info.{INFO_KEY}.{pred_field}"  # a plain name (jobs.check_field_name): no dots, no $


def _saved(dataset, pred_field: str) -> dict | None:
    """The record as the database holds it now (not the in-memory dataset's copy, which may be stale)."""
    doc = _datasets().find_one({"_id": dataset._doc.id}, {_record_path(pred_field): 1}) or {}
    loops = (doc.get("info") or {}).get(INFO_KEY)
    saved = loops.get(pred_field) if isinstance(loops, dict) else None
    return saved if isinstance(saved, dict) and saved.get("rounds") else None


def _update(dataset, pred_field: str, change, attempts: int = 200):
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


def review(dataset, pred_field: str) -> dict:
    """The run's targets not yet accepted, most doubtful first, and where the loop stands.

    A label without a doubt (written before doubt existed) sorts as fully doubtful.
    """
    config = run_config(dataset, pred_field)
    _check_predictions_here(dataset, pred_field)
    record = state(dataset, pred_field)
    run_key = jobs.run_key_for(pred_field)
    # Demonstrations (accepted targets, negatives) are no longer targets.
    done = _sample_ids(record["accepted"] + record["negatives"] + record["rounds"][-1]["demonstrations"])
    view = dataset.match(F(f"{pred_field}.run_key") == run_key).exclude(done)
    ids, paths, doubts, tags = view.values(["id", "filepath", f"{pred_field}.doubt", "tags"])
    targets = [
        {"id": i, "doubt": 1.0 if d is None else float(d), "filepath": p, "rejected": REJECTED_TAG in (t or [])}
        for i, p, d, t in zip(ids, paths, doubts, tags)
    ]
    targets.sort(key=lambda t: -t["doubt"])
    last = record["rounds"][-1]
    return {
        "pred_field": pred_field, "mask_field": shown_mask_field(dataset, config, record), "round": last["round"],
        "accepted": len(record["accepted"]), "rejected": len(record["rejected"]),
        "negatives": len(record["negatives"]), "rounds": record["rounds"], "targets": targets,
    }


def _check_predictions_here(dataset, pred_field: str) -> None:
    """The run's prediction field must still exist (a user can delete it and leave the run's record)."""
    if not dataset.has_field(pred_field):
        raise ReviewError(
            f"The prediction field {pred_field!r} of this run is no longer on dataset {dataset.name!r} (it was "
            f"deleted), so there is nothing to review: segment again with --pred-field {pred_field} --overwrite, "
            "or drop the run's record with `conceptseg delete-run`."
        )


# ---- writing ground truth ---------------------------------------------------------------


def _check_demonstrations_here(dataset, config) -> None:
    ids = list(config.demonstration_ids or [])
    if ids and len(dataset.select(ids)) == 0:
        raise ReviewError(
            "This run's demonstrations are not on this dataset (a saved concept applied here, or a run whose "
            "demonstrations came from elsewhere): add demonstrations to this dataset and segment by "
            "demonstration, then accept and re-run here."
        )


def truth_class(dataset, config) -> tuple[type, str, object]:
    """(label type, class name, Segmentation value or None) under which accepted masks are written."""
    _check_demonstrations_here(dataset, config)
    field = config.mask_field
    schema = dataset.get_field_schema()
    if field not in schema:
        raise FieldError(f"The demonstrations' mask field {field!r} no longer exists on {dataset.name!r}.")
    label_type = schema[field].document_type
    if label_type not in (fo.Segmentation, fo.Detections, fo.Polylines):
        raise FieldError(
            f"Field {field!r} holds {label_type.__name__}: accepted masks can be written into a Segmentation, "
            "Detections or Polylines field only."
        )
    requested = list(config.classes or [])
    if len(requested) > 1:
        raise ReviewError(
            f"The concept is several classes ({', '.join(requested)}): an accepted mask cannot say which "
            "pixels are which. Promote corrections per class from a field that has them."
        )
    demos = dataset.select(list(config.demonstration_ids or []))
    if label_type is fo.Segmentation:
        if requested:
            concept = classes_.named(dataset, field, requested)
            return label_type, concept.classes[0], concept.values[0]
        for label in demos.values(field):
            if _mask_file_missing(label):
                raise FieldError(f"The mask file {label.mask_path} of a demonstration in {field!r} is missing; "
                                 "restore it (or segment again) before accepting.")
            values = classes_.segmentation_values(label) if label is not None else []
            if len(values) == 1:
                return label_type, classes_._name_of(values[0], classes_.mask_targets_of(dataset, field)), values[0]
        return label_type, "1", 1
    if requested:
        return label_type, requested[0], None
    present = set().union(*(classes_.label_classes(label, {}) for label in demos.values(field)))
    if len(present) != 1:
        raise ReviewError(f"Field {field!r} shows {len(present)} classes on the demonstrations; re-run with --classes.")
    return label_type, next(iter(present)), None


def _truth_dir(dataset, field: str) -> str:
    """Ground truth's own folder: no prediction field reaches it (see :mod:`conceptseg.outputs`)."""
    from conceptseg.outputs import REVIEWED, mask_dir

    return mask_dir(dataset.name, REVIEWED, field)


def _mask_file_missing(label) -> bool:
    return (isinstance(label, fo.Segmentation) and label.mask is None and bool(label.mask_path)
            and not os.path.isfile(label.mask_path))


def _has_class(label, target: tuple, pixels: np.ndarray | None = None) -> bool:
    """Whether a ground-truth label already shows the concept's class (``pixels``: its mask, if read already)."""
    label_type, name, value = target
    if label is None:
        return False
    if label_type is not fo.Segmentation:
        return any(str(i.label) == name for i in classes_._items(label))
    if pixels is None:
        if label.mask is None and not label.mask_path:
            return False
        pixels = label.get_mask()
    if isinstance(value, tuple):
        return pixels.ndim == 3 and bool(np.all(pixels[..., :3] == np.array(value, pixels.dtype), axis=2).any())
    return bool((pixels == value).any())


def truth_problems(view, field: str, target: tuple, masks: dict, replace: bool = False,
                   may_replace=()) -> tuple[dict[str, str], list[str]]:
    """Reads each sample's ground truth before anything is written: (why an id cannot take its mask, ids
    whose ground truth of the class would be replaced).

    Ground truth of the concept's class already there is a problem unless ``replace`` (or the id is
    in ``may_replace``: truth this loop wrote itself); so are a missing mask file, a mask of
    another size, and a class value that the mask's integer type cannot hold.
    """
    label_type, name, value = target
    problems, replaced = {}, []
    for sample in view.select_fields(field):
        label, old = sample[field], None
        if label is None:
            continue
        if label_type is fo.Segmentation and (label.mask is not None or label.mask_path):
            if _mask_file_missing(label):
                problems[sample.id] = f"its ground-truth mask file {label.mask_path} is missing (restore it, or clear the label)"
                continue
            old, mask = label.get_mask(), masks[sample.id]
            if old.shape[:2] != mask.shape:
                problems[sample.id] = (f"its mask in {field!r} is {old.shape[1]}x{old.shape[0]} but the new one is "
                                       f"{mask.shape[1]}x{mask.shape[0]} (fix the existing mask's size first)")
                continue
            if not isinstance(value, tuple) and np.issubdtype(old.dtype, np.integer):
                bits = np.iinfo(old.dtype)
                if not bits.min <= value <= bits.max:
                    problems[sample.id] = (f"the class value {value} of {name!r} does not fit its {bits.bits}-bit mask "
                                           f"in {field!r} (values {bits.min}..{bits.max}); give the class a value that fits "
                                           "in the field's mask targets")
                    continue
        if _has_class(label, target, old):
            if replace or sample.id in may_replace:
                replaced.append(sample.id)
            else:
                problems[sample.id] = (f"already has ground truth of {name!r} in {field!r} (to replace it, pass "
                                       "--replace, or tick 'Replace existing ground truth of this class')")
    return problems, replaced


def _grouped(problems: dict[str, str]) -> str:
    """"A, B: why; C: why" (ids with the same reason together)."""
    by_reason: dict[str, list[str]] = {}
    for sample_id, why in problems.items():
        by_reason.setdefault(why, []).append(sample_id)
    return "; ".join(f"{', '.join(ids)}: {why}" for why, ids in by_reason.items())


def write_truth(sample, field: str, target: tuple, mask: np.ndarray, out_dir: str) -> None:
    """Writes ``mask`` as the concept's ground truth on ``sample[field]``, keeping every other label.

    The class's ground truth is replaced, never added to: Segmentation: the concept's old pixels
    are cleared, then the mask's pixels that no other class holds get the concept's value (a mask
    file of the user's is never rewritten: the result goes to a new file). Detections /
    Polylines: the labels of the concept's class are replaced by the mask's instances;
    everything else stays. Callers refuse first what must not be replaced (:func:`truth_problems`).
    """
    label_type, name, value = target
    existing = sample[field]
    if label_type is fo.Segmentation:
        sample[field] = _segmentation_truth(existing, mask, value, os.path.join(out_dir, f"{sample.id}.png"))
        return
    height, width = mask.shape
    items = list(getattr(existing, "detections" if label_type is fo.Detections else "polylines", None) or [])
    # The class's labels are replaced (not duplicated); nothing else is touched.
    items = [i for i in items if str(i.label) != name]
    if label_type is fo.Detections:
        new = fio.mask_to_detections(mask, mask.astype(np.float32), name, min_area=1).detections
        for d in new:
            d.confidence = None
            d["conceptseg_review"] = True
        label = existing if existing is not None else fo.Detections()
        label.detections = items + new
    else:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        new = [fo.Polyline(label=name, points=[[(float(x) / width, float(y) / height) for x, y in c[:, 0]]],
                           closed=True, filled=True, conceptseg_review=True) for c in contours if len(c) >= 3]
        label = existing if existing is not None else fo.Polylines()
        label.polylines = items + new
    sample[field] = label


def _segmentation_truth(existing, mask: np.ndarray, value, path: str) -> fo.Segmentation:
    rgb = isinstance(value, tuple)
    old = None
    if existing is not None and (existing.mask is not None or existing.mask_path):
        old = existing.get_mask()
        if old.shape[:2] != mask.shape:
            raise FieldError(
                f"The existing mask is {old.shape[1]}x{old.shape[0]} but the prediction is "
                f"{mask.shape[1]}x{mask.shape[0]}; fix the existing mask's size first."
            )
    if old is None:
        dtype = np.uint16 if not rgb and value > 255 else np.uint8
        old = np.zeros(mask.shape + ((3,) if rgb else ()), dtype)
    out = old.copy()
    if rgb:
        colour = np.array(value, out.dtype)
        mine = np.all(out[..., :3] == colour, axis=2)
        out[mine] = 0
        free = ~out[..., :3].any(axis=2)
        out[mask & free, :3] = colour
    else:
        out[out == value] = 0
        out[mask & (out == 0)] = value
    label = existing if existing is not None else fo.Segmentation()
    if existing is not None and existing.mask_path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = cv2.cvtColor(out, cv2.COLOR_RGB2BGR) if rgb else out
        if not cv2.imwrite(path, pixels):
            raise ConceptSegError(f"Could not write mask file {path}; check that the directory is writable.")
        label.mask_path = os.path.abspath(path)
    else:
        label.mask = out
    return label


# ---- actions ---------------------------------------------------------------------------


def _samples(dataset, ids: list[str]):
    from bson import ObjectId

    malformed = [i for i in ids if not ObjectId.is_valid(i)]
    if malformed:
        raise ReviewError(f"Not a sample id: {', '.join(malformed)} (ids are 24 hex digits; `conceptseg review --json` lists them).")
    view = dataset.select(ids, ordered=True)
    found = set(view.values("id"))
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise ReviewError(f"No sample with id {', '.join(unknown)} on dataset {dataset.name!r}.")
    return view


_NOT_ACCEPTABLE = {
    "malformed": "is not a sample id (ids are 24 hex digits)",
    "unknown": "is not a sample of this dataset",
    "accepted": "is accepted already (promote a corrected mask to change it)",
    "no_prediction": "has no prediction of this run in {field!r} (draw its mask and promote it instead)",
    "demonstration": "is a demonstration of this run",
}


def _not_acceptable(dataset, pred_field: str, record: dict, ids: list[str]) -> dict[str, str]:
    """Why each of ``ids`` cannot be accepted, as a key of ``_NOT_ACCEPTABLE`` (one query, no mask read)."""
    from bson import ObjectId

    kinds = {i: "malformed" for i in ids if not ObjectId.is_valid(i)}
    valid = [i for i in ids if i not in kinds]
    view = dataset.select(valid)
    found = set(view.values("id"))
    run_key = jobs.run_key_for(pred_field)
    predicted = set(view.match((F(f"{pred_field}.run_key") == run_key)
                               & ((F(f"{pred_field}.mask_path") != None) | (F(f"{pred_field}.mask") != None)))  # noqa: E711
                    .values("id"))
    accepted, demos = set(record["accepted"]), set(record["rounds"][-1]["demonstrations"])
    for i in valid:
        if i not in found:
            kinds[i] = "unknown"
        elif i in accepted:
            kinds[i] = "accepted"
        elif i not in predicted:
            kinds[i] = "no_prediction"
        elif i in demos:
            kinds[i] = "demonstration"
    return {i: kinds[i] for i in ids if i in kinds}


def acceptable(dataset, pred_field: str, ids) -> tuple[list[str], dict[str, str]]:
    """Which of ``ids`` can be accepted now, and why each other one cannot: ``(ok_ids, {id: reason})``.

    Cheap enough for a form or a panel button (one query on the ids, no mask read): a
    demonstration, a sample without a prediction of this run, one already accepted, an unknown
    or malformed id are not acceptable. It does not read the ground truth: :func:`accept` then
    also refuses a target that already has ground truth of the concept's class, unless
    ``replace``. Raises ReviewError (one sentence) when the run itself cannot be reviewed (no
    such run, its prediction field deleted).
    """
    if isinstance(ids, str):
        ids = ids.split(",")
    ids = list(dict.fromkeys(str(i).strip() for i in ids or [] if str(i).strip()))
    run_config(dataset, pred_field)
    _check_predictions_here(dataset, pred_field)
    record = state(dataset, pred_field)
    kinds = _not_acceptable(dataset, pred_field, record, ids)
    demos = set(record["rounds"][-1]["demonstrations"])
    # A demonstration is named as one, with or without a prediction.
    reasons = {i: _NOT_ACCEPTABLE["demonstration" if i in demos and kind == "no_prediction" else kind]
               .format(field=pred_field) for i, kind in kinds.items()}
    return [i for i in ids if i not in kinds], reasons


def holding_truth(dataset, pred_field: str, ids, mask_field: str | None = None) -> list[str]:
    """The ids whose ground truth already shows the concept's class: accepting them needs ``replace``.

    For a form or a panel button, on the samples in hand: reads their ground truth only and
    creates nothing. [] when the truth field is not known or not there yet (accept then says why).
    """
    try:
        config = run_config(dataset, pred_field)
        field = truth_field(dataset, config, state(dataset, pred_field), mask_field)
        if not dataset.has_field(field):
            return []
        source = applied_source(config)
        target = (truth_class(dataset, config) if source is None
                  else applied_truth_class(dataset, source, field, create=False))
    except ConceptSegError:
        return []
    valid = [i for i in ids or [] if ObjectId.is_valid(str(i))]
    return [sample.id for sample in dataset.select(valid).select_fields(field)
            if not _mask_file_missing(sample[field]) and _has_class(sample[field], target)]


def _refuse_not_acceptable(kinds: dict[str, str], pred_field: str) -> None:
    def of(kind):
        return ", ".join(i for i, k in kinds.items() if k == kind)

    parts = []
    if of("accepted"):
        parts.append(f"Already accepted: {of('accepted')}. To change them, promote a corrected mask.")
    if of("no_prediction"):
        parts.append(f"No prediction of this run in {pred_field!r} on {of('no_prediction')}: only segmented targets "
                     "can be accepted (draw the mask and promote it instead).")
    if of("demonstration"):
        parts.append(f"Demonstrations of this run cannot be accepted: {of('demonstration')}.")
    if parts:
        raise ReviewError(" ".join(parts))


def accept(dataset, pred_field: str, ids, replace: bool = False, mask_field: str | None = None) -> dict:
    """Makes the predictions of ``ids`` ground truth in the mask field; they join the demonstrations.

    Every id is checked before anything is written: an unknown id, a demonstration, a target
    without a prediction of this run, one already accepted, or one that already has ground
    truth of the concept's class (unless ``replace``: then the class's pixels or labels are
    replaced) stops the whole call. On a run made by `concepts apply`, ``mask_field`` names
    where they go (see :func:`truth_field`).
    """
    ids = id_list(ids)
    config = run_config(dataset, pred_field)
    _check_predictions_here(dataset, pred_field)
    record = state(dataset, pred_field)
    view = _samples(dataset, ids)
    _refuse_not_acceptable(_not_acceptable(dataset, pred_field, record, ids), pred_field)
    field = truth_field(dataset, config, record, mask_field)
    target = truth_target(dataset, config, field)
    masks, problems = {}, {}
    for sample in view.select_fields(pred_field):
        label = sample[pred_field]
        if _mask_file_missing(label):
            problems[sample.id] = f"the mask file {label.mask_path} of its prediction is missing (segment it again)"
        else:
            masks[sample.id] = label.get_mask() > 0
    found, replaced = truth_problems(view.select(list(masks)), field, target, masks, replace)
    problems.update(found)
    if problems:
        raise ReviewError(f"Nothing was accepted: {_grouped(problems)}.")
    out_dir = _truth_dir(dataset, field)
    for sample in view.iter_samples(autosave=True):
        write_truth(sample, field, target, masks[sample.id], out_dir)
        sample[pred_field]["review"] = "accepted"
        sample.tags = [t for t in sample.tags if t != REJECTED_TAG] + [ACCEPTED_TAG]

    def change(record):
        record["accepted"] = list(dict.fromkeys(record["accepted"] + ids))
        record["rejected"] = [i for i in record["rejected"] if i not in ids]
        record["negatives"] = [i for i in record["negatives"] if i not in ids]
        remember_truth_field(config, record, field)
        return len(record["accepted"])

    total = _update(dataset, pred_field, change)
    return {"accepted": ids, "mask_field": field, "class": target[1], "total_accepted": total,
            "replaced": replaced}


def reject(dataset, pred_field: str, ids, absent: bool = False, mask_field: str | None = None) -> dict:
    """Tags the predictions of ``ids`` as wrong; with ``absent`` they join the demonstrations as negatives.

    An absent sample must not already show the concept in the mask field.
    """
    ids = id_list(ids)
    config = run_config(dataset, pred_field)
    _check_predictions_here(dataset, pred_field)
    record = state(dataset, pred_field)
    view = _samples(dataset, ids)
    accepted = [i for i in ids if i in record["accepted"]]
    if accepted:
        raise ReviewError(f"Already accepted: {', '.join(accepted)}; promote a corrected mask instead of rejecting.")
    where = absence_check(dataset, config, record, mask_field) if absent else None
    if where is not None:
        field, concept = where
        showing = []
        for sample in view:
            label = sample[field]
            if _mask_file_missing(label):
                raise FieldError(f"The mask file {label.mask_path} of {sample.id} in {field!r} is missing; "
                                 "restore it (or clear the label) before rejecting the sample as absent.")
            if label is not None:
                m = classes_.concept_mask(label, fio.frame_size(sample, field), concept, resize=True)
                if m is not None and m.any():
                    showing.append(sample.id)
        if showing:
            raise ReviewError(
                f"{', '.join(showing)} show the concept in {field!r}, so it is not absent there; "
                "correct that mask and promote it instead."
            )
    for sample in view.iter_samples(autosave=True):
        if sample[pred_field] is not None:
            sample[pred_field]["review"] = "absent" if absent else "rejected"
        if REJECTED_TAG not in sample.tags:
            sample.tags = sample.tags + [REJECTED_TAG]

    def change(record):
        record["rejected"] = list(dict.fromkeys(record["rejected"] + ids))
        if absent:
            record["negatives"] = list(dict.fromkeys(record["negatives"] + ids))

    _update(dataset, pred_field, change)
    return {"rejected": ids, "negatives": ids if absent else []}


def correction_concept(dataset, from_field: str, labels: list, target: tuple):
    """What of ``from_field`` is the concept: the concept's class when the field holds several, else all of it.

    A class of the concept's name (mask targets of a Segmentation, labels of Detections /
    Polylines) is taken alone; a field showing one class on ``labels`` is a one-class
    correction (all of it); a Segmentation without mask targets showing several values is read
    with the mask field's value of the concept. Returns a Concept, or None for "every labelled
    pixel"; ReviewError when the field holds several classes and none is the concept.
    """
    _, name, value = target
    label_type = dataset.get_field_schema()[from_field].document_type
    if issubclass(label_type, fo.Segmentation):
        mask_targets = classes_.mask_targets_of(dataset, from_field)
        keys = [k for k, v in mask_targets.items() if str(v) == name]
        if keys:
            return classes_.Concept(from_field, [name], [classes_._parse_value(k) for k in keys])
        present = set()
        for label in labels:
            if label is not None and not _mask_file_missing(label):
                present.update(classes_.segmentation_values(label))
        if len(present) <= 1:
            return None
        if value is not None and not mask_targets:
            return classes_.Concept(from_field, [name], [value])
        shown = sorted(classes_._name_of(v, mask_targets) for v in present)
    else:
        present = set().union(*(classes_.label_classes(label, {}) for label in labels))
        if name in present:
            return classes_.Concept(from_field, [name])
        if len(present) <= 1:
            return None
        shown = sorted(present)
    raise ReviewError(
        f"{from_field!r} holds several classes on these samples ({', '.join(map(str, shown))}) and none of them is "
        f"the concept's class {name!r}: promote from a field whose classes name it, or one that holds only the corrections."
    )


def promote(dataset, pred_field: str, from_field: str, ids, replace: bool = False,
            mask_field: str | None = None) -> dict:
    """Corrected masks from ``from_field`` become ground truth, as an accept would; ids without one are named.

    From a multi-class field only the concept's class is taken (:func:`correction_concept`).
    Ground truth of the concept's class already on a sample is replaced only with ``replace``
    (or when this loop wrote it: an accepted or promoted sample can be corrected again).
    """
    ids = id_list(ids)
    config = run_config(dataset, pred_field)
    record = state(dataset, pred_field)
    fio.check_mask_field(dataset, from_field, "correction")
    view = _samples(dataset, ids)
    field = truth_field(dataset, config, record, mask_field)
    target = truth_target(dataset, config, field)
    demos = set(record["rounds"][-1]["demonstrations"])
    samples = [s for s in view if s.id not in demos]
    source = correction_concept(dataset, from_field, [s[from_field] for s in samples], target)
    masks, missing = {}, {i: "is a demonstration already" for i in ids if i in demos}
    for sample in samples:
        label = sample[from_field]
        if _mask_file_missing(label):
            missing[sample.id] = f"has a missing mask file in {from_field!r} ({label.mask_path})"
            continue
        try:
            mask = classes_.concept_mask(label, fio.frame_size(sample, from_field), source)
        except DemonstrationError as e:
            missing[sample.id] = str(e)
            continue
        if mask is None or not mask.any():
            missing[sample.id] = f"has no mask in {from_field!r}" + (f" of {target[1]!r}" if source is not None else "")
        else:
            masks[sample.id] = mask
    missing = {i: missing[i] for i in ids if i in missing}
    if not masks:
        raise ReviewError(f"Nothing to promote from {from_field!r}: " + "; ".join(f"{i} {w}" for i, w in missing.items()))
    problems, replaced = truth_problems(dataset.select(list(masks)), field, target, masks, replace,
                                        may_replace=set(record["accepted"]))
    if problems:
        raise ReviewError(f"Nothing was promoted: {_grouped(problems)}.")
    out_dir = _truth_dir(dataset, field)
    for sample in dataset.select(list(masks)).iter_samples(autosave=True):
        write_truth(sample, field, target, masks[sample.id], out_dir)
        if sample.has_field(pred_field) and sample[pred_field] is not None:
            sample[pred_field]["review"] = "corrected"
        sample.tags = [t for t in sample.tags if t not in (REJECTED_TAG, ACCEPTED_TAG)] + [ACCEPTED_TAG]
    promoted = [i for i in ids if i in masks]

    def change(record):
        record["accepted"] = list(dict.fromkeys(record["accepted"] + promoted))
        record["corrected"] = list(dict.fromkeys(record["corrected"] + promoted))
        record["rejected"] = [i for i in record["rejected"] if i not in masks]
        record["negatives"] = [i for i in record["negatives"] if i not in masks]
        remember_truth_field(config, record, field)

    _update(dataset, pred_field, change)
    return {"promoted": promoted, "missing": missing, "mask_field": field, "class": target[1],
            "replaced": replaced}


def rerun(dataset, pred_field: str, progress=None) -> dict:
    """Segments the targets not yet accepted again, with the accepted and negative samples as demonstrations.

    The run keeps its settings (mask field, classes, route, threshold, model); the round is
    recorded with its demonstrations and verification. Refuses (and runs nothing) when
    nothing was accepted, corrected or rejected as absent since the last round. What is
    accepted while it runs is kept in the record and learnt from by the next round.
    """
    config = run_config(dataset, pred_field)
    _check_predictions_here(dataset, pred_field)
    source = applied_source(config)
    if source is None:
        _check_demonstrations_here(dataset, config)
    record = state(dataset, pred_field)
    last = record["rounds"][-1]
    demos = list(dict.fromkeys(last["demonstrations"] + record["accepted"] + record["negatives"]))
    if set(demos) == set(last["demonstrations"]):
        raise ReviewError(
            f"Nothing was accepted, corrected or rejected as absent since round {last['round']}: nothing to "
            "learn from, so nothing was run. Review the targets (`conceptseg review`) and accept or correct some."
        )
    run_key = jobs.run_key_for(pred_field)
    results = dataset.load_run_results(run_key)
    failed = [f["sample_id"] for f in (getattr(results, "summary", None) or {}).get("failures", [])]
    earlier = dataset.match(F(f"{pred_field}.run_key") == run_key).values("id")
    targets = [i for i in dict.fromkeys(earlier + failed) if i not in set(demos)]
    if not targets:
        raise ReviewError("Every target is accepted or a demonstration: nothing left to segment.")
    # Recorded before the run's config changes, so that the record stays this loop's meanwhile.
    _update(dataset, pred_field, lambda record: record.setdefault("pending", []).append(demos))
    if source is not None:
        summary = _segment_applied(dataset, config, source, record, demos, targets, pred_field, progress)
    else:
        summary = jobs.segment_by_demonstration(
            dataset.select(demos), dataset.select(targets), config.mask_field, pred_field,
            route=config.route_requested, threshold=config.threshold, concept=config.concept,
            overwrite=True, instances=bool(config.instances_field), model=config.model,
            classes=config.classes, progress=progress,
        )
    record = _update(dataset, pred_field, lambda record: state_after_rerun(record, demos, summary))
    return {**summary, "round": record["rounds"][-1]["round"], "rounds": record["rounds"]}


def state_after_rerun(record: dict, demos: list[str], summary: dict) -> dict:
    """The record with the new round appended (what was accepted meanwhile waits for the next round)."""
    number = record["rounds"][-1]["round"] + 1
    chosen = set(demos)
    record["rounds"].append(_round(number, demos, summary["route"], summary["verification"], summary["verified"],
                                   sum(i in chosen for i in record["accepted"]),
                                   sum(i in chosen for i in record["negatives"]), summary["segmented"]))
    record["pending"] = [d for d in record.get("pending", []) if sorted(d) != sorted(demos)]
    return record


# ---- runs made by `concepts apply`: the demonstrations are a saved concept's ------------------
#
# Such a run records its concept (name, version, classes, mask field, label type) as
# ``concept_source`` and names the concept's demonstrations "NAME@N:demos/000.png". Accepted
# ground truth goes into a mask field of this dataset that the user names once (kept in the
# loop's record as ``mask_field``); a re-run fits on the concept's demonstrations plus the
# accepted and absent samples; `concepts update` saves those into the concept.

LABEL_TYPES = {"Segmentation": fo.Segmentation, "Detections": fo.Detections, "Detection": fo.Detections,
               "Polylines": fo.Polylines, "Polyline": fo.Polylines}


def applied_source(config) -> dict | None:
    """The saved concept a run was made from (by `concepts apply`), else None."""
    source = getattr(config, "concept_source", None)
    return dict(source) if source else None


def _sample_ids(ids) -> list[str]:
    """The ids that can be samples here (a saved concept's demonstrations are named, not ids)."""
    from bson import ObjectId

    return [i for i in ids if ObjectId.is_valid(i)]


def _concept_label_type(source: dict) -> type:
    return LABEL_TYPES.get(source.get("label_type") or "Segmentation", fo.Segmentation)


def truth_field(dataset, config, record: dict, mask_field: str | None = None) -> str:
    """The field accepted and promoted masks are written into.

    A run on this dataset's demonstrations: their mask field. A run made by `concepts apply`:
    ``mask_field`` when given (then kept for the loop), the one named before, else the
    concept's own field when this dataset has it; without any, a sentence asks for one.
    """
    source = applied_source(config)
    if source is None:
        if mask_field and mask_field != config.mask_field:
            raise ReviewError(f"This run learned from the demonstrations' masks in {config.mask_field!r}: accepted "
                              f"masks go there, not into {mask_field!r}; leave --mask-field out.")
        return config.mask_field
    chosen, own = record.get("mask_field"), source.get("mask_field")
    outputs = {config.pred_field, getattr(config, "instances_field", None)}
    if mask_field:
        jobs.check_field_name(mask_field, "mask")
        if chosen and mask_field != chosen:
            raise ReviewError(f"This run's accepted masks are in {chosen!r} already: one loop writes one field, so "
                              f"pass --mask-field {chosen} (or leave it out).")
        if mask_field in outputs:
            raise ReviewError(
                f"{mask_field!r} holds this run's predictions; name another field for the accepted masks.")
        return mask_field
    if chosen:
        return chosen
    if own and own not in outputs and dataset.has_field(own):
        return own
    raise ReviewError(
        f"This run applied the saved concept {source['concept']!r}, whose mask field {own!r} is not on "
        f"{dataset.name!r}: name the field to write accepted masks into (--mask-field F; a new one is created as "
        f"{_concept_label_type(source).__name__})."
    )


def remember_truth_field(config, record: dict, field: str) -> None:
    """Keeps the field an applied run's accepts went into, for the loop's later accepts, re-runs and update."""
    if applied_source(config) is not None:
        record["mask_field"] = field


def shown_mask_field(dataset, config, record: dict) -> str | None:
    """The field accepted masks go (or went) into, as `review` shows it; None when not known yet."""
    if applied_source(config) is None:
        return config.mask_field
    try:
        return truth_field(dataset, config, record)
    except ReviewError:
        return None


def truth_target(dataset, config, field: str) -> tuple[type, str, object]:
    """(label type, class name, Segmentation value or None) under which accepted masks are written into ``field``."""
    source = applied_source(config)
    if source is None:
        return truth_class(dataset, config)
    return applied_truth_class(dataset, source, field)


def applied_truth_class(dataset, source: dict, field: str, create: bool = True) -> tuple[type, str, object]:
    """The concept's class in ``field`` here; with ``create``, a missing field is made (the concept's label type).

    A new Segmentation field gets the mask target {1: class}; an existing one with mask
    targets but not the class gets it under the lowest free value.
    """
    classes = list(source.get("classes") or [])
    if len(classes) > 1:
        raise ReviewError(
            f"The concept is several classes ({', '.join(classes)}): an accepted mask cannot say which pixels are "
            "which. Promote corrections per class from a field that has them."
        )
    # Without named classes, the class the concept's demonstrations showed (library._shown_class), when known.
    shown = None if classes else source.get("shown_class")
    name = classes[0] if classes else (shown or {}).get("name") or source["concept"]
    schema = dataset.get_field_schema()
    if field not in schema:
        if not create:
            raise FieldError(
                f"The mask field {field!r} of this run's accepted samples no longer exists on {dataset.name!r}.")
        label_type = _concept_label_type(source)
        name = classes[0] if classes else source["concept"]  # a new field: its one class is the concept
        dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=label_type)
        if label_type is fo.Segmentation:
            _add_mask_target(dataset, field, 1, name)
            return label_type, name, 1
        return label_type, name, None
    label_type = getattr(schema[field], "document_type", None)
    if label_type not in (fo.Segmentation, fo.Detections, fo.Polylines):
        raise FieldError(
            f"Field {field!r} holds {getattr(label_type, '__name__', 'no labels')}: accepted masks can be written into "
            "a Segmentation, Detections or Polylines field only; name another --mask-field."
        )
    if label_type is not fo.Segmentation:
        return label_type, name, None
    targets = classes_.mask_targets_of(dataset, field)
    if any(str(v) == name for v in targets.values()):
        concept = classes_.named(dataset, field, [name])
        return label_type, concept.classes[0], concept.values[0]
    if shown and shown.get("value") is not None and not targets:  # a field without names: its values are the classes
        value = shown["value"]
        return label_type, name, tuple(value) if isinstance(value, list) else int(value)
    if shown:  # this field names its classes otherwise: a new class under the concept's own name
        name = source["concept"]
        if any(str(v) == name for v in targets.values()):
            concept = classes_.named(dataset, field, [name])
            return label_type, concept.classes[0], concept.values[0]
    rgb = any(str(k).startswith("#") for k in targets)
    free = next((v for v in range(1, 256) if v not in {int(k) for k in targets if str(k).isdigit()}), None)
    if not targets or rgb or free is None or not create:
        raise ReviewError(
            f"{field!r} has no class {name!r} in its mask targets, so its pixels could not be told apart: add it "
            f"(dataset.mask_targets[{field!r}]), or name another --mask-field (a new one is created)."
        )
    _add_mask_target(dataset, field, free, name)
    return label_type, name, free


def _add_mask_target(dataset, field: str, value: int, name: str) -> None:
    mask_targets = dict(dataset.mask_targets)
    mask_targets[field] = {**dict(mask_targets.get(field) or {}), value: name}
    dataset.mask_targets = mask_targets
    dataset.save()


def absence_check(dataset, config, record: dict, mask_field: str | None = None):
    """(field, Concept or None) in which a sample rejected as absent must not show the concept; None: no such field."""
    source = applied_source(config)
    if source is None:
        return config.mask_field, classes_.named(dataset, config.mask_field, config.classes)
    try:
        field = truth_field(dataset, config, record, mask_field)
    except ReviewError:
        return None  # no ground truth of the concept on this dataset yet: nothing to contradict
    if not dataset.has_field(field):
        return None
    try:
        _, name, _ = applied_truth_class(dataset, source, field, create=False)
    except ConceptSegError:
        return None  # the field has no class of the concept
    return field, classes_.named(dataset, field, [name])


def _learned_masks(dataset, source: dict, record: dict) -> list[tuple[str, str, np.ndarray]]:
    """(sample id, filepath, bool mask) of an applied run's accepted samples (the concept's pixels in the
    loop's mask field) and negatives (empty masks)."""
    out = []
    if record["accepted"]:
        field = record.get("mask_field")
        if not field:
            raise ReviewError(
                "This run's accepted samples have no recorded mask field; accept them again with --mask-field.")
        _, name, _ = applied_truth_class(dataset, source, field, create=False)
        concept = classes_.named(dataset, field, [name])
        for sample in dataset.select(record["accepted"], ordered=True).select_fields(field):
            width, height = fio.frame_size(sample, field)
            mask = classes_.concept_mask(sample[field], (width, height), concept)
            out.append((sample.id, sample.filepath, mask if mask is not None else np.zeros((height, width), bool)))
    accepted = set(record["accepted"])
    for sample in dataset.select([i for i in record["negatives"] if i not in accepted], ordered=True):
        width, height = fio.frame_size(sample)
        out.append((sample.id, sample.filepath, np.zeros((height, width), bool)))
    return out


def learned_demonstrations(dataset, pred_field: str):
    """A `concepts apply` run's concept source and what its review taught: [(Demonstration, filepath)].

    The accepted samples (their images and the concept's pixels in the loop's mask field) and
    the samples rejected as absent (empty masks).
    """
    from conceptseg.types import Demonstration

    config = run_config(dataset, pred_field)
    source = applied_source(config)
    if source is None:
        raise ReviewError(
            f"{pred_field!r} on {dataset.name!r} was not made by `concepts apply`: its demonstrations are on this "
            "dataset; save them as a concept with `concepts save`."
        )
    record = state(dataset, pred_field)
    rows = _learned_masks(dataset, source, record)
    samples = {s.id: s for s in dataset.select([i for i, *_ in rows])}
    out = []
    for sample_id, filepath, mask in rows:
        image = fio.load_sample_image(samples[sample_id])
        out.append((Demonstration(image=image, mask=mask, id=sample_id), filepath))
    return source, out


def _segment_applied(dataset, config, source: dict, record: dict, demos: list[str], targets: list[str],
                     pred_field: str, progress):
    """A re-run of a `concepts apply` run: the concept version's demonstrations plus the accepted and absent ones."""
    from conceptseg import library

    snapshot = library.resolve(f"{source['concept']}@{source['version']}")
    extra = [(filepath, mask) for _, filepath, mask in _learned_masks(dataset, source, record)]
    scratch = library.scratch_demonstrations(snapshot, extra)
    try:
        summary = jobs.segment_by_demonstration(
            scratch, dataset.select(targets), "mask", pred_field, route=config.route_requested,
            threshold=config.threshold, concept=config.concept, overwrite=True,
            instances=bool(config.instances_field), model=config.model, progress=progress,
            source={**source, "demonstration_ids": demos},
        )
    finally:
        scratch.delete()
    library.name_labels(dataset.select(targets), summary, snapshot.name, snapshot.version)
    return summary
