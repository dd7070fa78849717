"""Operators of the concept library: Save concept, Apply concept (thin over conceptseg.library)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ._forms import class_choice, field_choice, progress_callback

ROUTES = ("auto", "appearance", "object", "prototype", "reasoning-fast", "reasoning")
DELEGATE_ABOVE = 200


def _saved_concepts() -> list[dict]:
    from conceptseg.library import list_concepts

    return list_concepts()


class SaveConcept(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="save_concept", label="Save concept",
                                  description="Keep the concept the selected demonstrations show, to apply it elsewhere",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        demos = ctx.view.select(list(ctx.selected)) if ctx.selected else None
        if demos is None:
            prop = inputs.view("demo_count", types.Warning(label="Select the demonstration samples in the grid first."))
            prop.invalid = True
        else:
            inputs.view("demo_count", types.Notice(label=f"{len(ctx.selected)} demonstration(s) selected."))
        name = inputs.str("name", required=True, label="Name", description="letters, digits, '_' and '-'")
        value = ctx.params.get("name")
        if value:
            from conceptseg.library import NAME, exists

            if not NAME.fullmatch(value):
                name.invalid, name.error_message = True, "Use letters, digits, '_' and '-' only."
            elif exists(value) and not ctx.params.get("overwrite"):
                name.invalid, name.error_message = True, f"{value!r} is saved already: tick overwrite or rename."
        field_choice(inputs, ctx, "mask_field", "Mask field", "Where the demonstrations' masks are", "ground_truth")
        mask_field = ctx.params.get("mask_field")
        if demos is not None and mask_field:
            class_choice(inputs, demos, mask_field, [])
        inputs.enum("route", list(ROUTES), default="auto", label="Route", view=types.DropdownView())
        inputs.str("model", label="Model", description="Bundle directory, zoo name or Hugging Face id (optional)")
        inputs.bool("overwrite", default=False, label="Replace a saved concept of that name")
        return types.Property(inputs, view=types.View(label="Save concept"))

    def execute(self, ctx):
        from conceptseg.library import save

        p = ctx.params
        record = save(p["name"], ctx.view.select(list(ctx.selected)), p["mask_field"], classes=p.get("classes") or None,
                      route=p.get("route", "auto"), model=p.get("model") or None, overwrite=bool(p.get("overwrite")))
        return {k: record[k] for k in ("name", "route", "verification", "verified", "rule")}


class ApplyConcept(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="apply_concept", label="Apply concept",
                                  description="Segment the view with a saved concept, refitted from its demonstrations",
                                  dynamic=True, allow_immediate_execution=True, allow_delegated_execution=True)

    def resolve_execution_options(self, ctx):
        return foo.ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                                    default_choice_to_delegated=len(ctx.target_view()) > DELEGATE_ABOVE)

    def resolve_input(self, ctx):
        inputs = types.Object()
        concepts = _saved_concepts()
        choices = types.DropdownView()
        for c in concepts:
            v = c["verification"]
            choices.add_choice(c["name"], label=c["name"], description=(
                f"{c['route']}, verification {'n/a' if v is None else f'{v:.2f}'}, {c['demonstrations']} demos"))
        prop = inputs.enum("name", [c["name"] for c in concepts], required=True, label="Concept", view=choices)
        if not concepts:
            prop.invalid = True
            prop.error_message = "No saved concepts yet: run Save concept (or `conceptseg concepts save`) first."
        inputs.view_target(ctx)
        pred = inputs.str("pred_field", default="predictions", required=True, label="Output field")
        name = ctx.params.get("pred_field") or "predictions"
        if ctx.dataset is not None and ctx.view.has_field(name) and not (ctx.params.get("overwrite") or ctx.params.get("resume")):
            pred.invalid = True
            pred.error_message = f"{name!r} exists: tick overwrite or resume, or choose another name."
        inputs.bool("overwrite", default=False, label="Overwrite existing labels in the output field")
        inputs.bool("resume", default=False, label="Resume an interrupted run (skip finished targets)")
        return types.Property(inputs, view=types.View(label="Apply concept"))

    def execute(self, ctx):
        from conceptseg.library import apply

        p = ctx.params
        summary = apply(p["name"], ctx.target_view(), p.get("pred_field", "predictions"),
                        overwrite=bool(p.get("overwrite")), resume=bool(p.get("resume")), progress=progress_callback(ctx))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return summary
