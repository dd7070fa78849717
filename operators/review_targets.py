"""Operators of the labeling loop: accept, reject, promote corrections, re-run (thin over conceptseg.runs.review)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _live
from ._forms import acceptance_problem, field_choice
from ._messages import accepted_sentence, promoted_sentence, rejected_sentence, rerun_sentence

DEMONSTRATION_METHOD = "conceptseg.segment_by_demonstration"


def reviewable_fields(dataset) -> list[str]:
    """Prediction fields written by a segment-by-demonstration run, newest first."""
    if dataset is None:
        return []
    found = []
    for key in dataset.list_runs():
        info = dataset.get_run_info(key)
        if info.config.method == DEMONSTRATION_METHOD and dataset.has_field(info.config.pred_field):
            found.append((info.timestamp, info.config.pred_field))
    return [field for _, field in sorted(found, reverse=True)]


def pred_field_input(inputs, ctx):
    """A dropdown of the runs' prediction fields; invalid with a sentence when there are none."""
    fields = reviewable_fields(ctx.dataset)
    choices = types.DropdownView()
    for f in fields:
        choices.add_choice(f, label=f)
    prop = inputs.enum("pred_field", fields, default=fields[0] if fields else None, required=True,
                       label="Predictions", description="The run whose predictions you review", view=choices)
    if not fields:
        prop.invalid = True
        prop.error_message = "No segment-by-demonstration run on this dataset yet: run Segment by demonstration first."
    return prop


def target_ids(ctx) -> list[str]:
    """The selected samples, else the sample open in the modal."""
    return list(ctx.selected or ([ctx.current_sample] if ctx.current_sample else []))


def ids_notice(inputs, ctx) -> None:
    ids = target_ids(ctx)
    if ids:
        inputs.view("ids_notice", types.Notice(label=f"{len(ids)} sample(s): the selection, or the open sample"))
    else:
        prop = inputs.str("ids", label="Sample ids", description="Select samples (or open one), or paste ids A,B",
                          required=True)
        prop.invalid = not ctx.params.get("ids")


def truth_field_input(inputs, ctx) -> None:
    """On a run made by Apply concept: the field accepted masks go into (asked when the run cannot tell)."""
    field = ctx.params.get("pred_field") or next(iter(reviewable_fields(ctx.dataset)), None)
    if not field or ctx.dataset is None:
        return
    from conceptseg.runs.review import ReviewError, applied_source, run_config, state, truth_field

    try:
        config = run_config(ctx.dataset, field)
    except ReviewError:
        return  # the predictions dropdown says why
    source = applied_source(config)
    if source is None:
        return
    try:
        known = truth_field(ctx.dataset, config, state(ctx.dataset, field))
    except ReviewError:
        known = None
    prop = inputs.str("mask_field", default=known, required=known is None, label="Mask field",
                      description=f"Where accepted masks of the saved concept {source['concept']!r} go on this "
                                  "dataset (a new field is created)")
    if known is None and not ctx.params.get("mask_field"):
        prop.invalid = True
        prop.error_message = (f"The concept's own field {source.get('mask_field')!r} is not on this dataset: "
                              "name the field for the accepted masks.")


def _mask_field(ctx) -> str | None:
    return ctx.params.get("mask_field") or None


def _ids(ctx) -> list[str]:
    return target_ids(ctx) or [i for i in (ctx.params.get("ids") or "").split(",") if i.strip()]


class _ReviewOperator(foo.Operator):
    name = label = description = ""
    writes_truth = False  # accept, reject (absent) and promote write ground truth into a mask field
    refuse_unacceptable = False  # the form refuses demonstrations and samples without this run's prediction

    @property
    def config(self):
        return foo.OperatorConfig(name=self.name, label=self.label, description=self.description, dynamic=True,
                                  execute_as_generator=True)  # the App gets the progress and the closing sentence

    def resolve_input(self, ctx):
        inputs = types.Object()
        pred_field_input(inputs, ctx)
        if self.writes_truth:
            truth_field_input(inputs, ctx)
        self.more_inputs(inputs, ctx)
        pred_field, ids = ctx.params.get("pred_field"), _ids(ctx)
        problem = acceptance_problem(ctx.dataset, pred_field, ids, replace=bool(ctx.params.get("replace")),
                                     mask_field=_mask_field(ctx)) if self.refuse_unacceptable and pred_field and ids \
            else None
        if problem:
            prop = inputs.view("not_acceptable", types.Error(label=problem))
            prop.invalid, prop.error_message = True, problem  # also the reason an SDK call is refused with
        return types.Property(inputs, view=types.View(label=self.label))

    def more_inputs(self, inputs, ctx):
        ids_notice(inputs, ctx)


def replace_input(inputs) -> None:
    inputs.bool("replace", default=False, label="Replace existing ground truth of this class",
                description="Without it, a sample that already has ground truth of the concept's class is refused")


class AcceptTargets(_ReviewOperator):
    name, label = "accept_targets", "Accept predictions"
    writes_truth = True
    description = "The predictions become ground truth under the concept's class; the samples join the demonstrations"

    refuse_unacceptable = True

    def more_inputs(self, inputs, ctx):
        ids_notice(inputs, ctx)
        replace_input(inputs)

    def execute(self, ctx):
        from conceptseg.runs.review import accept

        return _live.run(ctx, lambda _: accept(ctx.dataset, ctx.params["pred_field"], _ids(ctx),
                                               replace=bool(ctx.params.get("replace")), mask_field=_mask_field(ctx)),
                         title=self.label, dialog=False, done=accepted_sentence)


class RejectTargets(_ReviewOperator):
    name, label = "reject_targets", "Reject predictions"
    description = "Tag the predictions as wrong; if the concept is absent, the samples become negative demonstrations"

    def more_inputs(self, inputs, ctx):
        ids_notice(inputs, ctx)
        inputs.bool("absent", default=False, label="The concept is absent from these images",
                    description="They join the demonstrations as negatives (they teach background)")

    def execute(self, ctx):
        from conceptseg.runs.review import reject

        return _live.run(ctx, lambda _: reject(ctx.dataset, ctx.params["pred_field"], _ids(ctx),
                                               absent=bool(ctx.params.get("absent")), mask_field=_mask_field(ctx)),
                         title=self.label, dialog=False, done=rejected_sentence)


class PromoteCorrections(_ReviewOperator):
    name, label = "promote_corrections", "Promote corrected masks"
    writes_truth = True
    description = "Masks corrected in another field become ground truth and demonstrations, as an accept would"

    def more_inputs(self, inputs, ctx):
        field_choice(inputs, ctx, "from_field", "Corrections field", "Where the corrected masks are")
        ids_notice(inputs, ctx)
        replace_input(inputs)

    def execute(self, ctx):
        from conceptseg.runs.review import promote

        return _live.run(ctx, lambda _: promote(ctx.dataset, ctx.params["pred_field"], ctx.params["from_field"],
                                                _ids(ctx), replace=bool(ctx.params.get("replace")),
                                                mask_field=_mask_field(ctx)),
                         title=self.label, dialog=False, done=promoted_sentence)


class RerunReview(_ReviewOperator):
    name, label = "rerun_review", "Re-run with accepted samples"
    description = "Segment the targets not yet accepted again, with the accepted and negative samples as demonstrations"

    def more_inputs(self, inputs, ctx):
        """Refused in the form when nothing was accepted (or rejected as absent) since the last round."""
        from conceptseg.errors import ConceptSegError
        from conceptseg.runs.review import state

        field = ctx.params.get("pred_field") or next(iter(reviewable_fields(ctx.dataset)), None)
        try:
            record = state(ctx.dataset, field) if field else None
        except ConceptSegError:
            return  # the predictions dropdown says why
        if record is None:
            return
        last = record["rounds"][-1]
        if not set(record["accepted"] + record["negatives"]) - set(last["demonstrations"]):
            why = (f"Nothing was accepted, corrected or rejected as absent since round {last['round']}: accept some "
                   "targets (or reject them as absent) first, so the re-run has something to learn from.")
            prop = inputs.view("nothing_new", types.Warning(label=why))
            prop.invalid, prop.error_message = True, why  # also the reason an SDK call is refused with

    def execute(self, ctx):
        from conceptseg.runs.review import rerun

        def job(progress):
            out = rerun(ctx.dataset, ctx.params["pred_field"], progress=progress)
            keys = ("round", "route", "verification", "verified", "demonstrations", "segmented", "pred_field")
            return {k: out[k] for k in keys}

        return _live.run(ctx, job, title=self.label, start="Learning the concept again with the accepted samples",
                         unit="targets", done=rerun_sentence)

