"""The reviewer's decisions: accept a prediction, reject it (or the concept as absent), promote a correction."""

from __future__ import annotations

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F

from conceptseg.runs import classes as classes_
from conceptseg.runs import fiftyone_io as fio
from conceptseg.runs import names
from conceptseg.errors import ConceptSegError, DemonstrationError, FieldError
from conceptseg.runs.review.record import (sample_ids, ACCEPTED_TAG, REJECTED_TAG, ReviewError,
                                           check_predictions_here, update_record, applied_source, id_list, run_config,
                                           state)
from conceptseg.runs.review.truth import (shown_mask_field, grouped, has_class, mask_file_missing, truth_dir,
                                          absence_check, applied_truth_class, remember_truth_field, truth_class,
                                          truth_field, truth_problems, truth_target, write_truth)


def review(dataset, pred_field: str) -> dict:
    """The run's targets not yet accepted, most doubtful first, and where the loop stands.

    A label without a doubt (written before doubt existed) sorts as fully doubtful.
    """
    config = run_config(dataset, pred_field)
    check_predictions_here(dataset, pred_field)
    record = state(dataset, pred_field)
    run_key = names.run_key_for(pred_field)
    # Demonstrations (accepted targets, negatives) are no longer targets.
    done = sample_ids(record["accepted"] + record["negatives"] + record["rounds"][-1]["demonstrations"])
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
    run_key = names.run_key_for(pred_field)
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
    check_predictions_here(dataset, pred_field)
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
            if not mask_file_missing(sample[field]) and has_class(sample[field], target)]


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
    check_predictions_here(dataset, pred_field)
    record = state(dataset, pred_field)
    view = _samples(dataset, ids)
    _refuse_not_acceptable(_not_acceptable(dataset, pred_field, record, ids), pred_field)
    field = truth_field(dataset, config, record, mask_field)
    target = truth_target(dataset, config, field)
    masks, problems = {}, {}
    for sample in view.select_fields(pred_field):
        label = sample[pred_field]
        if mask_file_missing(label):
            problems[sample.id] = f"the mask file {label.mask_path} of its prediction is missing (segment it again)"
        else:
            masks[sample.id] = label.get_mask() > 0
    found, replaced = truth_problems(view.select(list(masks)), field, target, masks, replace)
    problems.update(found)
    if problems:
        raise ReviewError(f"Nothing was accepted: {grouped(problems)}.")
    out_dir = truth_dir(dataset, field)
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

    total = update_record(dataset, pred_field, change)
    return {"accepted": ids, "mask_field": field, "class": target[1], "total_accepted": total,
            "replaced": replaced}


def reject(dataset, pred_field: str, ids, absent: bool = False, mask_field: str | None = None) -> dict:
    """Tags the predictions of ``ids`` as wrong; with ``absent`` they join the demonstrations as negatives.

    An absent sample must not already show the concept in the mask field.
    """
    ids = id_list(ids)
    config = run_config(dataset, pred_field)
    check_predictions_here(dataset, pred_field)
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
            if mask_file_missing(label):
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

    update_record(dataset, pred_field, change)
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
            if label is not None and not mask_file_missing(label):
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
        if mask_file_missing(label):
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
        raise ReviewError(f"Nothing was promoted: {grouped(problems)}.")
    out_dir = truth_dir(dataset, field)
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

    update_record(dataset, pred_field, change)
    return {"promoted": promoted, "missing": missing, "mask_field": field, "class": target[1],
            "replaced": replaced}
