"""Operator: delete a segmentation run with its fields and the mask files it wrote."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _live

SEGMENT_METHODS = ("conceptseg.segment_by_demonstration", "conceptseg.segment_by_query")


def run_fields(dataset) -> list[str]:
    """Prediction fields of the dataset's conceptseg segmentation runs (read from the run records)."""
    if dataset is None:
        return []
    fields = []
    for key in dataset.list_runs():
        config = dataset.get_run_info(key).config
        if getattr(config, "method", None) in SEGMENT_METHODS and config.pred_field not in fields:
            fields.append(config.pred_field)
    return sorted(fields)


class DeleteConceptRun(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="delete_concept_run",
            label="Delete concept segmentation run",
            description="Delete a run's record, its prediction fields, their evaluations and its mask files",
            dynamic=True,
            execute_as_generator=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = run_fields(ctx.dataset)
        choices = types.DropdownView()
        for f in fields:
            choices.add_choice(f, label=f)
        prop = inputs.enum("pred_field", fields, required=True, default=fields[0] if fields else None,
                           label="Run (prediction field)", view=choices)
        if not fields:
            prop.invalid = True
            prop.error_message = "This dataset has no concept segmentation run to delete."
        else:
            field = ctx.params.get("pred_field") or fields[0]
            inputs.view("what", types.Warning(
                label=f"Deletes {field!r}, {field + '_instances'!r} when present, their concept evaluations, "
                      "the run record and the mask files the run wrote. Nothing else is touched."))
        return types.Property(inputs, view=types.View(label="Delete concept segmentation run"))

    def execute(self, ctx):
        from conceptseg.runs.delete import delete_run

        return _live.run(ctx, lambda _: delete_run(ctx.dataset, ctx.params["pred_field"]), title="Delete run",
                         dialog=False, done=_deleted_sentence)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("fields", types.String(), label="Fields deleted")
        outputs.int("files", label="Mask files deleted")
        return types.Property(outputs)


def _deleted_sentence(report: dict) -> str:
    fields = ", ".join(repr(f) for f in report.get("fields") or []) or "no field"
    evaluations = len(report.get("evaluations") or [])
    return (f"Deleted {fields}, {len(report.get('run_keys') or [])} run record(s)"
            + (f", {evaluations} evaluation(s)" if evaluations else "") + f" and {report.get('files', 0)} mask file(s).")
