"""Re-running a reviewed run: the targets not yet accepted, segmented again with the enlarged demonstrations.

A run made by `concepts apply` re-fits on the saved concept's demonstrations plus the accepted and
absent samples of this dataset.
"""

from __future__ import annotations

import numpy as np
from fiftyone import ViewField as F

from conceptseg.runs import classes as classes_
from conceptseg.runs import fiftyone_io as fio
from conceptseg.runs import jobs, names
from conceptseg.runs.review.record import (ReviewError, check_demonstrations_here, check_predictions_here, new_round,
                                           update_record, applied_source, run_config, state)
from conceptseg.runs.review.truth import applied_truth_class


def rerun(dataset, pred_field: str, progress=None) -> dict:
    """Segments the targets not yet accepted again, with the accepted and negative samples as demonstrations.

    The run keeps its settings (mask field, classes, route, threshold, model); the round is
    recorded with its demonstrations and verification. Refuses (and runs nothing) when
    nothing was accepted, corrected or rejected as absent since the last round. What is
    accepted while it runs is kept in the record and learnt from by the next round.
    """
    config = run_config(dataset, pred_field)
    check_predictions_here(dataset, pred_field)
    source = applied_source(config)
    if source is None:
        check_demonstrations_here(dataset, config)
    record = state(dataset, pred_field)
    last = record["rounds"][-1]
    demos = list(dict.fromkeys(last["demonstrations"] + record["accepted"] + record["negatives"]))
    if set(demos) == set(last["demonstrations"]):
        raise ReviewError(
            f"Nothing was accepted, corrected or rejected as absent since round {last['round']}: nothing to "
            "learn from, so nothing was run. Review the targets (`conceptseg review`) and accept or correct some."
        )
    run_key = names.run_key_for(pred_field)
    results = dataset.load_run_results(run_key)
    failed = [f["sample_id"] for f in (getattr(results, "summary", None) or {}).get("failures", [])]
    earlier = dataset.match(F(f"{pred_field}.run_key") == run_key).values("id")
    targets = [i for i in dict.fromkeys(earlier + failed) if i not in set(demos)]
    if not targets:
        raise ReviewError("Every target is accepted or a demonstration: nothing left to segment.")
    # Recorded before the run's config changes, so that the record stays this loop's meanwhile.
    update_record(dataset, pred_field, lambda record: record.setdefault("pending", []).append(demos))
    if source is not None:
        summary = _segment_applied(dataset, config, source, record, demos, targets, pred_field, progress)
    else:
        summary = jobs.segment_by_demonstration(
            dataset.select(demos), dataset.select(targets), config.mask_field, pred_field,
            route=config.route_requested, threshold=config.threshold, concept=config.concept,
            overwrite=True, instances=bool(config.instances_field), model=config.model,
            classes=config.classes, progress=progress,
        )
    record = update_record(dataset, pred_field, lambda record: state_after_rerun(record, demos, summary))
    return {**summary, "round": record["rounds"][-1]["round"], "rounds": record["rounds"]}


def state_after_rerun(record: dict, demos: list[str], summary: dict) -> dict:
    """The record with the new round appended (what was accepted meanwhile waits for the next round)."""
    number = record["rounds"][-1]["round"] + 1
    chosen = set(demos)
    record["rounds"].append(new_round(number, demos, summary["route"], summary["verification"], summary["verified"],
                                   sum(i in chosen for i in record["accepted"]),
                                   sum(i in chosen for i in record["negatives"]), summary["segmented"]))
    record["pending"] = [d for d in record.get("pending", []) if sorted(d) != sorted(demos)]
    return record


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
    from conceptseg.runs import library

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
