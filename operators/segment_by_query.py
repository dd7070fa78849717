"""Operator: reasoning segmentation of a text query, without demonstrations."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _live
from ._forms import field_name_problem, model_input, prompt_template_input, with_hf_token

DELEGATE_ABOVE = 50  # the policy is slow on CPU: delegate all but small views


class SegmentByQuery(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_by_query",
            label="Segment by text query",
            description="The reasoning policy reads the query and each image, then segments what it means",
            dynamic=True,
            execute_as_generator=True,
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
        model_input(inputs, ctx, "Bundle directory, Hugging Face id or zoo name", required=True)
        prompt_template_input(ctx, inputs)
        inputs.view_target(ctx)
        pred = inputs.str("pred_field", default="query_predictions", required=True, label="Output field")
        name = ctx.params.get("pred_field") or "query_predictions"
        overwrite = ctx.params.get("overwrite", False)
        resume = ctx.params.get("resume", False)
        bad_name = field_name_problem(name)
        if bad_name:
            pred.invalid, pred.error_message = True, bad_name
        elif ctx.dataset is not None and ctx.dataset.has_field(name) and not (overwrite or resume):
            pred.invalid = True
            pred.error_message = f"{name!r} exists: tick overwrite or resume, or choose another name."
        inputs.bool("overwrite", default=False, label="Overwrite existing labels in the output field")
        inputs.bool("resume", default=False, label="Resume an interrupted run (skip finished targets)")
        inputs.int("batch_size", default=1, min=1, label="Batch size",
                   description="Targets per policy call (same labels; more uses more GPU memory)")
        return types.Property(inputs, view=types.View(label="Segment by text query"))

    def execute(self, ctx):
        from conceptseg.runs.jobs import segment_by_query

        params = ctx.params
        return _live.run(ctx, lambda progress: with_hf_token(
            ctx, segment_by_query,
            ctx.target_view(),
            params["text"],
            params.get("pred_field", "query_predictions"),
            params["model"].strip(),
            overwrite=params.get("overwrite", False),
            resume=params.get("resume", False),
            progress=progress,
            prompt_template=params.get("prompt_template") or None,
            batch_size=int(params.get("batch_size") or 1),
        ), title="Segment by text query", start="Loading the model", unit="targets", done=_done)


def _done(summary: dict) -> str:
    failed = len(summary.get("failures") or [])
    return (f"Segmented {summary.get('segmented')} targets for the query into {summary.get('pred_field')!r}"
            + (f"; {failed} failed." if failed else "."))
