"""Operator: learn a concept from demonstration samples and segment it across a view."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

# The router's DEFAULT_THRESHOLD, from a module that imports nothing (the engine loads only inside execute).
from conceptseg.constants import ROUTE_NAMES, VERIFY_THRESHOLD

from . import _live
from ._forms import class_choice, concept_default, field_choice, field_name_problem, masked_count, model_input
from ._forms import prompt_template_input, route_needs
from ._forms import selected_labels as _selected_labels

ROUTES = ROUTE_NAMES
# Views larger than this default to delegated execution (the App would wait too long).
DELEGATE_ABOVE = 200
# Appearance route on a CPU, per 128-512 px target (demo: 0.04 s) and to fit + verify (demo: 2.7 s);
# used for the estimate until a run on this dataset has measured its own.
APPEARANCE_SECONDS, FIT_SECONDS = 0.05, 3.0
# Object route on a CPU per 128 px target (benchmarks/concepts.py: candidates, features, forest).
OBJECT_SECONDS = 0.1


class SegmentByDemonstration(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_by_demonstration",
            label="Segment by demonstration",
            description="Segment the concept that the demonstrations' masks show, in every target sample",
            dynamic=True,
            # Immediate runs from the App stream progress; see execute for who gets a generator.
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
        picked = _selected_labels(ctx)
        source = inputs.enum(
            "demo_source",
            ["selected", "tag"],
            default="selected" if ctx.selected or ctx.selected_labels else "tag",
            label="Demonstrations",
            description="The selected samples (or the samples of the selected labels), or every sample with a tag",
            view=types.RadioGroup(),
        )
        by_tag = ctx.params.get("demo_source", source.default) == "tag"
        if by_tag:
            tags = sorted(ctx.view.distinct("tags")) if ctx.dataset else []
            inputs.enum("demo_tag", tags, required=True, label="Demonstration tag", view=types.DropdownView())
        mask = field_choice(
            inputs, ctx, "mask_field", "Mask field", "Where the demonstrations' masks are",
            picked.field or "ground_truth",
        )
        if picked.error:
            mask.invalid, mask.error_message = True, picked.error
        mask_field = ctx.params.get("mask_field") or mask.default
        demos = _demonstrations(ctx, by_tag)
        if demos is not None or not by_tag:
            _demonstration_notice(inputs, demos, mask_field, ctx.dataset)
        classes = None
        if demos is not None and mask_field:
            picker = class_choice(inputs, demos, mask_field, picked.classes)
            classes = ctx.params.get("classes") or (picker.default if picker is not None else None)
        # The selected samples are the demonstrations, never targets: no "Current selection".
        inputs.view_target(ctx, default_target="CURRENT_VIEW", allow_selected_samples=False)
        name = _output_field(inputs, ctx)
        inputs.enum("route", list(ROUTES), default="auto", label="Route", view=types.DropdownView())
        route = ctx.params.get("route") or "auto"
        model_input(inputs, ctx, "Bundle directory, Hugging Face id or zoo name; enables the prototype, exemplar "
                                 "and reasoning routes", needed_for=route_needs(route))
        prompt_template_input(ctx, inputs)
        inputs.float("threshold", default=VERIFY_THRESHOLD, min=0.0, max=1.0, label="Verification threshold (IoU)")
        inputs.str("concept", default=concept_default(demos, classes), label="Concept name",
                   description="Label of the predicted masks (default: the classes)")
        inputs.bool("overwrite", default=False, label="Overwrite existing labels in the output field")
        inputs.bool("resume", default=False, label="Resume an interrupted run (skip finished targets)")
        inputs.bool("resize_masks", default=False, label="Resize demonstration masks to their images",
                    description="Stretch (nearest) a demonstration mask of another size than its image instead "
                                "of stopping")
        inputs.bool("instances", default=True, label=f"Also write instances to {name + '_instances'!r}",
                    description="One Detection per connected component; untick to write the Segmentation only "
                                "(the CLI's --no-instances)")
        inputs.int("batch_size", default=1, min=1, label="Batch size",
                   description="Targets per policy call on the reasoning route (same labels; more uses "
                               "more GPU memory, and an out-of-memory error halves it)")
        inputs.int("shards", default=1, min=1, label="Shards",
                   description="Above 1: the route is chosen now and the targets are queued as this many "
                               "delegated operations, run by `fiftyone delegated launch` workers")
        _targets_notice(inputs, ctx, demos)
        return types.Property(inputs, view=types.View(label="Segment by demonstration"))

    def execute(self, ctx):
        """Runs the job: in the App as a progress dialog that ends in one sentence (see ``_live``)."""
        return _live.run(ctx, lambda progress: self._segment(ctx, progress), title="Segment by demonstration",
                         start="Learning the concept from the demonstrations", unit="targets", done=_done)

    def _segment(self, ctx, progress):
        from conceptseg.errors import ConceptSegError
        from conceptseg.runs.jobs import segment_by_demonstration

        from ._forms import with_hf_token

        params = ctx.params
        picked = _selected_labels(ctx)
        if picked.error:
            raise ConceptSegError(picked.error)
        demonstrations = _demonstrations(ctx, params.get("demo_source", "selected") == "tag")
        mask_field = params.get("mask_field") or picked.field
        if not mask_field:
            raise ConceptSegError("Choose the mask field that holds the demonstrations' masks (mask_field).")
        return with_hf_token(  # model downloads use the HF_TOKEN secret
            ctx, segment_by_demonstration,
            demonstrations=demonstrations if demonstrations is not None else ctx.view.limit(0),
            targets=ctx.target_view(),
            mask_field=mask_field,
            classes=params.get("classes") or picked.classes or None,
            pred_field=params.get("pred_field", "predictions"),
            route=params.get("route", "auto"),
            threshold=params.get("threshold", VERIFY_THRESHOLD),
            concept=params.get("concept") or "concept",
            overwrite=params.get("overwrite", False),
            resume=params.get("resume", False),
            model=_model(params.get("model")),
            progress=progress,
            prompt_template=params.get("prompt_template") or None,
            batch_size=int(params.get("batch_size") or 1),
            resize_masks=bool(params.get("resize_masks", False)),
            instances=bool(params.get("instances", True)),
            # One shard is this run itself; more are queued for delegated workers.
            shards=int(params["shards"]) if (params.get("shards") or 1) > 1 else None,
        )

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("route", label="Route")
        outputs.float("verification", label="Held-out IoU")
        outputs.str("rule", label="Rule")
        outputs.str("reason", label="Why this route")
        outputs.int("segmented", label="Targets segmented")
        return types.Property(outputs)


def _done(summary: dict) -> str:
    """The sentence the App shows when the run ends: what was written where, how many, how."""
    if summary.get("queued"):
        return (f"Queued {summary['shards']} shards with the {summary['route']} route: start "
                "`fiftyone delegated launch` workers to run them.")
    where = repr(summary["pred_field"])
    if summary.get("instances_field"):
        where += f" (instances in {summary['instances_field']!r})"
    failed = len(summary.get("failures") or [])
    verification = _score(summary["verification"])
    if summary["verification"] is not None and not summary.get("verified"):
        verification += ", below the threshold: unverified"
    skipped = f", {summary['skipped']} already done" if summary.get("skipped") else ""
    return (f"Segmented {summary['segmented']} targets with the {summary['route']} route (verification "
            f"{verification}) into {where}{skipped}" + (f"; {failed} failed (the Concept Rules panel says why)."
                                                       if failed else "."))


def _model(value):
    """The model field's value, refused in one sentence when it names nothing loadable (the form says so too)."""
    from conceptseg.errors import ConceptSegError

    from ._forms import model_problem

    value = (value or "").strip() or None
    problem = model_problem(value)
    if problem:
        raise ConceptSegError(problem)
    return value


def _demonstrations(ctx, by_tag: bool):
    """The demonstrations the form points at, read through the current view (its filters count)."""
    if ctx.dataset is None:
        return None
    if by_tag:
        tag = ctx.params.get("demo_tag")
        return ctx.view.match_tags(tag) if tag else None
    ids = list(ctx.selected) or sorted({label["sample_id"] for label in ctx.selected_labels or []})
    return ctx.view.select(ids) if ids else None


def _demonstration_notice(inputs, demos, mask_field, dataset) -> None:
    """How many demonstrations there are, and how many are negatives; invalid when none."""
    n = demos.count() if demos is not None else 0
    if not n:
        prop = inputs.view("demo_count", types.Warning(
            label="Select the demonstration samples (or labels) in the grid first, or use a tag."))
        prop.invalid = True
        return
    masked = masked_count(demos, mask_field) if mask_field else 0
    if mask_field and not masked:
        prop = inputs.view("demo_count", types.Warning(
            label=f"None of the {n} demonstration(s) has a mask in {mask_field!r}: choose the field that holds "
                  "their masks (a demonstration without one only teaches background)."))
        prop.invalid = True
        return
    without = n - masked
    negatives = (f"; {without} without a label there are negatives (the concept is absent: they teach "
                 "background)") if without else ""
    inputs.view("demo_count", types.Notice(label=f"{n} demonstration(s), masks from {mask_field!r}{negatives}."))


def _estimate(ctx, n_targets: int) -> str:
    """A rough time for the run: appearance per target, or the model's, best measured here."""
    route, model = ctx.params.get("route", "auto"), ctx.params.get("model")
    appearance = _measured_seconds(ctx.dataset, "appearance") or APPEARANCE_SECONDS
    measured = _measured_seconds(ctx.dataset, route if route.startswith("reasoning") else "reasoning")
    with_model = f"~{measured:.1f} s" if measured else "seconds (GPU) to minutes (CPU)"
    if route.startswith("reasoning"):
        text = f"Estimate: ~{n_targets} targets × {with_model} per target with the model"
    elif route == "object":
        per = _measured_seconds(ctx.dataset, "object") or OBJECT_SECONDS
        text = f"Estimate: ~{n_targets} targets × ~{per:.2f} s (object) + ~{FIT_SECONDS:.0f} s to fit and verify"
    elif route == "auto" and model:
        text = (f"Estimate: ~{n_targets} targets × ~{appearance:.2f} s if the appearance route verifies, "
                f"else × {with_model} per target with the model")
    else:
        text = (f"Estimate: ~{n_targets} targets × ~{appearance:.2f} s (appearance) "
                f"+ ~{FIT_SECONDS:.0f} s to fit and verify")
    if n_targets > DELEGATE_ABOVE:
        text += f". Over {DELEGATE_ABOVE} targets, scheduling (delegated) is the default."
    return text


def _measured_seconds(dataset, route: str):
    """Seconds per target of this dataset's newest finished run on ``route``, if any."""
    runs = []
    for key in dataset.list_runs():
        info = dataset.get_run_info(key)
        if getattr(info.config, "route", None) == route and info.config.method.startswith("conceptseg.segment"):
            runs.append((info.timestamp, key))
    for _, key in sorted(runs, reverse=True):
        results = dataset.load_run_results(key)
        seconds = getattr(results, "summary", {}).get("seconds_per_target") if results else None
        if seconds:
            return seconds
    return None


def _score(value) -> str:
    return "unavailable" if value is None else f"{value:.3f}"


def _output_field(inputs, ctx) -> str:
    """The output field's input, refused in the form when its name is not allowed or it exists already."""
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
    bad_name = field_name_problem(name)
    if bad_name:
        pred.invalid, pred.error_message = True, bad_name
    elif ctx.dataset is not None and ctx.view.has_field(name) and not (overwrite or resume):
        pred.invalid = True
        pred.error_message = f"{name!r} exists: tick overwrite or resume, or choose another name."
    return name


def _targets_notice(inputs, ctx, demos) -> None:
    """How many targets the run will segment and how long it may take; refused when there are none."""
    if ctx.dataset is not None:
        targets = ctx.target_view()
        n = targets.exclude(demos.values("id")).count() if demos is not None else targets.count()
        if n or demos is None:
            inputs.view("estimate", types.Notice(label=f"{n} target(s). " + _estimate(ctx, n)))
        else:  # demonstrations are never their own targets, so the run would have nothing to do
            empty = inputs.view("estimate", types.Warning(
                label="No targets: the target view holds only the demonstrations. Choose the current "
                      "view or the dataset."))
            empty.invalid = True
