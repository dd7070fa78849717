"""Operator: learn a concept from demonstration samples and segment it across a view."""

import queue
import threading
import time

import fiftyone.operators as foo
import fiftyone.operators.types as types

# The router's DEFAULT_THRESHOLD, from a module that imports nothing (the engine loads only inside execute).
from conceptseg.constants import VERIFY_THRESHOLD

from ._forms import class_choice, field_choice, progress_callback, prompt_template_input
from ._forms import selected_labels as _selected_labels

ROUTES = ("auto", "appearance", "object", "prototype", "reasoning-fast", "reasoning")
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
        if demos is not None and mask_field:
            class_choice(inputs, demos, mask_field, picked.classes)
        # The selected samples are the demonstrations, never targets: no "Current selection".
        inputs.view_target(ctx, default_target="CURRENT_VIEW", allow_selected_samples=False)
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
        if ctx.dataset is not None and ctx.view.has_field(name) and not (overwrite or resume):
            pred.invalid = True
            pred.error_message = f"{name!r} exists: tick overwrite or resume, or choose another name."
        inputs.enum("route", list(ROUTES), default="auto", label="Route", view=types.DropdownView())
        model = inputs.str(
            "model",
            label="Model",
            description="Bundle directory or Hugging Face id; enables the reasoning route",
        )
        if ctx.params.get("route") in ("reasoning", "reasoning-fast") and not ctx.params.get("model"):
            model.invalid = True
            model.error_message = "The reasoning routes need a model: give a bundle directory or id."
        prompt_template_input(ctx, inputs)
        inputs.float("threshold", default=VERIFY_THRESHOLD, min=0.0, max=1.0, label="Verification threshold (IoU)")
        inputs.str("concept", default="concept", label="Concept name",
                   description="Label of the predicted masks (default: the classes)")
        inputs.bool("overwrite", default=False, label="Overwrite existing labels in the output field")
        inputs.bool("resume", default=False, label="Resume an interrupted run (skip finished targets)")
        inputs.bool("resize_masks", default=False, label="Resize demonstration masks to their images",
                    description="Stretch (nearest) a demonstration mask of another size than its image instead "
                                "of stopping")
        inputs.bool("instances", default=True, label="Write instances (<field>_instances Detections)",
                    description="One Detection per connected component; untick to write the Segmentation only")
        inputs.int("batch_size", default=1, min=1, label="Batch size",
                   description="Targets per policy call on the reasoning route (same labels; more uses "
                               "more GPU memory, and an out-of-memory error halves it)")
        inputs.int("shards", default=1, min=1, label="Shards",
                   description="Above 1: the route is chosen now and the targets are queued as this many "
                               "delegated operations, run by `fiftyone delegated launch` workers")
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
        return types.Property(inputs, view=types.View(label="Segment by demonstration"))

    def execute(self, ctx):
        """Runs the job; launched from the App, as a stream of progress updates.

        FiftyOne 1.22.1 exhausts a generator in ``execute_operator`` and in delegated runs and
        keeps no result (``do_execute_operator(exhaust=True)`` returns None), and its plain
        ``/operators/execute`` route cannot serialise one; so only the App, which posts to
        ``/operators/execute/generator``, gets a generator. Every other caller (SDK, HTTP
        script, delegated worker) gets the summary dict as before.
        """
        if ctx.delegated or not _from_app(ctx):
            summary = self._segment(ctx, progress_callback(ctx))
            if not ctx.delegated:
                ctx.ops.reload_dataset()
            return summary
        return self._segment_live(ctx)

    def _segment(self, ctx, progress):
        from conceptseg.errors import ConceptSegError
        from conceptseg.jobs import segment_by_demonstration

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
            concept=params.get("concept", "concept"),
            overwrite=params.get("overwrite", False),
            resume=params.get("resume", False),
            model=params.get("model") or None,
            progress=progress,
            prompt_template=params.get("prompt_template") or None,
            batch_size=int(params.get("batch_size") or 1),
            resize_masks=bool(params.get("resize_masks", False)),
            instances=bool(params.get("instances", True)),
            # One shard is this run itself; more are queued for delegated workers.
            shards=int(params["shards"]) if (params.get("shards") or 1) > 1 else None,
        )

    def _segment_live(self, ctx):
        """Runs the job in a worker thread and yields the App's progress bar as targets finish."""
        from conceptseg.errors import ConceptSegError

        updates: queue.Queue = queue.Queue()
        outcome: dict = {}
        last_put = [0.0]

        def report(done: int, total: int) -> None:
            # At most four updates a second reach the App; the last one always does.
            now = time.monotonic()
            if done == total or now - last_put[0] >= 0.25:
                last_put[0] = now
                updates.put((done, total))

        def work() -> None:
            try:
                outcome["summary"] = self._segment(ctx, report)
            except Exception as error:  # handed to the generator, which reports or re-raises it
                outcome["error"] = error
            finally:
                updates.put(None)

        worker = threading.Thread(target=work, name="conceptseg-segment", daemon=True)
        worker.start()
        yield ctx.ops.set_progress(progress=0.0, label="Learning the concept from the demonstrations")
        while (update := updates.get()) is not None:
            done, total = update
            yield ctx.ops.set_progress(progress=done / max(total, 1), label=f"{done}/{total} targets")
        worker.join()
        error = outcome.get("error")
        if isinstance(error, ConceptSegError):
            yield ctx.ops.notify(str(error), variant="error")
            return
        if error is not None:
            raise error
        summary = outcome["summary"]
        yield ctx.ops.reload_dataset()
        if summary.get("queued"):
            yield ctx.ops.notify(
                f"Queued {summary['shards']} shards with the {summary['route']} route: start "
                "`fiftyone delegated launch` workers to run them.", variant="success")
            return
        yield ctx.ops.notify(
            f"Segmented {summary['segmented']} targets with the {summary['route']} route "
            f"(verification {_score(summary['verification'])}).",
            variant="success",
        )

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("route", label="Route")
        outputs.float("verification", label="Held-out IoU")
        outputs.str("rule", label="Rule")
        outputs.str("reason", label="Why this route")
        outputs.int("segmented", label="Targets segmented")
        return types.Property(outputs)


def _from_app(ctx) -> bool:
    """Whether the request came from the App's own execution context."""
    # The 1.22.1 App sends its whole session context with every run, including the grid's
    # sample selection style; execute_operator and HTTP scripts send only what they are given.
    # (The App's prompt_id is not set for a plain Execute, and hidden form defaults are not sent.)
    return "sample_selection_style" in ctx.request_params


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
    without = demos.exists(mask_field, False).count() if mask_field and demos.has_field(mask_field) else 0
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
