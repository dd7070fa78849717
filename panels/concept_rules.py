"""Concept Rules panel: a run's induced rule, its reasoning and verification, next to the masks."""

from __future__ import annotations

import os

import fiftyone.operators as foo
import fiftyone.operators.types as types
from bson import ObjectId

from .concept_evaluation import REFRESH_MS, fingerprint, friendly, metric_field
from ._facts import (MAX_THUMBNAILS, evaluation_for, media_url, next_open, review_facts, review_walk, run_facts,
                     sample_facts, segmentation_runs, walk_position)
from . import _context as app
from ._markdown import review_markdown, run_markdown, sample_markdown, walk_markdown


NO_RUNS = (
    "No ConceptSeg run on this dataset yet. Select a few samples whose masks show a concept and run "
    "**Segment by demonstration** (or **Segment by text query**) from the operator browser; "
    "the rule it induces will show here."
)


class ConceptRules(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="concept_rules",
            label="Concept Rules",
            surfaces="grid modal",
            icon="rule",
            help_markdown="The rule a ConceptSeg run induced, its verification, and the reasoning per sample.",
        )

    def on_load(self, ctx):
        """Lists the runs and loads the chosen one: a run new since the last look, else the chosen, else the newest."""
        runs = segmentation_runs(ctx.dataset)
        chosen, known = ctx.panel.state.run_key, ctx.panel.state.runs
        new = [key for key in runs if known is not None and key not in known]
        focus = app.focus(ctx) if ctx.current_sample and not chosen else None  # the modal follows the grid's run
        ctx.panel.state.runs = runs
        ctx.panel.state.run_key = next((k for k in (*new, focus, chosen) if k in runs), runs[0] if runs else None)
        self._load_run(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.run_key = None
        ctx.panel.state.runs = None
        self.on_load(ctx)

    def on_change_current_sample(self, ctx):
        # The run's choice and the whole run again, never what the event's state says. FiftyOne 1.22.1's App
        # marks a panel loaded as soon as on_load's reply arrives, but only queues the state patches in it, so
        # an event in between carries the state from before on_load: no run key, no runs. The modal opened
        # by Review gets one (its selection or sample settling a moment after it opens) while its on_load's
        # patches wait, more often the busier the browser. Read as "no run", that event rendered "No
        # ConceptSeg run", landed last, and stamped the dataset's fingerprint, so check_fresh never redrew it.
        self.on_load(ctx)

    def on_change_selected(self, ctx):
        self.on_load(ctx)

    def check_fresh(self, ctx):
        """Every REFRESH_MS: reloads when a run, evaluation or review step changed the dataset (any process)."""
        self.on_load(ctx)

    def execute(self, ctx):
        # A timer tick when nothing changed sends nothing back: no state, no render.
        if ctx.params.get("__method__") == "check_fresh" and fingerprint(ctx.dataset) == ctx.panel.state.fingerprint:
            return None
        return super().execute(ctx)

    @friendly
    def on_change_run(self, ctx):
        ctx.panel.state.run_key = ctx.params.get("value")
        if not ctx.current_sample:
            app.set_focus(ctx, ctx.panel.state.run_key)
        self._load_run(ctx)

    def show_prediction_vs_gt(self, ctx):
        """Turns on exactly the prediction and its ground truth in the grid and modal."""
        run = self._run(ctx)
        if run is None:
            return
        fields = [f for f in (run["pred_field"], ctx.panel.state.gt_field) if f]
        ctx.ops.set_active_fields(fields=fields)

    def open_worst(self, ctx):
        """Shows the evaluated samples, lowest IoU first."""
        if self._run(ctx) is None or not ctx.panel.state.eval_key:
            return
        iou = metric_field(ctx.panel.state.eval_key, "iou")
        ctx.ops.set_view(view=ctx.dataset.exists(iou).sort_by(iou))

    @friendly
    def open_review(self, ctx):
        """Shows the round's targets most doubtful first and opens the first one not yet decided, on the run's field."""
        run = self._run(ctx)
        if run is None:
            return
        walk = review_walk(ctx.dataset, run["pred_field"])
        if not walk:
            ctx.ops.notify("This run has no target left to review: every one is a demonstration now.")
            return
        first = next_open(walk, None) or walk[0]["id"]
        app.set_focus(ctx, run["key"])
        fields = [f for f in (run["pred_field"], ctx.panel.state.gt_field) if f]
        if app.show_by_default(ctx.dataset, fields):
            ctx.ops.reload_dataset()
        ctx.ops.set_active_fields(fields=fields)
        ctx.ops.set_view(view=ctx.dataset.select([r["id"] for r in walk], ordered=True))
        ctx.ops.open_sample(id=first)

    @friendly
    def walk_previous(self, ctx):
        """Opens the target before this one in doubt order."""
        self._walk_to(ctx, -1)

    @friendly
    def walk_next(self, ctx):
        """Opens the target after this one in doubt order, decided or not."""
        self._walk_to(ctx, +1)

    def _walk_to(self, ctx, step: int) -> None:
        run = self._run(ctx)
        if run is None:
            return
        walk = [r["id"] for r in review_walk(ctx.dataset, run["pred_field"])]
        if ctx.current_sample not in walk:
            return
        k = walk.index(ctx.current_sample) + step
        if 0 <= k < len(walk):
            self._open(ctx, walk, walk[k])

    @staticmethod
    def _open(ctx, walk: list[str], sample_id: str) -> None:
        if not len(ctx.view.select(sample_id)):  # the modal shows samples of the grid's view: it must hold it
            ctx.ops.set_view(view=ctx.dataset.select(walk, ordered=True))
        ctx.ops.open_sample(id=sample_id)

    @friendly
    def accept_current(self, ctx):
        """Accepts the open sample's prediction (or the selected samples'), then opens the next undecided target."""
        self._accept(ctx, replace=False)

    @friendly
    def accept_replacing(self, ctx):
        """Accept where the sample has ground truth of the class already: the prediction takes its place."""
        self._accept(ctx, replace=True)

    def _accept(self, ctx, replace: bool) -> None:
        from conceptseg.runs.review import accept

        from ..operators._messages import accepted_sentence

        run = self._run(ctx)
        if run is None:
            return
        out = accept(ctx.dataset, run["pred_field"], app.acted_on(ctx), replace=replace)
        ctx.ops.notify(accepted_sentence(out), variant="success")
        self._after_decision(ctx)

    @friendly
    def reject_current(self, ctx):
        """Rejects the open sample's prediction (or the selected samples'), then opens the next undecided target."""
        from conceptseg.runs.review import reject

        from ..operators._messages import rejected_sentence

        run = self._run(ctx)
        if run is None:
            return
        out = reject(ctx.dataset, run["pred_field"], app.acted_on(ctx))
        ctx.ops.notify(rejected_sentence(out), variant="success")
        self._after_decision(ctx)

    @friendly
    def rerun(self, ctx):
        """A new round: the targets not yet accepted, segmented with the enlarged demonstrations.

        From the App it runs as the Re-run operator (its progress dialog and sentence); the
        panel picks up the new round when the dataset changes.
        """
        run = self._run(ctx)
        if run is None:
            return
        pred_field = run["pred_field"]
        if app.from_app(ctx):
            ctx.trigger(self.uri.rsplit("/", 1)[0] + "/rerun_review", params={"pred_field": pred_field})
            return
        from conceptseg.runs.review import rerun

        from ..operators._messages import rerun_sentence

        out = rerun(ctx.dataset, pred_field)
        ctx.ops.notify(rerun_sentence(out), variant="success")
        ctx.ops.reload_dataset()
        self._load_run(ctx)

    def _after_decision(self, ctx) -> None:
        """Reloads the panel and the samples' tags; in the modal, opens the next target not yet decided."""
        self._load_run(ctx)
        # The grid's tiles show the new tags. (The modal's sidebar keeps a sample's tags from when it was
        # first opened until the page reloads, in FiftyOne 1.22.1; the panel says "accepted" meanwhile.)
        ctx.ops.reload_samples()
        current = ctx.current_sample
        if not current:
            return
        pred_field = ctx.panel.state.run["pred_field"]
        walk = review_walk(ctx.dataset, pred_field)
        following = next_open(walk, current)
        if following is None:
            ctx.ops.notify(f"All {len(walk)} targets of this round are decided: Re-run with accepted learns from them.")
            return
        self._open(ctx, [r["id"] for r in walk], following)

    def _run(self, ctx) -> dict | None:
        """The run an action works on, read again from the dataset; None when there is none to act on.

        Only the run's key is taken from the state the App sent, which can predate on_load's reply (see
        on_change_current_sample); without a key the run is chosen as on_load chooses it. A run deleted
        since the panel showed it is acted on by nobody: the panel shows what is there now.
        """
        key = ctx.panel.state.run_key
        if key is not None and key in segmentation_runs(ctx.dataset):
            self._load_run(ctx)
            return ctx.panel.state.run
        self.on_load(ctx)
        return ctx.panel.state.run if key is None else None

    def _load_run(self, ctx) -> None:
        ctx.panel.state.fingerprint = fingerprint(ctx.dataset)
        key = ctx.panel.state.run_key
        if key is None:
            ctx.panel.state.set({"run": None, "notice": NO_RUNS, "sample": None})
            return
        run = run_facts(ctx.dataset, key)
        ctx.panel.state.run = run
        if not ctx.dataset.has_field(run["pred_field"]):
            ctx.panel.state.notice = (
                f"The field {run['pred_field']!r} that run {key!r} wrote no longer exists (deleted or "
                "renamed), so there are no predictions to show. Run the operator again, or remove the "
                f"record with `dataset.delete_run({key!r})`."
            )
            ctx.panel.state.sample = None
            return
        ctx.panel.state.notice = None
        ctx.panel.state.review = review_facts(ctx.dataset, run)
        evaluation = evaluation_for(ctx.dataset, run["pred_field"])
        ctx.panel.state.eval_key = evaluation and evaluation["key"]
        ctx.panel.state.gt_field = run["mask_field"] or (evaluation and evaluation["gt_field"])
        # A saved concept's demonstrations are named ("red@1:demos/000.png"), not samples here.
        on_dataset = [i for i in run["demonstration_ids"] if ObjectId.is_valid(i)]
        demos = ctx.dataset.select(on_dataset[:MAX_THUMBNAILS], ordered=True)
        paths = demos.values("filepath")
        ctx.panel.state.demo_names = [os.path.basename(p) for p in paths]
        # Thumbnail URLs travel as panel data: they are only drawn, never read back.
        ctx.panel.data.set("demos", {f"demo_{i}": media_url(p) for i, p in enumerate(paths)})
        self._load_sample(ctx)

    def _load_sample(self, ctx) -> None:
        run = ctx.panel.state.run
        if run is None or ctx.panel.state.notice:
            return
        sample_id = ctx.current_sample
        sample = sample_facts(ctx.dataset, run, sample_id) if sample_id else None
        review = ctx.panel.state.review
        if sample is not None and review is not None:
            sample["walk"] = walk_position(review_walk(ctx.dataset, run["pred_field"]), sample_id)
        picture = None
        if sample is not None and "notice" not in sample:
            from ._judge import prediction_picture

            shown = ctx.dataset.select(sample_id).select_fields(run["pred_field"]).first()
            picture = prediction_picture(shown.filepath, shown[run["pred_field"]])
            sample["picture"] = picture is not None
        ctx.panel.data.set("judge_img", picture)  # a data URL, only drawn: it travels as panel data
        ctx.panel.state.sample = sample
        # Why the open sample (or the selection) cannot be accepted or rejected, said on the buttons.
        ids = app.acted_on(ctx)
        ctx.panel.state.decision = None
        if review is not None and ids:
            from conceptseg.runs.review import holding_truth

            from ..operators._forms import TRUTH_CHECK_LIMIT, acceptance_problem

            decision = {action: acceptance_problem(ctx.dataset, run["pred_field"], ids, action, replace=True)
                        for action in ("accept", "reject")}
            # Ground truth of the class there already: Accept would refuse, Accept and replace overwrites it.
            holding = [] if decision["accept"] or len(ids) > TRUTH_CHECK_LIMIT else \
                holding_truth(ctx.dataset, run["pred_field"], ids)
            if holding:
                decision["accept"] = ((
                    "This sample has" if len(ids) == 1 else f"{len(holding)} of the {len(ids)} selected samples have")
                    + " ground truth of the concept's class already: Accept and replace puts the prediction in its "
                      "place.")
            decision["replace"] = bool(holding)
            both = decision["accept"] and decision["reject"]  # one sentence for both buttons
            decision["why"] = (acceptance_problem(ctx.dataset, run["pred_field"], ids, "accept or reject",
                                                  "accepted or rejected") if both
                               else decision["accept"] or decision["reject"])
            ctx.panel.state.decision = decision

    def render(self, ctx):
        # Markdown names end in _md: a component shows the state value of its own name, if any.
        state = ctx.panel.state
        panel = types.Object()
        # Re-reads the dataset when any process (operator, panel, delegated worker) changed it.
        panel.view("refresh_timer", types.TimerView(interval=REFRESH_MS, on_interval=self.check_fresh))
        if not state.runs:
            panel.md(NO_RUNS, name="empty_md")
            return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))
        choices = types.DropdownView()
        for key in state.runs:
            choices.add_choice(key, label=key)
        panel.enum("run_key", state.runs, label="Run", view=choices, on_change=self.on_change_run)
        if state.notice:
            panel.md(state.notice, name="notice_md")
            return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))
        run = state.run
        if state.sample and state.sample.get("walk"):
            walk = state.sample["walk"]
            row = panel.h_stack("walk", gap=1, align_y="center")
            row.btn("walk_previous", label="Previous", icon="arrow_back", on_click=self.walk_previous,
                    variant="outlined", disabled=walk["k"] == 1)
            row.btn("walk_next", label="Next", icon="arrow_forward", icon_position="right", on_click=self.walk_next,
                    variant="outlined", disabled=walk["k"] == walk["n"])
            row.md(walk_markdown(walk), name="walk_md")
            if state.review:
                self._render_review_actions(panel, state)  # Accept / Reject next to "k of N", not a scroll away
        panel.md(run_markdown(run), name="run_md")
        panel.md(sample_markdown(state.sample, run["rule"]), name="sample_md")
        if state.sample and state.sample.get("picture"):
            panel.md("**The prediction to judge** (orange, over this sample):", name="judge_md")
            panel.img("judge_img", width="320px", alt_text="this sample's prediction", point_on_hover=False)
        names = state.demo_names or []
        if names:
            panel.md(f"**Demonstrations used** ({len(run['demonstration_ids'])})", name="demos_title_md")
            row = panel.h_stack("demos", gap=1)
            for i, name in enumerate(names):
                row.img(f"demo_{i}", width="96px", height="96px", alt_text=name, point_on_hover=False)
        buttons = panel.h_stack("actions", gap=1)
        buttons.btn("show_pred_gt", label="Show prediction vs ground truth", on_click=self.show_prediction_vs_gt,
                    variant="outlined")
        if state.eval_key:
            buttons.btn("open_worst", label="Open worst samples", on_click=self.open_worst, variant="outlined")
        else:
            panel.md("Run **Evaluate concept segmentation** on this field to rank its worst samples.",
                     name="no_eval_md")
        if state.review:
            self._render_review(panel, state)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=1))

    def _render_review(self, panel, state) -> None:
        panel.md(review_markdown(state.review), name="review_md")
        if not (state.sample and state.sample.get("walk")):  # while walking, the buttons sit under the walk
            self._render_review_actions(panel, state)

    def _render_review_actions(self, panel, state) -> None:
        review = state.review
        loop = panel.h_stack("review_actions", gap=1)
        loop.btn("open_review", label="Review by doubt", on_click=self.open_review, variant="contained")
        decision = state.decision
        if decision is not None:
            for name, label, method in (("accept", "Accept", self.accept_current),
                                        ("reject", "Reject", self.reject_current)):
                why = decision[name]
                loop.btn(f"{name}_current", label=label, on_click=method, variant="outlined", disabled=bool(why),
                         title=why or None)
            if decision.get("replace"):
                loop.btn("accept_replacing", label="Accept and replace", on_click=self.accept_replacing,
                         variant="outlined", title="Replace this sample's ground truth of the class with the prediction")
        stale = not review.get("new_since_round")
        why_not = (f"Re-run learns from targets accepted (or rejected as absent) since round {review['round']}: "
                   "none yet.") if stale else None
        loop.btn("rerun", label="Re-run with accepted", on_click=self.rerun, variant="outlined", disabled=stale,
                 title=why_not)
        if decision is not None and decision.get("why"):
            panel.md(decision["why"], name="decision_md")
