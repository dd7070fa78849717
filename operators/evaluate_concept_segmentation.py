"""Operator: score predicted masks against ground truth with the field's metrics."""

import re

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

from . import _live
from ._forms import field_choice, field_name_problem, run_config, run_prediction_fields

# Where the scored samples come from; "run" only when the predictions are one of our runs.
TARGETS = {
    "run": "The run's targets",
    "view": "The current view, without the run's demonstrations",
    "selected": "The selected samples",
    "dataset": "The whole dataset, without the run's demonstrations",
}


class EvaluateConceptSegmentation(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_concept_segmentation",
            label="Evaluate concept segmentation",
            description="IoU, gIoU, cIoU, Fω, Sα, Eφ, MAE, Dice, BER and the paper's fg/bg mIoU per sample",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = run_prediction_fields(ctx.dataset)
        choices = types.DropdownView()
        for f in fields:
            choices.add_choice(f, label=f)
        pred = inputs.enum("pred_field", fields, default=fields[0] if fields else None, required=True,
                           label="Predictions", description="A ConceptSeg run's predictions, newest first",
                           view=choices)
        if not fields:
            pred.invalid = True
            pred.error_message = ("No ConceptSeg run on this dataset has predictions to evaluate: run Segment by "
                                  "demonstration (or Apply concept) first.")
        pred_field = ctx.params.get("pred_field") or pred.default
        config = run_config(ctx.dataset, pred_field) if pred_field else None
        gt_default = getattr(config, "mask_field", None) or "ground_truth"
        gt = field_choice(inputs, ctx, "gt_field", "Ground truth", "The reference masks", gt_default)
        gt_field = ctx.params.get("gt_field") or gt.default
        if pred_field and pred_field == gt_field:
            gt.invalid, gt.error_message = True, "Predictions and ground truth are the same field: choose the masks to compare with."
        key = inputs.str("eval_key", label="Evaluation key", description="Default: eval_<predictions field>")
        problem = field_name_problem(ctx.params.get("eval_key"), "evaluation key") if ctx.params.get("eval_key") else None
        if problem:
            key.invalid, key.error_message = True, problem
        inputs.bool("paper_protocol", default=False, label="Score at 600x600 (the paper's protocol)")
        if ctx.dataset is not None and pred_field:
            _target_input(inputs, ctx, pred_field, gt_field, config)
        return types.Property(inputs, view=types.View(label="Evaluate concept segmentation"))

    def execute(self, ctx):
        def job(progress):
            from conceptseg.errors import ConceptSegError
            from conceptseg.runs.evaluation import evaluate

            params = ctx.params
            pred_field, gt_field = params["pred_field"], params["gt_field"]
            view = target_view(ctx, pred_field)
            if not len(view.exists(pred_field).exists(gt_field)):
                raise ConceptSegError(_nothing_to_score(view, pred_field, gt_field))
            report = evaluate(view, pred_field, gt_field, eval_key=params.get("eval_key") or None,
                              size=600 if params.get("paper_protocol") else None, progress=progress)
            # Per-sample values are on the samples; the App needs only the aggregate.
            return {
                "eval_key": params.get("eval_key") or "eval_" + re.sub(r"\W", "_", pred_field),
                "notices": report.get("notices") or [],
                "pred_field": pred_field,
                "metrics": report["metrics"],
                "scored": len(report["samples"]),
                "missing_gt": len(report["missing_gt"]),
                "missing_pred": len(report["missing_pred"]),
            }

        return _live.run(ctx, job, title="Evaluate concept segmentation", start="Scoring the predictions",
                         done=_done)


def _done(out: dict) -> str:
    metrics = out["metrics"]
    scores = ", ".join(f"{name} {metrics[key]:.3f}" for key, name in (("giou", "gIoU"), ("ciou", "cIoU"))
                       if metrics.get(key) is not None)
    missing = []
    if out["missing_pred"]:
        missing.append(f"{out['missing_pred']} without a prediction")
    if out["missing_gt"]:
        missing.append(f"{out['missing_gt']} without ground truth")
    return (f"Scored {out['scored']} samples of {out['pred_field']!r} as evaluation {out['eval_key']!r} ({scores})"
            + (f"; not scored: {', '.join(missing)}" if missing else "") + ". The Concept Evaluation panel shows it."
            + "".join(" " + n for n in out.get("notices") or []))


def _demonstration_ids(ctx, config) -> list[str]:
    """The run's demonstrations, accepted samples included (they have ground truth, not predictions to score)."""
    if config is None:
        return []
    ids = list(getattr(config, "demonstration_ids", None) or [])
    review = (ctx.dataset.info or {}).get("conceptseg_review", {}).get(config.pred_field) or {}
    for r in review.get("rounds", []):
        ids += r.get("demonstrations", [])
    return list(dict.fromkeys(ids))


def _target_choices(ctx, config) -> list[str]:
    choices = (["run"] if config is not None else []) + ["view"]
    if ctx.selected:
        choices.append("selected")
    return choices + ["dataset"]


def target_view(ctx, pred_field: str):
    """The samples to score: the ``target`` param's choice (``view_target`` from SDK callers that set only it)."""
    from conceptseg.runs.names import run_key_for

    config = run_config(ctx.dataset, pred_field)
    target = ctx.params.get("target")
    if _legacy_target(ctx):  # an SDK call written for the older form
        return ctx.target_view()
    target = target or _target_choices(ctx, config)[0]
    demos = _demonstration_ids(ctx, config)
    if target == "run" and config is not None:
        return ctx.dataset.match(F(f"{pred_field}.run_key") == run_key_for(pred_field)).exclude(demos)
    if target == "selected":
        return ctx.dataset.select(list(ctx.selected))
    if target == "dataset":
        return ctx.dataset.exclude(demos)
    return ctx.view.exclude(demos)


def _legacy_target(ctx) -> bool:
    """Whether the caller named a ``view_target`` (the older form's input) and no ``target``."""
    # FiftyOne moves a view_target param into the request itself.
    return bool(ctx.request_params.get("view_target") or ctx.params.get("view_target")) and not ctx.params.get("target")


def _nothing_to_score(view, pred_field: str, gt_field: str) -> str:
    n = view.count()
    if not n:
        return "The chosen target holds no sample: choose the run's targets or the current view."
    if not len(view.exists(pred_field)):
        return (f"None of the {n} target samples has a prediction in {pred_field!r} (demonstrations never do): "
                "choose the run's targets or the current view.")
    return f"None of the {n} target samples with a prediction has ground truth in {gt_field!r}: choose the field that holds it."


def _target_input(inputs, ctx, pred_field: str, gt_field: str | None, config) -> None:
    """The target radio, its default the run's targets, invalid when nothing in it can be scored."""
    choices = _target_choices(ctx, config)
    radio = types.RadioGroup()
    for choice in choices:
        radio.add_choice(choice, label=TARGETS[choice])
    # An SDK call that names a view_target (the older form's input) keeps that view: no default here.
    legacy = _legacy_target(ctx)
    prop = inputs.enum("target", choices, default=None if legacy else choices[0], label="Target", view=radio)
    if ctx.params.get("target") not in (None, *choices):
        return
    view = target_view(ctx, pred_field)
    if not gt_field or not ctx.dataset.has_field(pred_field):
        return
    scorable = len(view.exists(pred_field).exists(gt_field))
    if scorable:
        inputs.view("target_count", types.Notice(label=f"{scorable} sample(s) with a prediction and ground truth."))
    else:
        prop.invalid, prop.error_message = True, _nothing_to_score(view, pred_field, gt_field)
        inputs.view("target_count", types.Warning(label=prop.error_message))
