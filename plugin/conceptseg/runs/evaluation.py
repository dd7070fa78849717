"""Evaluation over FiftyOne views: per-sample metrics, stored aggregates, custom metrics."""

from __future__ import annotations

import re

import fiftyone as fo

from conceptseg.runs import fiftyone_io as fio
from conceptseg.errors import ConceptSegError, EmptyViewError, FieldError
from conceptseg.runs.jobs import Progress
from conceptseg.runs.records import fresh

METRIC_NAMES = ("iou", "wfm", "sm", "em", "mae", "dice", "ber", "miou")


def _label_values(label) -> set[int]:
    """The non-zero values of a single-channel Segmentation mask (empty for other labels)."""
    import numpy as np

    if not isinstance(label, fo.Segmentation) or (label.mask is None and label.mask_path is None):
        return set()
    mask = label.get_mask()
    return set(np.unique(mask).tolist()) - {0} if mask.ndim == 2 else set()


def metric_field(eval_key: str, metric: str) -> str:
    """Per-sample field of one metric: ``<eval_key>_concept_<metric>``.

    The ``concept_`` infix keeps clear of the fields FiftyOne's own ``evaluate_segmentations``
    writes under the same key (``<key>_accuracy``, ``<key>_dice`` with ``compute_dice``).
    """
    return f"{eval_key}_concept_{metric}"


def score_samples(
    collection: fo.core.collections.SampleCollection,
    pred_field: str,
    gt_field: str,
    size: int | None = None,
    progress: Progress | None = None,
    classes: list[str] | None = None,
    gt_values: set | None = None,
) -> tuple[dict[str, dict], list[str], list[str]]:
    """Per-sample scores of every sample with both masks, and the ids missing either.

    ``classes`` of ``gt_field`` are the ground truth's concept (default: every labelled pixel).
    ``gt_values``, when given, collects the ground truth's non-zero mask values until it
    holds two (without ``classes`` several values all count as foreground: the caller says so).
    """
    from conceptseg.runs import classes as classes_
    from conceptseg import metrics

    fio.check_mask_field(collection, gt_field, "ground truth")
    concept = classes_.named(collection, gt_field, classes)

    samples, missing_gt, missing_pred = {}, [], []
    view = collection.select_fields([pred_field, gt_field, "metadata"])
    total = len(view)
    for done, sample in enumerate(view.iter_samples(), 1):
        frame = fio.frame_size(sample, gt_field, pred_field)
        if gt_values is not None and len(gt_values) < 2:
            gt_values |= _label_values(sample[gt_field])
        gt = fio.label_to_mask(sample[gt_field], frame, concept)
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
    if not eval_key.isidentifier():
        raise FieldError(
            f"Evaluation key {eval_key!r} is not usable as a run key and field prefix: use letters, digits "
            "and underscores, not starting with a digit (e.g. eval_predictions)."
        )
    if eval_key in dataset.list_runs():
        if dataset.get_run_info(eval_key).config.method != "conceptseg.evaluate":
            raise FieldError(f"Run key {eval_key!r} belongs to another run; choose another evaluation key.")
        return  # re-running an evaluation replaces its own fields, as FiftyOne's do
    taken = [metric_field(eval_key, n) for n in METRIC_NAMES if dataset.has_field(metric_field(eval_key, n))]
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
    classes: list[str] | None = None,
) -> dict:
    """Scores ``pred_field`` against ``gt_field`` on every sample that has both.

    ``classes`` of ``gt_field`` (names or mask values) are the concept the predictions
    are scored against; by default every labelled pixel of the ground truth is.

    Writes ``<eval_key>_concept_<metric>`` on each scored sample for metric in iou, wfm, sm, em,
    mae, dice, ber, miou, and records the aggregate as the FiftyOne run ``eval_key``
    (default ``eval_<pred_field>``). ``size`` = 600 reproduces the paper's protocol
    (both masks resized to 600x600). Samples missing either field are listed, not scored.

    Returns ``{"metrics": {name: mean}, "samples": {id: {name: value}}, "missing_gt":
    [ids], "missing_pred": [ids], "notices": [sentences]}``; metrics include giou and ciou.
    A sample that an earlier evaluation under the same key scored and this one does not
    has its ``<eval_key>_<metric>`` fields cleared (None). Ground truth with several
    non-zero values is scored as foreground-vs-background, with a notice saying so.
    """
    from conceptseg import metrics

    if size is not None and size < 1:
        raise ConceptSegError(f"size must be a positive number of pixels (600 for the paper's protocol), got {size}.")
    fresh(collection._root_dataset)  # predictions another process wrote since the dataset was loaded
    fio.check_mask_field(collection, pred_field, "prediction")
    fio.check_mask_field(collection, gt_field, "ground-truth")
    if len(collection) == 0:
        raise EmptyViewError("Nothing to evaluate: the view is empty.")
    eval_key = eval_key or "eval_" + re.sub(r"\W", "_", pred_field)
    dataset = collection._dataset
    _check_eval_key(dataset, eval_key)
    classes = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else classes
    gt_values: set = set()
    samples, missing_gt, missing_pred = score_samples(collection, pred_field, gt_field, size, progress, classes,
                                                      None if classes else gt_values)
    for name in METRIC_NAMES:
        field = metric_field(eval_key, name)
        values = {i: s[name] for i, s in samples.items()}
        if dataset.has_field(field):
            # A sample scored by an earlier run under this key and not now (its prediction was
            # deleted, or it left the view) must not keep a stale score: the record is replaced.
            values.update(dict.fromkeys(set(dataset.exists(field).values("id")) - set(values)))
        dataset.set_values(field, values, key_field="id")
    notices = []
    if len(gt_values) > 1:
        notices.append(
            f"The ground truth {gt_field!r} holds several non-zero values (e.g. {sorted(gt_values)[:5]}): every "
            "non-zero value was counted as the concept. If the values are different classes, pass classes "
            "(--classes) to score only the concept's values."
        )
    aggregate = metrics.aggregate(samples.values())
    config = dataset.init_run(
        method="conceptseg.evaluate",
        pred_field=pred_field,
        gt_field=gt_field,
        classes=classes or None,
        size=size,
        metric_fields=[metric_field(eval_key, n) for n in METRIC_NAMES],
    )
    dataset.register_run(eval_key, config, overwrite=True)
    results = dataset.init_run_results(
        eval_key, metrics=aggregate, scored=len(samples), missing_gt=missing_gt, missing_pred=missing_pred,
        notices=notices,
    )
    dataset.save_run_results(eval_key, results, overwrite=True)
    per_sample = {
        i: {k: v for k, v in s.items() if k not in ("intersection", "union")} for i, s in samples.items()
    }
    return {"metrics": aggregate, "samples": per_sample, "missing_gt": missing_gt, "missing_pred": missing_pred,
            "notices": notices}
