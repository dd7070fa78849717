"""The run plan: the steps every segmentation run takes, in process or spread over shards.

Check the output fields and pick the targets still to do, load the model, check a resume
against the run it finishes, register the run before any target is touched and store its
summary at the end. :mod:`conceptseg.runs.jobs` (one process) and
:mod:`conceptseg.runs.shards.queue` (delegated workers) both follow it.
"""

from __future__ import annotations

import dataclasses
import os
import time

import fiftyone as fo
from fiftyone import ViewField as F

from conceptseg.errors import ConceptSegError, EmptyViewError, FieldError
from conceptseg.runs.names import (check_field_name, class_list, default_output_dir, instances_field_for,
                                   refuse_mask_field, run_key_for)
from conceptseg.runs.outputs import writable_dir
from conceptseg.runs.records import declare_label_attributes, run_identity
from conceptseg.runs.video import as_frames


def own_labels(field: str, run_key: str, run_id: str | None):
    """Labels this run wrote: by run id (stable when the run is renamed), else by the key on older labels."""
    by_key = ~F(f"{field}.run_id").exists() & (F(f"{field}.run_key") == run_key)
    return (F(f"{field}.run_id") == run_id) | by_key if run_id else by_key


def check_output_field(targets, field: str, label_type, mask_field: str, overwrite: bool, resume: bool,
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
        existing = existing.match(~own_labels(field, run_key, run_id))
    count = existing.count()
    if count and not overwrite:
        raise FieldError(
            f"Field {field!r} already has labels on {count} target sample(s). Pass overwrite "
            "(--overwrite) to replace them, resume (--resume) to finish an interrupted run, or "
            "choose another output field."
        )


def targets_to_do(targets, pred_field, inst_field, mask_field, overwrite, resume, run_key, run_id=None):
    """Checks the output fields and returns the targets still to segment."""
    if len(targets) == 0:
        raise EmptyViewError(
            "The target view is empty (demonstrations are not targets): choose a view with "
            "samples to segment."
        )
    check_output_field(targets, pred_field, fo.Segmentation, mask_field, overwrite, resume, run_key, run_id)
    if inst_field:
        check_output_field(targets, inst_field, fo.Detections, mask_field, overwrite, resume, run_key, run_id)
    return targets.match(~own_labels(pred_field, run_key, run_id)) if resume else targets


def load_model(model):
    """A Bundle, or one loaded (once per process) from a directory, zoo name or hub id."""
    if model is None or not isinstance(model, str):
        return model
    from conceptseg.model.checkpoint import load_bundle_cached
    from conceptseg.model.zoo import ZOO

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


def read_template(path: str | None):
    """A prompt template file (``--prompt-template``), read and checked before any work."""
    from conceptseg.model.templates import load_prompt_template

    return load_prompt_template(path) if path else None


def image_samples(demonstrations, mask_field: str):
    """Demonstrations as image samples: a video's demonstrations are its frames with a mask label."""
    frames, _ = as_frames(demonstrations)
    if frames is not demonstrations and mask_field in frames.get_field_schema():
        return frames.exists(mask_field)
    return frames


def check_resume(dataset, run_key: str, demo_ids: list[str], settings: dict) -> None:
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


# Settings a resumed run must share with the run it finishes (else two runs mix under one key).
RESUME_SETTINGS = ("mask_field", "classes", "route_requested", "threshold", "model")


def ensure_mask_targets(targets, pred_field: str, concept: str) -> None:
    dataset = targets._root_dataset
    if targets._is_frames:  # predictions on a frames view are the videos' frame labels
        pred_field = dataset._FRAMES_PREFIX + pred_field
    if pred_field not in dataset.mask_targets:
        mask_targets = dict(dataset.mask_targets)
        mask_targets[pred_field] = {1: concept}
        dataset.mask_targets = mask_targets
        dataset.save()


def start_record(collection, run_key: str, config: dict) -> None:
    """Registers the run before any target is touched, so an interrupted run is on record.

    Registered on the target view, so ``dataset.load_run_view(run_key)`` loads the targets.
    """
    collection.register_run(run_key, collection.init_run(**config), overwrite=True)


def finish_record(dataset, run_key: str, summary: dict) -> None:
    """Stores the run's summary (counts, failures, timings) as its results."""
    # The summary repeats run_key, which init_run_results takes as its own argument.
    record = {k: v for k, v in summary.items() if k != "run_key"}
    results = dataset.init_run_results(run_key, summary=record, finished_at=time.time())
    dataset.save_run_results(run_key, results, overwrite=True)
    if summary.get("pred_field"):
        declare_label_attributes(dataset, [summary["pred_field"], summary.get("instances_field")])


@dataclasses.dataclass
class RunPlan:
    """What a segmentation run settled before learning anything: its targets, key, fields and settings."""

    dataset: fo.Dataset
    demonstrations: object  # image samples (a video's frames with a mask)
    targets: object  # the targets' view (frames for videos), demonstrations excluded
    todo: object  # the targets still to segment (all, unless resuming)
    unreadable: list  # per-target failures found before any work (e.g. an unreadable video)
    demo_ids: list[str]
    recorded_ids: list[str]  # the ids the record keeps: a saved concept's stable names, else demo_ids
    run_key: str
    run_id: str
    pred_field: str
    inst_field: str | None
    classes: list[str] | None
    settings: dict  # what a resume must share (RESUME_SETTINGS)
    skipped: int  # targets a resume skips


def output_folder(dataset, pred_field: str, output_dir: str | None) -> str:
    """Where the run writes its mask PNGs (absolute), checked writable before anything is recorded."""
    folder = output_dir or default_output_dir(dataset, pred_field)
    return os.path.abspath(writable_dir(folder, "mask output directory"))


def check_threshold(threshold) -> None:
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConceptSegError(f"threshold must be an IoU in [0, 1], got {threshold!r}.")


def prepare(demonstrations, targets, mask_field: str, pred_field: str, *, route: str, threshold: float, model,
            classes, instances: bool, overwrite: bool, resume: bool, source: dict | None = None) -> RunPlan:
    """Every check a run makes before it reads a pixel, in process or sharded, and what they settle.

    Field names, the threshold, the demonstrations (a video's frames), the output fields (with
    ``overwrite``/``resume``), the run's key and id, and a resume's demonstrations and settings.
    """
    check_field_name(pred_field)
    check_threshold(threshold)
    demonstrations = image_samples(demonstrations, mask_field)
    targets, unreadable = as_frames(targets)
    if len(demonstrations) == 0:
        raise EmptyViewError("No demonstrations: select samples (or tag them) whose masks show the concept.")
    dataset = targets._root_dataset
    run_key, run_id = run_identity(dataset, pred_field, resume, run_key_for(pred_field))
    inst_field = instances_field_for(pred_field) if instances else None
    if inst_field:
        check_field_name(inst_field)
    demo_ids = demonstrations.values("id")
    targets = targets.exclude(demo_ids)
    recorded_ids = list(source["demonstration_ids"]) if source else demo_ids
    todo = targets_to_do(targets, pred_field, inst_field, mask_field, overwrite, resume, run_key, run_id)
    classes = class_list(classes)
    settings = dict(mask_field=mask_field, classes=classes, route_requested=route, threshold=threshold,
                    model=model if isinstance(model, str) else None)
    if resume and run_key in dataset.list_runs():
        check_resume(dataset, run_key, recorded_ids, settings)
    return RunPlan(dataset, demonstrations, targets, todo, unreadable, demo_ids, recorded_ids, run_key, run_id,
                   pred_field, inst_field, classes, settings, skipped=len(targets) - len(todo))


@dataclasses.dataclass
class Learned:
    """The concept as the run learned it: the demonstrations read, the router and its verified choice."""

    demos: list
    found: object  # the classes.Concept read: its classes, box-only detections, warnings
    concept: str
    question: str | None
    router: object
    choice: object

    @property
    def negatives(self) -> int:
        return sum(1 for d in self.demos if not d.mask.any())


def learn(plan: RunPlan, mask_field: str, concept: str, route: str, threshold: float, model,
          prompt_template: str | None, prefix_reuse: bool, resize_masks: bool) -> Learned:
    """Reads the demonstrations, builds the router and lets it choose and verify a route."""
    from conceptseg.routes.router import make_router
    from conceptseg.runs import fiftyone_io as fio

    demos, found = fio.read_demonstrations(plan.demonstrations, mask_field, classes=plan.classes,
                                           resize_masks=resize_masks)
    if concept == "concept" and found.classes:
        concept = ", ".join(found.classes)
    question = concept if concept != "concept" else None
    router = make_router(route, threshold, bundle=load_model(model), question=question,
                         prompt_template=read_template(prompt_template), prefix_reuse=prefix_reuse)
    return Learned(demos, found, concept, question, router, router.choose(demos))
