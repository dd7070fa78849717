"""Operator: reasoning segmentation of a text query, without demonstrations."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ._forms import progress_callback, prompt_template_input, with_hf_token

DELEGATE_ABOVE = 50  # the policy is slow on CPU: delegate all but small views


class SegmentByQuery(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_by_query",
            label="Segment by text query",
            description="The reasoning policy reads the query and each image, then segments what it means",
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
        inputs.str("text", required=True, label="Query", description="e.g. 'the animal that is hiding'")
        inputs.str("model", required=True, label="Model", description="Bundle directory or Hugging Face id")
        prompt_template_input(ctx, inputs)
        inputs.view_target(ctx)
        pred = inputs.str("pred_field", default="query_predictions", required=True, label="Output field")
        name = ctx.params.get("pred_field") or "query_predictions"
        overwrite = ctx.params.get("overwrite", False)
        resume = ctx.params.get("resume", False)
        if ctx.dataset is not None and ctx.dataset.has_field(name) and not (overwrite or resume):
            pred.invalid = True
            pred.error_message = f"{name!r} exists: tick overwrite or resume, or choose another name."
        inputs.bool("overwrite", default=False, label="Overwrite existing labels in the output field")
        inputs.bool("resume", default=False, label="Resume an interrupted run (skip finished targets)")
        inputs.int("batch_size", default=1, min=1, label="Batch size",
                   description="Targets per policy call (same labels; more uses more GPU memory)")
        return types.Property(inputs, view=types.View(label="Segment by text query"))

    def execute(self, ctx):
        from conceptseg.jobs import segment_by_query

        params = ctx.params
        summary = with_hf_token(
            ctx, segment_by_query,
            ctx.target_view(),
            params["text"],
            params.get("pred_field", "query_predictions"),
            params["model"],
            overwrite=params.get("overwrite", False),
            resume=params.get("resume", False),
            progress=progress_callback(ctx),
            prompt_template=params.get("prompt_template") or None,
            batch_size=int(params.get("batch_size") or 1),
        )
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return summary
