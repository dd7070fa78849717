"""Operator: Correct the most doubtful in Label Studio — send a run's most doubtful targets, then bring them home.

Thin over :mod:`conceptseg.runs.review.annotate` (the CLI's ``conceptseg annotate`` and
``conceptseg annotate --load``). The server's address and key are the plugin's secrets
FIFTYONE_LABELSTUDIO_URL and FIFTYONE_LABELSTUDIO_API_KEY (declared in fiftyone.yml; the
environment in FiftyOne OSS), else FiftyOne's annotation config; never shown or logged.
"""

import os

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _live
from ._messages import annotation_sent_sentence, corrections_loaded_sentence
from .review_targets import pred_field_input, reviewable_fields, truth_field_input

URL_SECRET, KEY_SECRET = "FIFTYONE_LABELSTUDIO_URL", "FIFTYONE_LABELSTUDIO_API_KEY"


def secret(ctx, name: str) -> str | None:
    """A plugin secret's value, or None. Never log or return it in a result."""
    value = ctx.secrets.get(name)
    # A secret first resolved on access comes back as FiftyOne's secret object, later as a str.
    return getattr(value, "value", value) or None


def open_run_of(ctx, pred_field: str | None) -> dict | None:
    """The run's annotation run still out in Label Studio, or None (also when the run cannot be read)."""
    from conceptseg.errors import ConceptSegError
    from conceptseg.runs.review import annotate, state

    if not pred_field or ctx.dataset is None:
        return None
    try:
        return annotate.open_run(state(ctx.dataset, pred_field))
    except ConceptSegError:
        return None  # the predictions dropdown says why


def _key_problem(ctx) -> str | None:
    """Why no API key is at hand (the form cannot ask the server cheaply; the run names other problems)."""
    import fiftyone as fo

    configured = (fo.annotation_config.backends.get("labelstudio") or {}).get("api_key")
    if secret(ctx, KEY_SECRET) or os.environ.get(KEY_SECRET) or configured:
        return None
    return (f"No Label Studio API key: set the plugin secret {KEY_SECRET} (in FiftyOne OSS, the environment "
            "variable of that name where the App runs), or api_key in FiftyOne's annotation config.")


class CorrectMostDoubtful(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="correct_most_doubtful", label="Correct the most doubtful in Label Studio",
            description="Send a run's most doubtful targets to Label Studio pre-annotated with their predictions; "
                        "then bring the corrected masks home as demonstrations",
            dynamic=True, execute_as_generator=True,  # the App gets the closing sentence
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        pred_field_input(inputs, ctx)
        field = ctx.params.get("pred_field") or next(iter(reviewable_fields(ctx.dataset)), None)
        pending = open_run_of(ctx, field)
        steps = types.RadioGroup()
        steps.add_choice("send", label="Send the most doubtful targets to Label Studio")
        steps.add_choice("load", label="Bring the corrections home")
        inputs.enum("step", steps.values(), default="load" if pending else "send", required=True, label="Step",
                    view=steps)
        step = ctx.params.get("step") or ("load" if pending else "send")
        if step == "send":
            self._send_inputs(inputs, ctx, pending)
        else:
            self._load_inputs(inputs, ctx, pending)
        problem = _key_problem(ctx)
        if problem:
            prop = inputs.view("no_key", types.Error(label=problem))
            prop.invalid, prop.error_message = True, problem  # also the reason an SDK call is refused with
        return types.Property(inputs, view=types.View(label="Correct the most doubtful in Label Studio"))

    def _send_inputs(self, inputs, ctx, pending):
        from conceptseg.runs.review.annotate import DEFAULT_TOP

        prop = inputs.int("top", default=DEFAULT_TOP, required=True, label="How many",
                          description="The most doubtful targets not yet accepted, most doubtful first")
        top = ctx.params.get("top", DEFAULT_TOP)
        if top is not None and int(top) < 1:
            prop.invalid, prop.error_message = True, "Send at least one target."
        if pending:
            why = (f"{len(pending['ids'])} targets are in Label Studio already (annotation run "
                   f"{pending['anno_key']!r}, sent {pending['sent']}): bring them home first.")
            view = inputs.view("pending", types.Warning(label=why))
            view.invalid, view.error_message = True, why
        truth_field_input(inputs, ctx)

    def _load_inputs(self, inputs, ctx, pending):
        if pending is None:
            why = "Nothing of this run is out in Label Studio: send the most doubtful targets first."
            view = inputs.view("nothing_out", types.Warning(label=why))
            view.invalid, view.error_message = True, why
            return
        inputs.view("out", types.Notice(label=f"{len(pending['ids'])} targets in annotation run "
                                              f"{pending['anno_key']!r} (sent {pending['sent']})"))
        truth_field_input(inputs, ctx)
        inputs.bool("replace", default=False, label="Replace existing ground truth of this class",
                    description="Without it, a sample that already has ground truth of the concept's class is refused")
        inputs.bool("cleanup", default=False, label="Delete the Label Studio project after loading")

    def execute(self, ctx):
        from conceptseg.runs.review import annotate

        params = ctx.params
        field, mask_field = params["pred_field"], params.get("mask_field") or None
        url, api_key = secret(ctx, URL_SECRET), secret(ctx, KEY_SECRET)
        if params.get("step", "send") == "send":
            def job(_):
                return annotate.send(ctx.dataset, field, top=int(params.get("top") or annotate.DEFAULT_TOP),
                                     url=url, api_key=api_key, mask_field=mask_field)

            return _live.run(ctx, job, title="Correct the most doubtful in Label Studio",
                             start="Uploading to Label Studio", done=annotation_sent_sentence)

        def job(_):
            return annotate.load(ctx.dataset, field, url=url, api_key=api_key, cleanup=bool(params.get("cleanup")),
                                 replace=bool(params.get("replace")), mask_field=mask_field)

        return _live.run(ctx, job, title="Correct the most doubtful in Label Studio",
                         start="Loading the corrections from Label Studio", done=corrections_loaded_sentence)
