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
from conceptseg.execution import report as execution_report
from conceptseg.locks import locks_output_field
from conceptseg.outputs import writable_dir
from conceptseg.router import DEFAULT_THRESHOLD, check_batch_size, make_router
from conceptseg.video import as_frames
from conceptseg.runs import declare_label_attributes, run_identity

Progress = Callable[[int, int], None]


# Plain names only: '.' would address an embedded field, '$' is refused by MongoDB, and the
# name is also a directory under the dataset's mask folder (so no '/' or absolute paths).
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_field_name(name: str, role: str = "output") -> None:
    """Raises FieldError unless ``name`` is a plain field name (letters, digits, underscores)."""
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
        raise FieldError(
            f"The {role} field name {name!r} is not allowed: use letters, digits and underscores, "
            "starting with a letter (e.g. 'predictions')."
        )


def run_key_for(pred_field: str) -> str:
    """The FiftyOne run key under which predictions in ``pred_field`` are recorded."""
    return "conceptseg_" + re.sub(r"\W", "_", pred_field)


def instances_field_for(pred_field: str) -> str:
    """The Detections field written next to a Segmentation prediction field."""
    return pred_field + "_instances"


def default_output_dir(dataset: fo.Dataset, pred_field: str) -> str:
    """Where mask PNGs go unless the caller says otherwise: a folder of predictions only (:mod:`conceptseg.outputs`)."""
    from conceptseg.outputs import PREDICTIONS, mask_dir

    return mask_dir(dataset.name, PREDICTIONS, pred_field)


def refuse_mask_field(fields, mask_field: str | None) -> None:
    """The one guard of every entry point (CLI, operators, apply_model): never write over the demonstrations' masks."""
    for field in fields:
        if mask_field and field == mask_field:
            raise FieldError(
                f"The output field {field!r} is the demonstrations' mask field; choose another output field."
            )


def _own_labels(field: str, run_key: str, run_id: str | None):
    """Labels this run wrote: by run id (stable when the run is renamed), else by the key on older labels."""
    by_key = ~F(f"{field}.run_id").exists() & (F(f"{field}.run_key") == run_key)
    return (F(f"{field}.run_id") == run_id) | by_key if run_id else by_key


def _check_output_field(targets, field: str, label_type, mask_field: str, overwrite: bool, resume: bool,
                        run_key: str, run_id: str | None = None) -> None:
    refuse_mask_field([field], mask_field)
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
        existing = existing.match(~_own_labels(field, run_key, run_id))
    count = existing.count()
    if count and not overwrite:
        raise FieldError(
            f"Field {field!r} already has labels on {count} target sample(s). Pass overwrite "
            "(--overwrite) to replace them, resume (--resume) to finish an interrupted run, or "
            "choose another output field."
        )


def _targets_to_do(targets, pred_field, inst_field, mask_field, overwrite, resume, run_key, run_id=None):
    """Checks the output fields and returns the targets still to segment."""
    if len(targets) == 0:
        raise EmptyViewError(
            "The target view is empty (demonstrations are not targets): choose a view with "
            "samples to segment."
        )
    _check_output_field(targets, pred_field, fo.Segmentation, mask_field, overwrite, resume, run_key, run_id)
    if inst_field:
        _check_output_field(targets, inst_field, fo.Detections, mask_field, overwrite, resume, run_key, run_id)
    return targets.match(~_own_labels(pred_field, run_key, run_id)) if resume else targets


def _load_model(model):
    """A Bundle, or one loaded (once per process) from a directory, zoo name or hub id."""
    if model is None or not isinstance(model, str):
        return model
    from conceptseg.checkpoint import load_bundle_cached
    from conceptseg.zoo import ZOO

    if os.path.isdir(model) or "/" in model:  # a local bundle, or a Hugging Face id
        return load_bundle_cached(model)
    if model in ZOO:
        import fiftyone.zoo as foz

        _, path = foz.download_zoo_model(model)
        return load_bundle_cached(path)
    raise ConceptSegError(
        f"Unknown model {model!r}: give a bundle directory, a Hugging Face id, or one of the "
        f"zoo models {', '.join(ZOO)} (run `conceptseg install-plugin` to register them)."
    )


def _template(path: str | None):
    """A prompt template file (``--prompt-template``), read and checked before any work."""
    from conceptseg.prompts import load_prompt_template

    return load_prompt_template(path) if path else None


def label_attributes(choice, result, run_key: str, run_id: str | None = None) -> dict:
    """Attributes every predicted label carries; the route's own words win over the run's.

    ``run_id`` (when the run has one) identifies the run even after its key is renamed.
    """
    details = result.details
    attrs = dict(
        route=choice.route.name,
        verification=choice.verification,
        verified=choice.verified,
        rule=details.get("rule") or choice.route.rule(),
        reasoning=details.get("reasoning"),
        answer=details.get("answer"),
        parse_error=details.get("parse_error"),
        truncated=details.get("truncated"),
        shortcut=details.get("shortcut_taken"),
        doubt=details.get("doubt"),  # in [0, 1], higher = more likely wrong (conceptseg.doubt)
        run_key=run_key,
    )
    if details.get("decoded_tokens") is not None:  # the policy routes: tokens it wrote for this target
        attrs["decoded_tokens"] = int(details["decoded_tokens"])
    if run_id:
        attrs["run_id"] = run_id
    return attrs


def _segment_targets(router, choice, todo, pred_field, inst_field, concept, run_key, out_dir, progress, run_id=None,
                     batch_size=1):
    """Segments every target, ``batch_size`` at a time, writing labels as it goes; returns (seconds, failures)."""
    failures, seconds, total, done = [], [], len(todo), 0
    # Saved in batches about once a second; a run stopped by an exception still saves
    # every target it labelled, and a killed one loses at most the last second.
    with todo.save_context(batch_size=1.0) as saver:
        for batch in _sample_batches(fio.iter_targets(todo), batch_size):
            readable = [(sample, target) for sample, target, _ in batch if target is not None]
            results = dict(zip((s.id for s, _ in readable),
                               router.segment(choice, [t for _, t in readable], batch_size=batch_size)))
            for sample, target, error in batch:
                result = results.get(sample.id)
                error = result.error if result is not None else error
                if error is not None:
                    failures.append({"sample_id": sample.id, "filepath": sample.filepath, "error": error})
                    _clear_stale(sample, saver, pred_field, inst_field)
                else:
                    seconds.append(result.seconds)
                    _write_labels(sample, result, choice, pred_field, inst_field, concept, run_key, out_dir, run_id)
                    saver.save(sample)
                done += 1
                if progress is not None:
                    progress(done, total)
    return seconds, failures


def _sample_batches(items, size: int):
    """(sample, target, error) triples in lists of ``size`` readable targets (unreadable ones ride along)."""
    batch, readable = [], 0
    for item in items:
        batch.append(item)
        readable += item[1] is not None
        if readable == size:
            yield batch
            batch, readable = [], 0
    if batch:
        yield batch


def _clear_stale(sample, saver, pred_field, inst_field) -> None:
    """An old label on a failed target (kept only with overwrite) must not pass for this run's."""
    stale = [f for f in (pred_field, inst_field) if f and sample[f] is not None]
    for f in stale:
        sample[f] = None
    if stale:
        saver.save(sample)


def _write_labels(sample, result, choice, pred_field, inst_field, concept, run_key, out_dir, run_id) -> None:
    attrs = label_attributes(choice, result, run_key, run_id)
    path = os.path.join(out_dir, f"{sample.id}.png")
    sample[pred_field] = fio.mask_to_segmentation(
        result.mask, path, cost=result.seconds, box=result.details.get("box"), **attrs
    )
    if inst_field:
        sample[inst_field] = fio.mask_to_detections(result.mask, result.probability, concept,
                                                   cost=result.seconds, **attrs)


def _start_run(collection, run_key: str, config: dict) -> None:
    """Registers the run before any target is touched, so an interrupted run is on record.

    Registered on the target view, so ``dataset.load_run_view(run_key)`` loads the targets.
    """
    collection.register_run(run_key, collection.init_run(**config), overwrite=True)


def _finish_run(dataset, run_key: str, summary: dict) -> None:
    """Stores the run's summary (counts, failures, timings) as its results."""
    # The summary repeats run_key, which init_run_results takes as its own argument.
    record = {k: v for k, v in summary.items() if k != "run_key"}
    results = dataset.init_run_results(run_key, summary=record, finished_at=time.time())
    dataset.save_run_results(run_key, results, overwrite=True)
    if summary.get("pred_field"):
        declare_label_attributes(dataset, [summary["pred_field"], summary.get("instances_field")])


def _ensure_mask_targets(targets, pred_field: str, concept: str) -> None:
    dataset = targets._root_dataset
    if targets._is_frames:  # predictions on a frames view are the videos' frame labels
        pred_field = dataset._FRAMES_PREFIX + pred_field
    if pred_field not in dataset.mask_targets:
        mask_targets = dict(dataset.mask_targets)
        mask_targets[pred_field] = {1: concept}
        dataset.mask_targets = mask_targets
        dataset.save()


# Settings a resumed run must share with the run it finishes (else two runs mix under one key).
RESUME_SETTINGS = ("mask_field", "classes", "route_requested", "threshold", "model")


@locks_output_field  # one run per output field at a time (conceptseg.locks)
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
    Detections or Polylines; see :mod:`conceptseg.classes`); without classes the field
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

    With ``resume``, targets that already hold a label from this run are skipped, so an
    interrupted run finishes where it stopped; it must use the run's own settings. Labels
    written by anything else are only replaced with ``overwrite``.

    ``batch_size`` targets go through the route together (the reasoning route reads them in
    one policy call; the labels are the same as one at a time). ``prefix_reuse=False`` encodes
    every prompt whole instead of reusing the demonstrations' canvas (same labels). The
    summary's ``execution`` says what ran: the batch size used (smaller after an
    out-of-memory halving), every fallback with its reason, the prefix store's hits and misses.

    With ``shards`` (N), nothing is segmented here: the route is chosen, the run recorded and
    its targets queued as N delegated operations for ``fiftyone delegated launch`` workers
    (see :mod:`conceptseg.shards`); the queued run is returned.

    ``source`` says where demonstrations that are no samples of the targets' dataset come from
    (a saved concept: :func:`conceptseg.library.concept_source`); it is recorded as the run's
    ``concept_source``, and its ``demonstration_ids`` (stable names) stand for the temporary
    samples' ids in the run's record and on resume.

    Returns a JSON-able summary (route, verification, counts, failures, timings).
    """
    check_batch_size(batch_size)
    if shards is not None:
        from conceptseg.shards import segment_sharded

        return segment_sharded(demonstrations, targets, mask_field, pred_field, shards, route=route,
                               threshold=threshold, concept=concept, overwrite=overwrite, resume=resume,
                               instances=instances, output_dir=output_dir, model=model, classes=classes,
                               resize_masks=resize_masks, prompt_template=prompt_template, batch_size=batch_size,
                               prefix_reuse=prefix_reuse)
    check_field_name(pred_field)
    check_batch_size(batch_size)
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConceptSegError(f"threshold must be an IoU in [0, 1], got {threshold!r}.")
    demonstrations = _image_samples(demonstrations, mask_field)
    targets, unreadable = as_frames(targets)
    if len(demonstrations) == 0:
        raise EmptyViewError(
            "No demonstrations: select samples (or tag them) whose masks show the concept."
        )
    dataset = targets._root_dataset
    run_key, run_id = run_identity(dataset, pred_field, resume, run_key_for(pred_field))
    inst_field = instances_field_for(pred_field) if instances else None
    if inst_field:
        check_field_name(inst_field)
    demo_ids = demonstrations.values("id")
    targets = targets.exclude(demo_ids)
    recorded_ids = list(source["demonstration_ids"]) if source else demo_ids
    todo = _targets_to_do(targets, pred_field, inst_field, mask_field, overwrite, resume, run_key, run_id)
    out_dir = writable_dir(output_dir or default_output_dir(dataset, pred_field), "mask output directory")
    classes = _class_list(classes)
    settings = dict(mask_field=mask_field, classes=classes, route_requested=route, threshold=threshold,
                    model=model if isinstance(model, str) else None)
    if resume and run_key in dataset.list_runs():
        _check_resume(dataset, run_key, recorded_ids, settings)

    skipped = len(targets) - len(todo)  # before segmenting: the view is re-evaluated lazily
    demos, found = fio.read_demonstrations(demonstrations, mask_field, classes=classes, resize_masks=resize_masks)
    if concept == "concept" and found.classes:
        concept = ", ".join(found.classes)
    question = concept if concept != "concept" else None
    router = make_router(route, threshold, bundle=_load_model(model), question=question,
                         prompt_template=_template(prompt_template), prefix_reuse=prefix_reuse)
    choice = router.choose(demos)
    negatives = sum(1 for d in demos if not d.mask.any())
    _ensure_mask_targets(targets, pred_field, concept)
    out_dir = os.path.abspath(out_dir)
    _start_run(targets, run_key, dict(
        method="conceptseg.segment_by_demonstration",
        run_id=run_id,
        output_dir=out_dir,
        pred_field=pred_field,
        instances_field=inst_field,
        demonstration_ids=recorded_ids,
        negative_demonstrations=negatives,
        box_only_detections=found.box_only,
        route=choice.route.name,
        verification=choice.verification,
        verified=choice.verified,
        reason=choice.reason,
        rule=choice.route.rule(),
        concept=concept,
        frames=bool(targets._is_frames),
        batch_size=batch_size,
        prefix_reuse=bool(prefix_reuse),
        warnings=found.warnings,
        **({"concept_source": source} if source else {}),
        **settings,
    ))
    seconds, failures = _segment_targets(
        router, choice, todo, pred_field, inst_field, concept, run_key, out_dir, progress, run_id, batch_size,
    )
    failures = unreadable + failures
    summary = dict(
        run_key=run_key,
        pred_field=pred_field,
        instances_field=inst_field,
        classes=found.classes,
        warnings=found.warnings,
        route=choice.route.name,
        verification=choice.verification,
        verifications={v.route: v.scores for v in choice.verifications},
        verified=choice.verified,
        reason=choice.reason,
        rule=choice.route.rule(),
        demonstrations=len(demos),
        negative_demonstrations=negatives,
        box_only_detections=found.box_only,
        targets=len(targets),
        segmented=len(seconds),
        skipped=skipped,
        failures=failures,
        fit_seconds=choice.fit_seconds,
        seconds_per_target=(sum(seconds) / len(seconds)) if seconds else None,
        execution=execution_report(choice.route, batch_size),
    )
    _finish_run(dataset, run_key, summary)
    return summary


def _class_list(classes) -> list[str] | None:
    """``classes`` as a list of names: "A,B", ["A", "B"] or None."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = classes.split(",")
    out = [str(c).strip() for c in classes if str(c).strip()]
    return out or None


def _image_samples(demonstrations, mask_field: str):
    """Demonstrations as image samples: a video's demonstrations are its frames with a mask label."""
    frames, _ = as_frames(demonstrations)
    if frames is not demonstrations and mask_field in frames.get_field_schema():
        return frames.exists(mask_field)
    return frames


def _check_resume(dataset, run_key: str, demo_ids: list[str], settings: dict) -> None:
    """Refuses to resume with other demonstrations or settings than the run was started with."""
    config = dataset.get_run_info(run_key).config
    if sorted(getattr(config, "demonstration_ids", None) or []) != sorted(demo_ids):
        raise ConceptSegError(
            f"Cannot resume run {run_key!r}: it was started with other demonstrations. "
            "Select the same ones, or pass overwrite instead of resume to start over."
        )
    changed = [
        f"{name} {getattr(config, name, None)!r} (now {value!r})"
        for name, value in settings.items()
        if getattr(config, name, None) != value
    ]
    if changed:
        raise ConceptSegError(
            f"Cannot resume run {run_key!r} with other settings: it was started with "
            f"{'; '.join(changed)}. Resume with the run's own settings, or pass overwrite to start over."
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
    from conceptseg.router import RouteChoice
    from conceptseg.types import Verification

    if not text or not text.strip():
        raise ConceptSegError("The query is empty: say what to segment, e.g. --text 'the animal'.")
    check_field_name(pred_field)
    check_batch_size(batch_size)
    targets, unreadable = as_frames(targets)
    bundle = _load_model(model)
    if bundle is None:
        raise ConceptSegError("Text queries need a model: pass a bundle (--model DIR or a zoo name).")
    dataset = targets._root_dataset
    run_key, run_id = run_identity(dataset, pred_field, resume, run_key_for(pred_field))
    inst_field = instances_field_for(pred_field) if instances else None
    todo = _targets_to_do(targets, pred_field, inst_field, None, overwrite, resume, run_key, run_id)
    skipped = len(targets) - len(todo)  # before segmenting: the view is re-evaluated lazily
    router = make_router("reasoning", bundle=bundle, question=text.strip(), prompt_template=_template(prompt_template),
                         prefix_reuse=prefix_reuse)
    route = router.routes[0]
    route.fit([])
    choice = RouteChoice(route, [Verification(route.name)], verified=False,
                         reason="text query: no demonstration to verify against")
    concept = concept or text.strip()
    out_dir = writable_dir(output_dir or default_output_dir(dataset, pred_field), "mask output directory")
    _ensure_mask_targets(targets, pred_field, concept)
    out_dir = os.path.abspath(out_dir)
    _start_run(targets, run_key, dict(
        method="conceptseg.segment_by_query", run_id=run_id, output_dir=out_dir,
        pred_field=pred_field, instances_field=inst_field,
        query=text, route=route.name, concept=concept, model=model if isinstance(model, str) else None,
        batch_size=batch_size, prefix_reuse=bool(prefix_reuse),
    ))
    seconds, failures = _segment_targets(
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
    _finish_run(dataset, run_key, summary)
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
    from conceptseg.training.loop import TrainConfig, json_ready, train

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
    _start_run(dataset, run_key, dict(method="conceptseg.train_concept_policy", model=model, out_dir=os.path.abspath(out_dir),
                                      concept_field=concept_field, mask_field=mask_field, test_tag=test_tag, **settings))
    result = train(model, specs, out_dir, config, report=report, progress=progress)
    summary = dict(run_key=run_key, bundle=result.bundle, stage=config.stage, steps=result.steps,
                   resumed_from=result.resumed_from, metrics_file=result.metrics_file,
                   episodes=result.report, left_out=left_out, last=json_ready(result.last))
    _finish_run(dataset, run_key, summary)
    return summary
