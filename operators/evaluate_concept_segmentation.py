"""Operator: score predicted masks against ground truth with the field's metrics."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ._forms import field_choice, progress_callback


class EvaluateConceptSegmentation(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_concept_segmentation",
            label="Evaluate concept segmentation",
            description="IoU, gIoU, cIoU, Fω, Sα, Eφ, MAE, Dice, BER and the paper's fg/bg mIoU per sample",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        field_choice(inputs, ctx, "pred_field", "Predictions", "The predicted masks", "predictions")
        field_choice(inputs, ctx, "gt_field", "Ground truth", "The reference masks", "ground_truth")
        if ctx.params.get("pred_field") and ctx.params.get("pred_field") == ctx.params.get("gt_field"):
            inputs.view("same", types.Warning(label="Predictions and ground truth are the same field."))
        inputs.str("eval_key", label="Evaluation key", description="Default: eval_<predictions field>")
        inputs.bool("paper_protocol", default=False, label="Score at 600x600 (the paper's protocol)")
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Evaluate concept segmentation"))

    def execute(self, ctx):
        from conceptseg.evaluation import evaluate

        params = ctx.params
        report = evaluate(
            ctx.target_view(),
            params["pred_field"],
            params["gt_field"],
            eval_key=params.get("eval_key") or None,
            size=600 if params.get("paper_protocol") else None,
            progress=progress_callback(ctx),
        )
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        # Per-sample values are on the samples; the App needs only the aggregate.
        return {
            "metrics": report["metrics"],
            "scored": len(report["samples"]),
            "missing_gt": len(report["missing_gt"]),
            "missing_pred": len(report["missing_pred"]),
        }
