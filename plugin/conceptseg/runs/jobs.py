"""Whole runs over FiftyOne views: segment by demonstration, by text query, and train the policy.

The CLI, the operators and Python users call these same functions; each follows the run plan
(:mod:`conceptseg.runs.plan`) and writes labels through :mod:`conceptseg.runs.writing`.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import fiftyone as fo

from conceptseg.errors import ConceptSegError, EmptyViewError
from conceptseg.routes.router import DEFAULT_THRESHOLD, check_batch_size, make_router
from conceptseg.runs import fiftyone_io as fio
from conceptseg.runs.execution import report as execution_report
from conceptseg.runs.locks import locks_output_field
from conceptseg.runs.names import check_field_name, instances_field_for, run_key_for
from conceptseg.runs.plan import (RunPlan, ensure_mask_targets, finish_record, learn, load_model, output_folder,
                                  prepare, read_template, start_record, targets_to_do)
from conceptseg.runs.records import run_identity
from conceptseg.runs.video import as_frames
from conceptseg.runs.writing import segment_targets

Progress = Callable[[int, int], None]


@locks_output_field  # one run per output field at a time (conceptseg.runs.locks)
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
    model=None,
    progress: Progress | None = None,
    classes: list[str] | None = None,
    resize_masks: bool = False,
    prompt_template: str | None = None,
    shards: int | None = None,
    batch_size: int = 1,
    source: dict | None = None,
    prefix_reuse: bool = True,
) -> dict:
    """Learns the concept from ``demonstrations`` and writes masks on every target.

    The concept is ``classes`` of ``mask_field`` (a Segmentation with mask targets,
    Detections or Polylines; see :mod:`conceptseg.runs.classes`); without classes the field
    must show one class on the demonstrations. A demonstration without any label of the
    concept is a negative: it teaches background. Labels are read through the given
    views, so their label filters count. Video datasets and clips are segmented frame by
    frame (frame-level masks are the demonstrations; predictions become frame labels).

    Writes a Segmentation per target in ``pred_field`` (a 0/1 PNG under ``output_dir``)
    and, with ``instances``, its connected components as Detections in
    ``<pred_field>_instances``. Each label carries route, verification, verified, rule,
    reasoning, answer, parse_error, run_key and cost (seconds). The run is recorded as
    the FiftyOne custom run ``conceptseg_<pred_field>`` on the dataset. Demonstrations are
    never segmented as targets. ``model`` (a bundle directory, hub id or loaded Bundle)
    makes the model routes available. Demonstration masks of another size than their
    image are refused unless ``resize_masks``.

    With ``resume``, targets holding a label of this run are skipped (same settings needed);
    labels written by anything else are only replaced with ``overwrite``.

    ``batch_size`` targets go through the route together (the reasoning route reads them in
    one policy call; the labels are the same as one at a time). ``prefix_reuse=False`` encodes
    every prompt whole instead of reusing the demonstrations' canvas (same labels). The
    summary's ``execution`` says what ran: the batch size used (smaller after an
    out-of-memory halving), every fallback with its reason, the prefix store's hits and misses.

    With ``shards`` (N), the route is chosen and the run recorded here, and its targets are queued as
    N delegated operations for workers (:mod:`conceptseg.runs.shards`); the queued run is returned.

    ``source`` says where demonstrations that are no samples of the targets' dataset come from
    (a saved concept: :func:`conceptseg.runs.library.concept_source`); it is recorded as the run's
    ``concept_source``, and its ``demonstration_ids`` (stable names) stand for the temporary
    samples' ids in the run's record and on resume.

    Returns a JSON-able summary (route, verification, counts, failures, timings).
    """
    check_batch_size(batch_size)
    if shards is not None:
        from conceptseg.runs.shards.queue import segment_sharded

        return segment_sharded(demonstrations, targets, mask_field, pred_field, shards, route=route,
                               threshold=threshold, concept=concept, overwrite=overwrite, resume=resume,
                               instances=instances, output_dir=output_dir, model=model, classes=classes,
                               resize_masks=resize_masks, prompt_template=prompt_template, batch_size=batch_size,
                               prefix_reuse=prefix_reuse)
    plan = prepare(demonstrations, targets, mask_field, pred_field, route=route, threshold=threshold, model=model,
                   classes=classes, instances=instances, overwrite=overwrite, resume=resume, source=source)
    out_dir = output_folder(plan.dataset, pred_field, output_dir)
    learned = learn(plan, mask_field, concept, route, threshold, model, prompt_template, prefix_reuse, resize_masks)
    ensure_mask_targets(plan.targets, pred_field, learned.concept)
    start_record(plan.targets, plan.run_key, _record(plan, learned, out_dir, batch_size, prefix_reuse, source))
    choice = learned.choice
    seconds, failures = segment_targets(learned.router, choice, plan.todo, pred_field, plan.inst_field,
                                        learned.concept, plan.run_key, out_dir, progress, plan.run_id, batch_size)
    summary = _summary(plan, learned, seconds, plan.unreadable + failures, execution_report(choice.route, batch_size))
    finish_record(plan.dataset, plan.run_key, summary)
    return summary


def _record(plan: RunPlan, learned, out_dir: str, batch_size: int, prefix_reuse: bool, source: dict | None) -> dict:
    """The run's record (its FiftyOne run config), written before any target is touched."""
    choice = learned.choice
    return dict(
        method="conceptseg.segment_by_demonstration", run_id=plan.run_id, output_dir=out_dir,
        pred_field=plan.pred_field, instances_field=plan.inst_field, demonstration_ids=plan.recorded_ids,
        negative_demonstrations=learned.negatives, box_only_detections=learned.found.box_only,
        route=choice.route.name, verification=choice.verification, verified=choice.verified, reason=choice.reason,
        rule=choice.route.rule(), concept=learned.concept, frames=bool(plan.targets._is_frames),
        batch_size=batch_size, prefix_reuse=bool(prefix_reuse), warnings=learned.found.warnings,
        **({"concept_source": source} if source else {}), **plan.settings,
    )


def _summary(plan: RunPlan, learned, seconds: list[float], failures: list, execution: dict) -> dict:
    """The run's summary: returned to the caller and stored as its results."""
    choice = learned.choice
    return dict(
        run_key=plan.run_key, pred_field=plan.pred_field, instances_field=plan.inst_field,
        classes=learned.found.classes, warnings=learned.found.warnings, route=choice.route.name,
        verification=choice.verification, verifications={v.route: v.scores for v in choice.verifications},
        verified=choice.verified, reason=choice.reason, rule=choice.route.rule(), demonstrations=len(learned.demos),
        negative_demonstrations=learned.negatives, box_only_detections=learned.found.box_only,
        targets=len(plan.targets), segmented=len(seconds), skipped=plan.skipped, failures=failures,
        fit_seconds=choice.fit_seconds, seconds_per_target=(sum(seconds) / len(seconds)) if seconds else None,
        execution=execution,
    )


@locks_output_field
def segment_by_query(
    targets: fo.core.collections.SampleCollection,
    text: str,
    pred_field: str,
    model,
    concept: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    instances: bool = True,
    output_dir: str | None = None,
    progress: Progress | None = None,
    prompt_template: str | None = None,
    batch_size: int = 1,
    prefix_reuse: bool = True,
) -> dict:
    """Reasoning segmentation: the policy reads ``text`` and each target, no demonstrations.

    Labels and the run record are as in :func:`segment_by_demonstration`; verification is
    unavailable (there is no withheld demonstration to check against).
    """
    from conceptseg.routes.router import RouteChoice
    from conceptseg.types import Verification

    if not text or not text.strip():
        raise ConceptSegError("The query is empty: say what to segment, e.g. --text 'the animal'.")
    check_field_name(pred_field)
    check_batch_size(batch_size)
    targets, unreadable = as_frames(targets)
    bundle = load_model(model)
    if bundle is None:
        raise ConceptSegError("Text queries need a model: pass a bundle (--model DIR or a zoo name).")
    dataset = targets._root_dataset
    run_key, run_id = run_identity(dataset, pred_field, resume, run_key_for(pred_field))
    inst_field = instances_field_for(pred_field) if instances else None
    todo = targets_to_do(targets, pred_field, inst_field, None, overwrite, resume, run_key, run_id)
    skipped = len(targets) - len(todo)  # before segmenting: the view is re-evaluated lazily
    router = make_router("reasoning", bundle=bundle, question=text.strip(), prompt_template=read_template(prompt_template),
                         prefix_reuse=prefix_reuse)
    route = router.routes[0]
    route.fit([])
    choice = RouteChoice(route, [Verification(route.name)], verified=False,
                         reason="text query: no demonstration to verify against")
    concept = concept or text.strip()
    out_dir = output_folder(dataset, pred_field, output_dir)
    ensure_mask_targets(targets, pred_field, concept)
    start_record(targets, run_key, dict(
        method="conceptseg.segment_by_query", run_id=run_id, output_dir=out_dir,
        pred_field=pred_field, instances_field=inst_field,
        query=text, route=route.name, concept=concept, model=model if isinstance(model, str) else None,
        batch_size=batch_size, prefix_reuse=bool(prefix_reuse),
    ))
    seconds, failures = segment_targets(
        router, choice, todo, pred_field, inst_field, concept, run_key, out_dir, progress, run_id, batch_size,
    )
    failures = unreadable + failures
    summary = dict(
        run_key=run_key, pred_field=pred_field, instances_field=inst_field, route=route.name,
        query=text, verification=None, verified=False, reason=choice.reason,
        targets=len(targets), segmented=len(seconds), skipped=skipped, failures=failures,
        seconds_per_target=(sum(seconds) / len(seconds)) if seconds else None,
        execution=execution_report(route, batch_size),
    )
    finish_record(dataset, run_key, summary)
    return summary


def train_run_key(out_dir: str) -> str:
    """The run record of a training run: named after its output directory."""
    name = re.sub(r"\W+", "_", os.path.basename(os.path.normpath(out_dir))).strip("_").lower()
    return f"conceptseg_train_{name or 'run'}"


def train_concept_policy(
    view: fo.core.collections.SampleCollection,
    concept_field: str,
    mask_field: str,
    model: str,
    out_dir: str,
    config=None,
    test_tag: str = "test",
    num_demonstrations: int = 4,
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Trains the bundle ``model`` on the view's concepts (stage ``config.stage``); a bundle lands in ``out_dir``.

    Episodes pair each train sample with up to ``num_demonstrations`` other train samples
    of its concept (drawn once, seeded). The run is recorded on the dataset as
    ``conceptseg_train_<out_dir name>`` with its settings and, at the end, its summary.
    Running again with the same ``out_dir`` resumes from the newest checkpoint there.
    The summary is strict JSON (an unscorable reward is None, not NaN).
    """
    from conceptseg.training.episodes import EpisodeReport, build_specs
    from conceptseg.training.config import TrainConfig
    from conceptseg.training.loop import json_ready, train

    config = config or TrainConfig()
    if len(view) == 0:
        raise EmptyViewError("The view holds no samples; train on a view with concept-labelled masks.")
    samples, left_out = fio.training_samples(view, concept_field, mask_field, test_tag=test_tag)
    report = EpisodeReport()
    specs = build_specs(samples, "train", num_demonstrations=num_demonstrations, seed=config.seed, report=report)
    if not specs:
        raise ConceptSegError(
            f"No training episodes: no concept in {concept_field!r} has two or more train samples with masks "
            f"in {mask_field!r} ({report.to_dict()['skipped_concepts']} concepts skipped, {left_out}). "
            "Label more samples per concept."
        )
    dataset = view._dataset
    run_key = train_run_key(out_dir)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
    start_record(dataset, run_key, dict(method="conceptseg.train_concept_policy", model=model, out_dir=os.path.abspath(out_dir),
                                      concept_field=concept_field, mask_field=mask_field, test_tag=test_tag, **settings))
    result = train(model, specs, out_dir, config, report=report, progress=progress)
    summary = dict(run_key=run_key, bundle=result.bundle, stage=config.stage, steps=result.steps,
                   resumed_from=result.resumed_from, metrics_file=result.metrics_file,
                   episodes=result.report, left_out=left_out, last=json_ready(result.last))
    finish_record(dataset, run_key, summary)
    return summary
