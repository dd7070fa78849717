"""The labeling loop on a run's predictions: review by doubt, accept, reject, promote corrections, re-run.

A run of :func:`conceptseg.jobs.segment_by_demonstration` writes predictions in ``pred_field``.
Here a user

- **reviews** its targets, most doubtful first (``doubt`` on each label, see :mod:`conceptseg.doubt`);
- **accepts** a prediction: it becomes ground truth in the demonstrations' mask field under the
  concept's class (other classes' pixels and labels are kept), and the sample is tagged
  ``conceptseg_accepted`` and joins the demonstrations;
- **rejects** a prediction: tagged ``conceptseg_rejected``; with ``absent`` the concept is not
  in the image at all and the sample joins the demonstrations as a negative;
- **promotes** corrected masks from any field (drawn in an annotation tool, written by a
  script) exactly as an accept would;
- **re-runs**: the targets not yet accepted are segmented again with the enlarged
  demonstration set, as a new round of the same run.

The loop's record (accepted, rejected and negative ids, every round with its demonstrations
and verification) lives in ``dataset.info["conceptseg_review"][pred_field]``.
"""

from __future__ import annotations

import datetime
import os

import cv2
import fiftyone as fo
import numpy as np
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
    """The loop's record for ``pred_field``; a fresh one (round 1 = the run) for a new run."""
    config = run_config(dataset, pred_field)
    saved = (dataset.info or {}).get(INFO_KEY, {}).get(pred_field)
    demos = list(config.demonstration_ids or [])
    # A run started anew over the same field (other demonstrations) starts a new loop.
    if saved and sorted(saved["rounds"][-1]["demonstrations"]) == sorted(demos):
        return saved
    return {
        "accepted": [], "corrected": [], "rejected": [], "negatives": [],
        "rounds": [_round(1, demos, config.route, config.verification, config.verified, 0, 0, None)],
    }


def _round(number, demos, route, verification, verified, accepted, negatives, segmented) -> dict:
    return dict(round=number, demonstrations=list(demos), route=route, verification=verification,
                verified=bool(verified), accepted=accepted, negatives=negatives, segmented=segmented,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _save_state(dataset, pred_field: str, record: dict) -> None:
    info = dict(dataset.info or {})
    loops = dict(info.get(INFO_KEY, {}))
    loops[pred_field] = record
    info[INFO_KEY] = loops
    dataset.info = info
    dataset.save()


def review(dataset, pred_field: str) -> dict:
    """The run's targets not yet accepted, most doubtful first, and where the loop stands.

    A label without a doubt (written before doubt existed) sorts as fully doubtful.
    """
    config = run_config(dataset, pred_field)
    record = state(dataset, pred_field)
    run_key = jobs.run_key_for(pred_field)
    # Demonstrations (accepted targets, negatives) are no longer targets.
    done = record["accepted"] + record["negatives"] + record["rounds"][-1]["demonstrations"]
    view = dataset.match(F(f"{pred_field}.run_key") == run_key).exclude(done)
    ids, paths, doubts, tags = view.values(["id", "filepath", f"{pred_field}.doubt", "tags"])
    targets = [
        {"id": i, "doubt": 1.0 if d is None else float(d), "filepath": p, "rejected": REJECTED_TAG in (t or [])}
        for i, p, d, t in zip(ids, paths, doubts, tags)
    ]
    targets.sort(key=lambda t: -t["doubt"])
    last = record["rounds"][-1]
    return {
        "pred_field": pred_field, "mask_field": config.mask_field, "round": last["round"],
        "accepted": len(record["accepted"]), "rejected": len(record["rejected"]),
        "negatives": len(record["negatives"]), "rounds": record["rounds"], "targets": targets,
    }


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


def write_truth(sample, field: str, target: tuple, mask: np.ndarray, out_dir: str) -> None:
    """Writes ``mask`` as the concept's ground truth on ``sample[field]``, keeping every other label.

    Segmentation: the concept's old pixels are cleared, then the mask's pixels that no other
    class holds get the concept's value (a mask file of the user's is never rewritten: the
    result goes to a new file). Detections / Polylines: previously accepted labels of the
    concept are replaced by the mask's instances; everything else stays.
    """
    label_type, name, value = target
    existing = sample[field]
    if label_type is fo.Segmentation:
        sample[field] = _segmentation_truth(existing, mask, value, os.path.join(out_dir, f"{sample.id}.png"))
        return
    height, width = mask.shape
    items = list(getattr(existing, "detections" if label_type is fo.Detections else "polylines", None) or [])
    # Labels an earlier accept wrote for this class are replaced; nothing else is touched.
    items = [i for i in items if not (i.has_field("conceptseg_review") and i["conceptseg_review"] and str(i.label) == name)]
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


def _has_prediction(sample, pred_field: str, run_key: str) -> bool:
    label = sample[pred_field] if sample.has_field(pred_field) else None
    return label is not None and label.get_field("run_key") == run_key and (label.mask is not None or label.mask_path)


def accept(dataset, pred_field: str, ids) -> dict:
    """Makes the predictions of ``ids`` ground truth in the mask field; they join the demonstrations.

    Every id is checked before anything is written: an unknown id, a target without a
    prediction of this run, or one already accepted stops the whole call.
    """
    ids = id_list(ids)
    config = run_config(dataset, pred_field)
    record = state(dataset, pred_field)
    run_key = jobs.run_key_for(pred_field)
    view = _samples(dataset, ids)
    twice = [i for i in ids if i in record["accepted"]]
    if twice:
        raise ReviewError(f"Already accepted: {', '.join(twice)}. To change them, promote a corrected mask.")
    missing = [s.id for s in view if not _has_prediction(s, pred_field, run_key)]
    if missing:
        raise ReviewError(
            f"No prediction of this run in {pred_field!r} on {', '.join(missing)}: only segmented targets can be "
            "accepted (draw the mask and promote it instead)."
        )
    target = truth_class(dataset, config)
    out_dir = _truth_dir(dataset, config.mask_field)
    for sample in view.iter_samples(autosave=True):
        write_truth(sample, config.mask_field, target, sample[pred_field].get_mask() > 0, out_dir)
        sample[pred_field]["review"] = "accepted"
        sample.tags = [t for t in sample.tags if t != REJECTED_TAG] + [ACCEPTED_TAG]
    record["accepted"] += ids
    record["rejected"] = [i for i in record["rejected"] if i not in ids]
    _save_state(dataset, pred_field, record)
    return {"accepted": ids, "mask_field": config.mask_field, "class": target[1], "total_accepted": len(record["accepted"])}


def reject(dataset, pred_field: str, ids, absent: bool = False) -> dict:
    """Tags the predictions of ``ids`` as wrong; with ``absent`` they join the demonstrations as negatives.

    An absent sample must not already show the concept in the mask field.
    """
    ids = id_list(ids)
    config = run_config(dataset, pred_field)
    record = state(dataset, pred_field)
    view = _samples(dataset, ids)
    accepted = [i for i in ids if i in record["accepted"]]
    if accepted:
        raise ReviewError(f"Already accepted: {', '.join(accepted)}; promote a corrected mask instead of rejecting.")
    if absent:
        concept = classes_.named(dataset, config.mask_field, config.classes)
        showing = []
        for sample in view:
            label = sample[config.mask_field]
            if label is not None:
                m = classes_.concept_mask(label, fio.frame_size(sample, config.mask_field), concept, resize=True)
                if m is not None and m.any():
                    showing.append(sample.id)
        if showing:
            raise ReviewError(
                f"{', '.join(showing)} show the concept in {config.mask_field!r}, so it is not absent there; "
                "correct that mask and promote it instead."
            )
    for sample in view.iter_samples(autosave=True):
        if sample[pred_field] is not None:
            sample[pred_field]["review"] = "absent" if absent else "rejected"
        if REJECTED_TAG not in sample.tags:
            sample.tags = sample.tags + [REJECTED_TAG]
    record["rejected"] = list(dict.fromkeys(record["rejected"] + ids))
    if absent:
        record["negatives"] = list(dict.fromkeys(record["negatives"] + ids))
    _save_state(dataset, pred_field, record)
    return {"rejected": ids, "negatives": ids if absent else []}


def promote(dataset, pred_field: str, from_field: str, ids) -> dict:
    """Corrected masks from ``from_field`` become ground truth, as an accept would; ids without one are named."""
    ids = id_list(ids)
    config = run_config(dataset, pred_field)
    record = state(dataset, pred_field)
    fio.check_mask_field(dataset, from_field, "correction")
    view = _samples(dataset, ids)
    demos = set(record["rounds"][-1]["demonstrations"])
    masks, missing = {}, {}
    for sample in view:
        if sample.id in demos:
            missing[sample.id] = "is a demonstration already"
            continue
        try:
            mask = classes_.concept_mask(sample[from_field], fio.frame_size(sample, from_field), None)
        except DemonstrationError as e:
            missing[sample.id] = str(e)
            continue
        if mask is None or not mask.any():
            missing[sample.id] = f"has no mask in {from_field!r}"
        else:
            masks[sample.id] = mask
    if not masks:
        raise ReviewError(f"Nothing to promote from {from_field!r}: " + "; ".join(f"{i} {w}" for i, w in missing.items()))
    target = truth_class(dataset, config)
    out_dir = _truth_dir(dataset, config.mask_field)
    for sample in dataset.select(list(masks)).iter_samples(autosave=True):
        write_truth(sample, config.mask_field, target, masks[sample.id], out_dir)
        if sample.has_field(pred_field) and sample[pred_field] is not None:
            sample[pred_field]["review"] = "corrected"
        sample.tags = [t for t in sample.tags if t not in (REJECTED_TAG, ACCEPTED_TAG)] + [ACCEPTED_TAG]
    promoted = list(masks)
    record["accepted"] = list(dict.fromkeys(record["accepted"] + promoted))
    record["corrected"] = list(dict.fromkeys(record["corrected"] + promoted))
    record["rejected"] = [i for i in record["rejected"] if i not in masks]
    record["negatives"] = [i for i in record["negatives"] if i not in masks]
    _save_state(dataset, pred_field, record)
    return {"promoted": promoted, "missing": missing, "mask_field": config.mask_field, "class": target[1]}


def rerun(dataset, pred_field: str, progress=None) -> dict:
    """Segments the targets not yet accepted again, with the accepted and negative samples as demonstrations.

    The run keeps its settings (mask field, classes, route, threshold, model); the round is
    recorded with its demonstrations and verification. Refuses (and runs nothing) when
    nothing was accepted, corrected or rejected as absent since the last round.
    """
    config = run_config(dataset, pred_field)
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
    summary = jobs.segment_by_demonstration(
        dataset.select(demos), dataset.select(targets), config.mask_field, pred_field,
        route=config.route_requested, threshold=config.threshold, concept=config.concept,
        overwrite=True, instances=bool(config.instances_field), model=config.model,
        classes=config.classes, progress=progress,
    )
    record = state_after_rerun(record, demos, summary)
    _save_state(dataset, pred_field, record)
    return {**summary, "round": record["rounds"][-1]["round"], "rounds": record["rounds"]}


def state_after_rerun(record: dict, demos: list[str], summary: dict) -> dict:
    """The record with the new round appended."""
    number = record["rounds"][-1]["round"] + 1
    record["rounds"].append(_round(number, demos, summary["route"], summary["verification"], summary["verified"],
                                   len(record["accepted"]), len(record["negatives"]), summary["segmented"]))
    return record
