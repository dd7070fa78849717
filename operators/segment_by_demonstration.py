"""Operator: learn a concept from demonstration samples and segment it across a view."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ._forms import field_choice, progress_callback

ROUTES = ("auto", "appearance", "reasoning")
# Views larger than this default to delegated execution (the App would wait too long).
DELEGATE_ABOVE = 200


class SegmentByDemonstration(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_by_demonstration",
            label="Segment by demonstration",
            description="Segment the concept that the demonstrations' masks show, in every target sample",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_execution_options(self, ctx):
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=len(ctx.target_view()) > DELEGATE_ABOVE,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        source = inputs.enum(
            "demo_source",
            ["selected", "tag"],
            default="selected" if ctx.selected else "tag",
            label="Demonstrations",
            description="The selected samples, or every sample with a tag",
            view=types.RadioGroup(),
        )
        if ctx.params.get("demo_source", source.default) == "tag":
            tags = sorted(ctx.dataset.distinct("tags")) if ctx.dataset else []
            inputs.enum("demo_tag", tags, required=True, label="Demonstration tag", view=types.DropdownView())
        else:
            n = len(ctx.selected)
            notice = f"{n} selected sample(s) will be the demonstrations." if n else (
                "Select the demonstration samples in the grid first, or use a tag."
            )
            prop = inputs.view("demo_count", types.Notice(label=notice) if n else types.Warning(label=notice))
            if not n:
                prop.invalid = True
        field_choice(inputs, ctx, "mask_field", "Mask field", "Where the demonstrations' masks are", "ground_truth")
        inputs.view_target(ctx)
        pred = inputs.str(
            "pred_field",
            default="predictions",
            required=True,
            label="Output field",
            description="A Segmentation field; instances go to <field>_instances",
        )
        overwrite = ctx.params.get("overwrite", False)
        resume = ctx.params.get("resume", False)
        name = ctx.params.get("pred_field") or "predictions"
        if ctx.dataset is not None and ctx.dataset.has_field(name) and not (overwrite or resume):
            pred.invalid = True
            pred.error_message = f"{name!r} exists: tick overwrite or resume, or choose another name."
        inputs.enum("route", list(ROUTES), default="auto", label="Route", view=types.DropdownView())
        model = inputs.str(
            "model",
            label="Model",
            description="Bundle directory or Hugging Face id; enables the reasoning route",
        )
        if ctx.params.get("route") == "reasoning" and not ctx.params.get("model"):
            model.invalid = True
            model.error_message = "The reasoning route needs a model: give a bundle directory or id."
        inputs.float("threshold", default=0.5, min=0.0, max=1.0, label="Verification threshold (IoU)")
        inputs.str("concept", default="concept", label="Concept name", description="Label of the predicted masks")
        inputs.bool("overwrite", default=False, label="Overwrite existing labels in the output field")
        inputs.bool("resume", default=False, label="Resume an interrupted run (skip finished targets)")
        return types.Property(inputs, view=types.View(label="Segment by demonstration"))

    def execute(self, ctx):
        from conceptseg.jobs import segment_by_demonstration

        params = ctx.params
        if params.get("demo_source", "selected") == "tag":
            demonstrations = ctx.dataset.match_tags(params["demo_tag"])
        else:
            demonstrations = ctx.dataset.select(ctx.selected)
        summary = segment_by_demonstration(
            demonstrations=demonstrations,
            targets=ctx.target_view(),
            mask_field=params["mask_field"],
            pred_field=params.get("pred_field", "predictions"),
            route=params.get("route", "auto"),
            threshold=params.get("threshold", 0.5),
            concept=params.get("concept", "concept"),
            overwrite=params.get("overwrite", False),
            resume=params.get("resume", False),
            model=params.get("model") or None,
            progress=progress_callback(ctx),
        )
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("route", label="Route")
        outputs.float("verification", label="Held-out IoU")
        outputs.str("rule", label="Rule")
        outputs.str("reason", label="Why this route")
        outputs.int("segmented", label="Targets segmented")
        return types.Property(outputs)
