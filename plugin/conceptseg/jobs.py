"""Whole runs over FiftyOne views: segment by demonstration, evaluate against ground truth.

The CLI, the operators and Python users call these same two functions.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable

import fiftyone as fo
from fiftyone import ViewField as F

from conceptseg import fiftyone_io as fio
from conceptseg.errors import ConceptSegError, EmptyViewError, FieldError
from conceptseg.router import DEFAULT_THRESHOLD, make_router

Progress = Callable[[int, int], None]


def run_key_for(pred_field: str) -> str:
    """The FiftyOne run key under which predictions in ``pred_field`` are recorded."""
    return "conceptseg_" + re.sub(r"\W", "_", pred_field)


def instances_field_for(pred_field: str) -> str:
    """The Detections field written next to a Segmentation prediction field."""
    return pred_field + "_instances"


def default_output_dir(dataset: fo.Dataset, pred_field: str) -> str:
    """Where mask PNGs go unless the caller says otherwise."""
    return os.path.join(fo.config.default_dataset_dir, "conceptseg", dataset.name, pred_field)


def _check_output_field(targets, field: str, label_type, mask_field: str, overwrite: bool, resume: bool, run_key: str) -> None:
    if field == mask_field:
        raise FieldError(
            f"The output field {field!r} is the demonstrations' mask field; choose another output field."
        )
    schema = targets.get_field_schema()
    if field not in schema:
        return
    doc_type = getattr(schema[field], "document_type", None)
    if doc_type is not label_type:
        raise FieldError(
            f"Field {field!r} already holds {getattr(doc_type, '__name__', 'non-label values')}; "
            f"predictions need a {label_type.__name__} field, so choose another output field."
        )
    existing = targets.exists(field)
    if resume:  # labels this run wrote are skipped; anything else still needs overwrite
        existing = existing.match(F(f"{field}.run_key") != run_key)
    count = existing.count()
    if count and not overwrite:
        raise FieldError(
            f"Field {field!r} already has labels on {count} target sample(s). Pass overwrite "
            "(--overwrite) to replace them, resume (--resume) to finish an interrupted run, or "
            "choose another output field."
        )


def segment_by_demonstration(
    demonstrations: fo.core.collections.SampleCollection,
    targets: fo.core.collections.SampleCollection,
    mask_field: str,
    pred_field: str,
    route: str = "auto",
    threshold: float = DEFAULT_THRESHOLD,
    concept: str = "concept",
    overwrite: bool = False,
    resume: bool = False,
    instances: bool = True,
    output_dir: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Learns the concept from ``demonstrations`` and writes masks on every target.

    Writes a Segmentation per target in ``pred_field`` (a 0/1 PNG under ``output_dir``)
    and, with ``instances``, its connected components as Detections in
    ``<pred_field>_instances``. Each label carries route, verification, verified, rule,
    run_key and cost (seconds). The run is recorded as the FiftyOne custom run
    ``conceptseg_<pred_field>``. Demonstrations are never segmented as targets.

    With ``resume``, targets that already hold a label from this run are skipped, so an
    interrupted run finishes where it stopped. Labels written by anything else are only
    replaced with ``overwrite``.

    Returns a JSON-able summary (route, verification, counts, failures, timings).
    """
    if len(demonstrations) == 0:
        raise EmptyViewError(
            "No demonstrations: select samples (or tag them) whose masks show the concept."
        )
    dataset = targets._dataset
    run_key = run_key_for(pred_field)
    inst_field = instances_field_for(pred_field) if instances else None
    demo_ids = demonstrations.values("id")
    targets = targets.exclude(demo_ids)
    if len(targets) == 0:
        raise EmptyViewError(
            "The target view is empty (demonstrations are not targets): choose a view with "
            "samples to segment."
        )
    _check_output_field(targets, pred_field, fo.Segmentation, mask_field, overwrite, resume, run_key)
    if inst_field:
        _check_output_field(targets, inst_field, fo.Detections, mask_field, overwrite, resume, run_key)
    if resume and run_key in dataset.list_runs():
        started = dataset.get_run_info(run_key).config.demonstration_ids
        if sorted(started) != sorted(demo_ids):
            raise ConceptSegError(
                f"Cannot resume run {run_key!r}: it was started with other demonstrations. "
                "Select the same ones, or pass overwrite instead of resume to start over."
            )

    router = make_router(route, threshold)
    demos = fio.read_demonstrations(demonstrations, mask_field)
    choice = router.choose(demos)
    rule = choice.route.rule()
    config = dataset.init_run(
        method="conceptseg.segment_by_demonstration",
        pred_field=pred_field,
        instances_field=inst_field,
        mask_field=mask_field,
        demonstration_ids=demo_ids,
        route_requested=route,
        route=choice.route.name,
        threshold=threshold,
        verification=choice.verification,
        verifications={v.route: v.score for v in choice.verifications},
        verified=choice.verified,
        reason=choice.reason,
        rule=rule,
        concept=concept,
    )
    dataset.register_run(run_key, config, overwrite=True)
    mask_targets = dict(dataset.mask_targets)
    if pred_field not in mask_targets:
        mask_targets[pred_field] = {1: concept}
        dataset.mask_targets = mask_targets
        dataset.save()

    todo = targets.match(F(f"{pred_field}.run_key") != run_key) if resume else targets
    skipped = len(targets) - len(todo)
    out_dir = output_dir or default_output_dir(dataset, pred_field)
    attrs = dict(
        route=choice.route.name,
        verification=choice.verification,
        verified=choice.verified,
        rule=rule,
        run_key=run_key,
    )
    failures, seconds, total = [], [], len(todo)
    # Saved in batches about once a second; a run stopped by an exception still saves
    # every target it labelled, and a killed one loses at most the last second.
    with todo.save_context(batch_size=1.0) as saver:
        for done, (sample, target, error) in enumerate(fio.iter_targets(todo), 1):
            if target is not None:
                result = next(router.segment(choice, [target]))
                error = result.error
            if error is not None:
                failures.append({"sample_id": sample.id, "filepath": sample.filepath, "error": error})
            else:
                seconds.append(result.seconds)
                path = os.path.join(out_dir, f"{sample.id}.png")
                sample[pred_field] = fio.mask_to_segmentation(result.mask, path, cost=result.seconds, **attrs)
                if inst_field:
                    sample[inst_field] = fio.mask_to_detections(result.mask, result.probability, concept, **attrs)
                saver.save(sample)
            if progress is not None:
                progress(done, total)

    summary = dict(
        run_key=run_key,
        pred_field=pred_field,
        instances_field=inst_field,
        route=choice.route.name,
        verification=choice.verification,
        verifications={v.route: v.scores for v in choice.verifications},
        verified=choice.verified,
        reason=choice.reason,
        rule=rule,
        demonstrations=len(demos),
        targets=len(targets),
        segmented=len(seconds),
        skipped=skipped,
        failures=failures,
        fit_seconds=choice.fit_seconds,
        seconds_per_target=(sum(seconds) / len(seconds)) if seconds else None,
    )
    # The summary repeats run_key, which init_run_results takes as its own argument.
    record = {k: v for k, v in summary.items() if k != "run_key"}
    results = dataset.init_run_results(run_key, summary=record, finished_at=time.time())
    dataset.save_run_results(run_key, results, overwrite=True)
    return summary


METRIC_NAMES = ("iou", "wfm", "sm", "em", "mae", "dice", "ber", "miou")


def score_samples(
    collection: fo.core.collections.SampleCollection,
    pred_field: str,
    gt_field: str,
    size: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, dict], list[str], list[str]]:
    """Per-sample scores of every sample with both masks, and the ids missing either."""
    from conceptseg import metrics

    samples, missing_gt, missing_pred = {}, [], []
    view = collection.select_fields([pred_field, gt_field, "metadata"])
    total = len(view)
    for done, sample in enumerate(view.iter_samples(), 1):
        frame = fio.frame_size(sample, gt_field, pred_field)
        gt = fio.label_to_mask(sample[gt_field], frame)
        pred = fio.label_to_mask(sample[pred_field], frame)
        if gt is None:
            missing_gt.append(sample.id)
        elif pred is None:
            missing_pred.append(sample.id)
        else:
            samples[sample.id] = metrics.score_sample(pred, gt, size=size)
        if progress is not None:
            progress(done, total)
    return samples, missing_gt, missing_pred


def _check_eval_key(dataset: fo.Dataset, eval_key: str) -> None:
    """Refuses a key whose run or fields belong to something else (they would be replaced)."""
    if eval_key in dataset.list_runs():
        if dataset.get_run_info(eval_key).config.method != "conceptseg.evaluate":
            raise FieldError(f"Run key {eval_key!r} belongs to another run; choose another evaluation key.")
        return  # re-running an evaluation replaces its own fields, as FiftyOne's do
    taken = [f"{eval_key}_{n}" for n in METRIC_NAMES if dataset.has_field(f"{eval_key}_{n}")]
    if taken:
        raise FieldError(
            f"Fields {', '.join(taken)} exist and are not from a conceptseg evaluation; "
            "choose another evaluation key."
        )


def evaluate(
    collection: fo.core.collections.SampleCollection,
    pred_field: str,
    gt_field: str,
    eval_key: str | None = None,
    size: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Scores ``pred_field`` against ``gt_field`` on every sample that has both.

    Writes ``<eval_key>_<metric>`` on each scored sample for metric in iou, wfm, sm, em,
    mae, dice, ber, miou, and records the aggregate as the FiftyOne run ``eval_key``
    (default ``eval_<pred_field>``). ``size`` = 600 reproduces the paper's protocol
    (both masks resized to 600x600). Samples missing either field are listed, not scored.

    Returns ``{"metrics": {name: mean}, "samples": {id: {name: value}}, "missing_gt":
    [ids], "missing_pred": [ids]}``; metrics include giou and ciou.
    """
    from conceptseg import metrics

    fio.check_mask_field(collection, pred_field, "prediction")
    fio.check_mask_field(collection, gt_field, "ground-truth")
    if len(collection) == 0:
        raise EmptyViewError("Nothing to evaluate: the view is empty.")
    eval_key = eval_key or "eval_" + re.sub(r"\W", "_", pred_field)
    dataset = collection._dataset
    _check_eval_key(dataset, eval_key)
    samples, missing_gt, missing_pred = score_samples(collection, pred_field, gt_field, size, progress)
    for name in METRIC_NAMES:
        collection.set_values(
            f"{eval_key}_{name}", {i: s[name] for i, s in samples.items()}, key_field="id"
        )
    aggregate = metrics.aggregate(samples.values())
    config = dataset.init_run(
        method="conceptseg.evaluate",
        pred_field=pred_field,
        gt_field=gt_field,
        size=size,
        metric_fields=[f"{eval_key}_{n}" for n in METRIC_NAMES],
    )
    dataset.register_run(eval_key, config, overwrite=True)
    results = dataset.init_run_results(
        eval_key, metrics=aggregate, scored=len(samples), missing_gt=missing_gt, missing_pred=missing_pred
    )
    dataset.save_run_results(eval_key, results, overwrite=True)
    per_sample = {
        i: {k: v for k, v in s.items() if k not in ("intersection", "union")} for i, s in samples.items()
    }
    return {"metrics": aggregate, "samples": per_sample, "missing_gt": missing_gt, "missing_pred": missing_pred}
