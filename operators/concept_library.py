"""Operators of the concept library: Save concept, Apply concept (thin over conceptseg.runs.library)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from conceptseg.constants import ROUTE_NAMES

from . import _live
from ._forms import class_choice, field_choice, field_name_problem, masked_count, model_input, route_needs

ROUTES = ROUTE_NAMES
DELEGATE_ABOVE = 200


def _saved_concepts() -> list[dict]:
    from conceptseg.runs.library import list_concepts

    return list_concepts()


class SaveConcept(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="save_concept", label="Save concept",
                                  description="Keep the concept the selected demonstrations show, to apply it elsewhere",
                                  dynamic=True, execute_as_generator=True)

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
            from conceptseg.runs.library import NAME, exists

            if not NAME.fullmatch(value):
                name.invalid, name.error_message = True, "Use letters, digits, '_' and '-' only."
            elif exists(value) and not ctx.params.get("overwrite"):
                name.invalid, name.error_message = True, f"{value!r} is saved already: tick overwrite or rename."
        mask = field_choice(inputs, ctx, "mask_field", "Mask field", "Where the demonstrations' masks are",
                            "ground_truth")
        mask_field = ctx.params.get("mask_field") or mask.default
        if demos is not None and mask_field and not masked_count(demos, mask_field):
            mask.invalid = True
            mask.error_message = (f"None of the {len(ctx.selected)} selected demonstration(s) has a mask in "
                                  f"{mask_field!r}: choose the field that holds their masks.")
        elif demos is not None and mask_field:
            class_choice(inputs, demos, mask_field, [])
        inputs.enum("route", list(ROUTES), default="auto", label="Route", view=types.DropdownView())
        needed = route_needs(ctx.params.get("route") or "auto")
        model_input(inputs, ctx, "Bundle directory, zoo name or Hugging Face id (optional)", needed_for=needed)
        inputs.bool("overwrite", default=False, label="Replace a saved concept of that name")
        return types.Property(inputs, view=types.View(label="Save concept"))

    def execute(self, ctx):
        from conceptseg.runs.library import save

        p = ctx.params

        def job(_):
            record = save(p["name"], ctx.view.select(list(ctx.selected)), p["mask_field"],
                          classes=p.get("classes") or None, route=p.get("route", "auto"),
                          model=(p.get("model") or "").strip() or None, overwrite=bool(p.get("overwrite")))
            out = {k: record[k] for k in ("name", "route", "verification", "verified", "rule")}
            return {**out, "demonstrations": len(record.get("demonstrations") or [])}

        return _live.run(ctx, job, title="Save concept", reload=False, done=_saved_sentence,
                         start="Learning and verifying the concept from the selected demonstrations")


class ApplyConcept(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="apply_concept", label="Apply concept",
                                  description="Segment the view with a saved concept, refitted from its demonstrations",
                                  dynamic=True, allow_immediate_execution=True, allow_delegated_execution=True,
                                  execute_as_generator=True)

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
        newest = max(concepts, key=lambda c: str(c.get("date") or ""))["name"] if concepts else None
        prop = inputs.enum("name", [c["name"] for c in concepts], default=newest, required=True, label="Concept",
                           description="The newest saved concept by default", view=choices)
        if not concepts:
            prop.invalid = True
            prop.error_message = "No saved concepts yet: run Save concept (or `conceptseg concepts save`) first."
        inputs.view_target(ctx, default_target="CURRENT_VIEW")
        pred = inputs.str("pred_field", default="predictions", required=True, label="Output field")
        name = ctx.params.get("pred_field") or "predictions"
        bad_name = field_name_problem(name)
        if bad_name:
            pred.invalid, pred.error_message = True, bad_name
        elif ctx.dataset is not None and ctx.view.has_field(name) and not (ctx.params.get("overwrite") or ctx.params.get("resume")):
            pred.invalid = True
            pred.error_message = f"{name!r} exists: tick overwrite or resume, or choose another name."
        inputs.bool("overwrite", default=False, label="Overwrite existing labels in the output field")
        inputs.bool("resume", default=False, label="Resume an interrupted run (skip finished targets)")
        if ctx.dataset is not None:
            n = len(ctx.target_view())
            count = inputs.view("target_count", (types.Notice if n else types.Warning)(
                label=f"{n} target(s) to segment." if n else "The target view holds no sample: choose another one."))
            count.invalid = not n
        return types.Property(inputs, view=types.View(label="Apply concept"))

    def execute(self, ctx):
        from conceptseg.runs.library import apply

        p = ctx.params
        return _live.run(ctx, lambda progress: apply(
            p["name"], ctx.target_view(), p.get("pred_field", "predictions"), overwrite=bool(p.get("overwrite")),
            resume=bool(p.get("resume")), progress=progress),
            title="Apply concept", start="Fitting the saved concept to its demonstrations", unit="targets",
            done=_applied_sentence)


def _saved_sentence(record: dict) -> str:
    v = record["verification"]
    check = "unavailable" if v is None else f"{v:.3f}" + ("" if record["verified"] else ", unverified")
    return (f"Saved concept {record['name']!r} from {record['demonstrations']} demonstrations ({record['route']} "
            f"route, verification {check}); Apply concept segments it on any dataset.")


def _applied_sentence(summary: dict) -> str:
    failed = len(summary.get("failures") or [])
    return (f"Applied concept {summary['concept_name']!r} to {summary['segmented']} targets into "
            f"{summary['pred_field']!r} ({summary['route']} route)"
            + (f"; {failed} failed." if failed else "."))
