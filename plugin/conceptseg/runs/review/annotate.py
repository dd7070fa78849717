"""Correcting in a real annotation tool: the most doubtful targets go to Label Studio, corrections come home.

:func:`send` writes the run's predictions of the K most doubtful targets into a label field
(``<pred_field>_corrections``: Detections with masks, the concept's class as the label) and sends
them through FiftyOne's own ``annotate``; each task carries its prediction as the pre-annotation
the annotator starts from. :func:`load` reads back what the annotators did, then FiftyOne's
``load_annotations`` brings the masks into that field, and they are promoted exactly as
``promote`` does (:func:`conceptseg.runs.review.promote`). Tasks skipped, left alone or erased
to an empty mask are named and not promoted; the rest proceed. The annotation runs are kept in
the review record (``record["annotations"]``), newest last.

The server's address and key come from the caller (the CLI's --url, the operator's secrets),
else FIFTYONE_LABELSTUDIO_URL / FIFTYONE_LABELSTUDIO_API_KEY, else FiftyOne's annotation config;
they are never stored or printed.
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from conceptseg.errors import ConceptSegError, FieldError
from conceptseg.runs.review.decisions import promote, review
from conceptseg.runs.review.labelstudio import AnnotationError, LabelStudio, brush_result, task_state
from conceptseg.runs.review.record import (applied_source, check_predictions_here, run_config, state,
                                           update_record)
from conceptseg.runs.review.truth import applied_truth_class, mask_file_missing, truth_class, truth_field

from conceptseg.constants import ANNOTATE_TOP as DEFAULT_TOP, ANNOTATION_BACKENDS as BACKENDS

SKIPPED = {
    "skipped": "its task was skipped in Label Studio, or not submitted (its prediction stays a prediction)",
    "empty": ("its task was submitted with an empty mask (if the concept is not in the image, reject it with "
              "`conceptseg reject --absent`)"),
    "empty_region": ("its task was submitted with a brush region that has no pixels, which FiftyOne cannot load: "
                     "delete that region in Label Studio, submit again and load again"),
}


def corrections_field(pred_field: str) -> str:
    """The label field that holds the sent predictions, then the annotators' corrections."""
    return f"{pred_field}_corrections"


def credentials(url: str | None = None, api_key: str | None = None) -> tuple[str, str]:
    """(url, key) of the Label Studio server: given, else the environment, else FiftyOne's annotation config."""
    import fiftyone as fo

    configured = fo.annotation_config.backends.get("labelstudio") or {}
    url = url or os.environ.get("FIFTYONE_LABELSTUDIO_URL") or configured.get("url")
    api_key = api_key or os.environ.get("FIFTYONE_LABELSTUDIO_API_KEY") or configured.get("api_key")
    if not url:
        raise AnnotationError("No Label Studio address: pass --url, or set FIFTYONE_LABELSTUDIO_URL.")
    if not api_key:
        raise AnnotationError(
            f"No API key for Label Studio at {url}: set FIFTYONE_LABELSTUDIO_API_KEY (or the plugin's secret of "
            "that name, or api_key in FiftyOne's annotation config); nothing was sent.")
    return url, api_key


def _check_backend(backend: str) -> None:
    if backend == "cvat":
        raise AnnotationError(
            "CVAT is not supported yet: the same FiftyOne calls would send to it (backend='cvat'), but its pre-"
            "annotations and skipped tasks are untested here; use --backend labelstudio (docs/labeling-loop.md).")
    if backend not in BACKENDS:
        raise AnnotationError(f"Unknown annotation backend {backend!r}: use one of {', '.join(BACKENDS)}.")


def open_run(record: dict) -> dict | None:
    """The newest annotation run when it was sent and neither loaded nor dropped, else None."""
    runs = record.get("annotations") or []
    run = runs[-1] if runs else None
    return run if run and not run.get("loaded") and not run.get("cleaned") else None


def concept_class(dataset, config, record: dict, mask_field: str | None = None) -> str:
    """The class the corrections are labelled with: the one accepted masks are written under."""
    source = applied_source(config)
    if source is None:
        return truth_class(dataset, config)[1]
    try:
        field = truth_field(dataset, config, record, mask_field)
        if dataset.has_field(field):
            return applied_truth_class(dataset, source, field, create=False)[1]
    except ConceptSegError:
        pass  # no field for its ground truth yet: load asks for one (--mask-field)
    classes = list(source.get("classes") or [])
    return classes[0] if classes else source["concept"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_predictions(dataset, pred_field: str, field: str, ids: list[str], name: str) -> list:
    """The predictions of ``ids`` as Detections (one per connected region) in ``field``; returns the old values."""
    import fiftyone as fo

    from conceptseg.runs import fiftyone_io as fio

    schema = dataset.get_field_schema()
    if field in schema and getattr(schema[field], "document_type", None) is not fo.Detections:
        raise FieldError(f"{field!r} holds {getattr(schema[field], 'document_type', None).__name__}, not the "
                         "Detections the corrections go into: rename or delete it first.")
    view = dataset.select(ids, ordered=True)
    old = view.values(field) if field in schema else [None] * len(ids)
    labels = []
    for label in view.values(pred_field):
        if mask_file_missing(label):
            raise FieldError(f"The mask file {label.mask_path} of a prediction in {pred_field!r} is missing; "
                             "segment that target again first.")
        mask = label.get_mask() > 0
        dets = fio.mask_to_detections(mask, mask.astype(np.float32), name, min_area=1)
        for d in dets.detections:
            d.confidence = None
        labels.append(dets)
    view.set_values(field, labels)
    return old


def send(dataset, pred_field: str, top: int = DEFAULT_TOP, backend: str = "labelstudio", url: str | None = None,
         api_key: str | None = None, mask_field: str | None = None) -> dict:
    """Sends the ``top`` most doubtful targets of the run to Label Studio, each pre-annotated with its prediction.

    Refused before anything is written: an unknown backend, an unreachable server or a refused
    key, a run whose last annotation run is still out (load or drop it first), no target left.
    """
    _check_backend(backend)
    if top < 1:
        raise AnnotationError(f"--top must be at least 1 (got {top}).")
    config = run_config(dataset, pred_field)
    check_predictions_here(dataset, pred_field)
    record = state(dataset, pred_field)
    pending = open_run(record)
    if pending:
        raise AnnotationError(
            f"Targets of {pred_field!r} are in Label Studio already (annotation run {pending['anno_key']!r}, sent "
            f"{pending['sent']}): bring them home with --load, or drop that run with --cleanup, before sending more.")
    name = concept_class(dataset, config, record, mask_field)
    ids = [t["id"] for t in review(dataset, pred_field)["targets"][:top]]
    if not ids:
        raise AnnotationError(f"No target of {pred_field!r} is left to correct: every one is accepted or a "
                              "demonstration.")
    url, api_key = credentials(url, api_key)
    api = LabelStudio(url, api_key)
    api.check()  # an unreachable server or a refused key, before anything is written
    field = corrections_field(pred_field)
    anno_key = _new_key(dataset, pred_field, record)
    old = _write_predictions(dataset, pred_field, field, ids, name)
    view = dataset.select(ids, ordered=True)
    try:
        results = view.annotate(anno_key, backend="labelstudio", label_field=field, label_type="instances",
                                classes=[name], url=url, api_key=api_key,
                                project_name=f"ConceptSeg {dataset.name} {pred_field} {anno_key.rsplit('_', 1)[-1]}")
        uploaded = _ensure_predictions(api, dataset, results, field, pred_field, name)
    except Exception as error:
        _undo_send(dataset, view, field, old, anno_key, api)
        if isinstance(error, ConceptSegError):
            raise
        raise AnnotationError(f"Sending to Label Studio at {url} failed ({type(error).__name__}: "
                              f"{' '.join(str(error).split())[:300]}); nothing was kept.") from error
    run = {"anno_key": anno_key, "backend": backend, "project_id": results.project_id, "ids": ids, "class": name,
           "field": field, "sent": _now(), "loaded": None, "cleaned": False}
    update_record(dataset, pred_field, lambda record: record.setdefault("annotations", []).append(run))
    return {**run, "url": f"{url.rstrip('/')}/projects/{results.project_id}", "tasks": len(results.uploaded_tasks),
            "predictions_uploaded": uploaded}


def _new_key(dataset, pred_field: str, record: dict) -> str:
    taken = set(dataset.list_annotation_runs())
    n = len(record.get("annotations") or []) + 1
    while f"conceptseg_{pred_field}_{n}" in taken:
        n += 1
    return f"conceptseg_{pred_field}_{n}"


def _undo_send(dataset, view, field: str, old: list, anno_key: str, api: LabelStudio) -> None:
    """After a failed send: the project, the annotation run and the pre-annotations go; the field is as before."""
    if anno_key in dataset.list_annotation_runs():
        project_id = getattr(dataset.load_annotation_results(anno_key), "project_id", None)
        try:
            if project_id is not None:
                api.delete_project(project_id)
        except ConceptSegError:
            pass  # the server is what failed: its project (if any) is named by the error the caller raises
        dataset.delete_annotation_run(anno_key)
    view.set_values(field, old)


def _ensure_predictions(api: LabelStudio, dataset, results, field: str, pred_field: str, name: str) -> int:
    """Every task carries its sample's prediction; uploads those FiftyOne's backend did not create. Returns how many.

    Also checks FiftyOne's task -> sample map against the file name each task's image was uploaded
    under (``/data/upload/<project>/<uuid8>-<name>``) where the names tell.
    """
    tasks = api.tasks(results.project_id)
    samples = {s.id: s for s in dataset.select(list(results.uploaded_tasks.values())).select_fields(pred_field)}
    names = [os.path.basename(s.filepath) for s in samples.values()]
    unique = len(set(names)) == len(names)
    uploaded = 0
    for task_id, sample_id in results.uploaded_tasks.items():
        task, sample = tasks.get(task_id), samples[sample_id]
        if task is None:
            raise AnnotationError(f"Label Studio has no task {task_id}, which FiftyOne created for {sample_id}.")
        image = str((task.get("data") or {}).get("image", ""))
        shown = os.path.basename(image).split("-", 1)[-1]
        if unique and shown in names and shown != os.path.basename(sample.filepath):
            raise AnnotationError(f"Task {task_id} shows {shown} but FiftyOne mapped it to {sample_id} "
                                  f"({sample.filepath}): the task -> sample map is wrong, so nothing was sent.")
        if task.get("predictions"):
            continue
        label = sample[pred_field]
        doubt = label.get_attribute_value("doubt", None)
        result = brush_result(label.get_mask() > 0, name, field, sample_id[-10:])
        api.add_prediction(task_id, [result], None if doubt is None else round(1.0 - float(doubt), 4))
        uploaded += 1
    missing = [t for t, task in api.tasks(results.project_id).items()
               if t in results.uploaded_tasks and not task.get("predictions")]
    if missing:
        raise AnnotationError(f"Label Studio kept no pre-annotation on task(s) {', '.join(map(str, missing))}.")
    return uploaded


def _the_run(dataset, pred_field: str, record: dict) -> dict:
    runs = record.get("annotations") or []
    if not runs:
        raise AnnotationError(f"Nothing of {pred_field!r} was sent to an annotation tool yet: send the most doubtful "
                              "targets first (`conceptseg annotate` without --load).")
    return runs[-1]


def load(dataset, pred_field: str, url: str | None = None, api_key: str | None = None, cleanup: bool = False,
         replace: bool = False, mask_field: str | None = None) -> dict:
    """Brings the annotators' masks home: submitted ones are promoted as demonstrations, the others are named.

    Everything is checked before anything is written: the run was sent and not loaded yet, the
    prediction field is still there, the server answers and accepts the key, the project still
    exists, and at least one task was submitted with a mask. Then FiftyOne's
    ``load_annotations`` writes the masks into the corrections field, and :func:`promote` makes
    them ground truth (refusing, as ever, to replace ground truth of the class unless ``replace``).
    """
    config = run_config(dataset, pred_field)
    record = state(dataset, pred_field)
    run = _the_run(dataset, pred_field, record)
    key = run["anno_key"]
    if run.get("loaded"):
        raise AnnotationError(f"Annotation run {key!r} was loaded already ({run['loaded']}, {len(run['promoted'])} "
                              "promoted): send the targets again for another round of corrections.")
    if run.get("cleaned"):
        raise AnnotationError(f"Annotation run {key!r} was dropped (--cleanup) before it was loaded: its corrections "
                              "are gone; send the targets again.")
    check_predictions_here(dataset, pred_field)
    if key not in dataset.list_annotation_runs():
        raise AnnotationError(f"FiftyOne has no annotation run {key!r} on {dataset.name!r} any more (it was "
                              "deleted), so the tasks cannot be matched to samples: drop it (--cleanup), send again.")
    url, api_key = credentials(url or dataset.get_annotation_info(key).config.url, api_key)
    api = LabelStudio(url, api_key)
    api.check()
    api.project(run["project_id"], key)
    task_map = dataset.load_annotation_results(key, url=url, api_key=api_key).uploaded_tasks
    tasks = api.tasks(run["project_id"])
    states = {sample_id: task_state(tasks[task_id]) if task_id in tasks else "skipped"
              for task_id, sample_id in task_map.items()}
    done = [i for i in run["ids"] if states.get(i) == "annotated"]
    named = {i: SKIPPED[states.get(i, "skipped")] for i in run["ids"] if i not in done}
    if not done:
        raise AnnotationError(f"No task of annotation run {key!r} was submitted with a mask yet, so nothing was "
                              "loaded: " + "; ".join(f"{i} {why}" for i, why in named.items()) + ".")
    field = run["field"]
    _load_into(dataset, key, field, run["ids"], done, url, api_key)
    out = promote(dataset, pred_field, field, done, replace=replace, mask_field=mask_field)
    named.update(out["missing"])

    def change(record):
        current = (record.get("annotations") or [None])[-1]
        if current and current["anno_key"] == key:
            current.update(loaded=_now(), promoted=out["promoted"], skipped=named)

    update_record(dataset, pred_field, change)
    cleaned = drop(dataset, pred_field, url, api_key) if cleanup else None
    return {"anno_key": key, "promoted": out["promoted"], "skipped": named, "mask_field": out["mask_field"],
            "class": out["class"], "replaced": out["replaced"], "field": field, "cleaned": cleaned}


def _load_into(dataset, key: str, field: str, ids: list[str], done: list[str], url: str, api_key: str) -> None:
    """FiftyOne's load of the ``done`` tasks into ``field``, cleared first for the run's samples.

    The field then holds exactly the submitted corrections. FiftyOne's loader would take a task
    nobody submitted as its pre-annotation, and fails on a brush region without pixels, so for
    the load its task -> sample map holds the submitted tasks only; the full map is put back after.
    """
    results = dataset.load_annotation_results(key, url=url, api_key=api_key)
    full, chosen = dict(results.uploaded_tasks), set(done)
    view = dataset.select(ids)
    view.set_values(field, [None] * len(view))
    results.uploaded_tasks = {task: sample for task, sample in full.items() if sample in chosen}
    results.save()
    try:
        dataset.load_annotations(key, url=url, api_key=api_key, unexpected="ignore")
    finally:
        results = dataset.load_annotation_results(key, url=url, api_key=api_key)
        results.uploaded_tasks = full
        results.save()


def drop(dataset, pred_field: str, url: str | None = None, api_key: str | None = None) -> dict:
    """Deletes the newest annotation run on the backend (its project and tasks) and in FiftyOne.

    A run not loaded yet loses its corrections: the record says it was dropped.
    """
    record = state(dataset, pred_field)
    run = _the_run(dataset, pred_field, record)
    key = run["anno_key"]
    if run.get("cleaned"):
        raise AnnotationError(f"Annotation run {key!r} was cleaned up already.")
    known = key in dataset.list_annotation_runs()
    url, api_key = credentials(url or (dataset.get_annotation_info(key).config.url if known else None), api_key)
    deleted = LabelStudio(url, api_key).delete_project(run["project_id"])
    if known:
        dataset.delete_annotation_run(key)

    def change(record):
        current = (record.get("annotations") or [None])[-1]
        if current and current["anno_key"] == key:
            current["cleaned"] = _now()

    update_record(dataset, pred_field, change)
    return {"anno_key": key, "project_id": run["project_id"], "project_deleted": deleted,
            "loaded": bool(run.get("loaded"))}
