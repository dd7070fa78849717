"""Concept Rules panel: a run's induced rule, its reasoning and verification, next to the masks."""

from __future__ import annotations

import os
from urllib.parse import urlencode

import fiftyone.operators as foo
import fiftyone.operators.types as types
from bson import ObjectId

from .concept_evaluation import metric_field

SEGMENT_METHODS = ("conceptseg.segment_by_demonstration", "conceptseg.segment_by_query")
EVALUATE_METHOD = "conceptseg.evaluate"
MAX_THUMBNAILS = 8  # more demonstrations than this are counted, not drawn

NO_RUNS = (
    "No ConceptSeg run on this dataset yet. Select a few samples whose masks show a concept and run "
    "**Segment by demonstration** (or **Segment by text query**) from the operator browser; "
    "the rule it induces will show here."
)
NO_SAMPLE = "Open a sample to see the rule, reasoning and answer recorded on its own prediction."


def media_url(filepath: str) -> str:
    """The App's relative media route, so the thumbnail works behind any host or port."""
    return "/media?" + urlencode({"filepath": filepath})


def segmentation_runs(dataset) -> list[str]:
    """Keys of this plugin's segmentation runs, newest first."""
    infos = [(key, dataset.get_run_info(key)) for key in dataset.list_runs()]
    runs = [(info.timestamp, key) for key, info in infos if info.config.method in SEGMENT_METHODS]
    return [key for _, key in sorted(runs, reverse=True)]


def evaluation_for(dataset, pred_field: str) -> dict | None:
    """The newest conceptseg evaluation of ``pred_field`` whose IoU field still exists."""
    found = []
    for key in dataset.list_runs():
        info = dataset.get_run_info(key)
        config = info.config
        if config.method == EVALUATE_METHOD and config.pred_field == pred_field and dataset.has_field(metric_field(key, "iou")):
            found.append((info.timestamp, {"key": key, "gt_field": config.gt_field}))
    return max(found, key=lambda t: t[0])[1] if found else None


def run_facts(dataset, key: str) -> dict:
    """What the run recorded: rule, route, verification, fields and summary counts (JSON-able)."""
    config = dataset.get_run_info(key).config
    results = dataset.load_run_results(key)
    summary = getattr(results, "summary", None) or {}  # None while a run is still going

    def get(name: str):
        return getattr(config, name, None)  # query runs record fewer keys than demonstration runs

    return {
        "key": key,
        "method": config.method,
        "pred_field": get("pred_field"),
        "mask_field": get("mask_field"),
        "route": get("route"),
        "rule": get("rule") or summary.get("rule"),
        "reason": get("reason"),
        "verification": get("verification"),
        "verified": bool(get("verified")),
        "concept": get("concept"),
        "query": get("query"),
        "model": get("model"),
        "demonstration_ids": list(get("demonstration_ids") or []),
        "segmented": summary.get("segmented"),
        "failed": len(summary.get("failures", [])),
        "seconds_per_target": summary.get("seconds_per_target"),
    }


def sample_facts(dataset, run: dict, sample_id: str) -> dict:
    """The current sample's prediction attributes, or a sentence saying why there are none."""
    label = dataset.select(sample_id).first()[run["pred_field"]]
    if label is not None:
        names = ("route", "verification", "verified", "rule", "reasoning", "answer", "parse_error", "cost",
                 "doubt", "concept_name", "review")
        return {name: label.get_field(name) if label.has_field(name) else None for name in names}
    # Failures are read only here: a big run's list is too heavy to carry in panel state.
    results = dataset.load_run_results(run["key"]) if run["failed"] else None
    failures = {f["sample_id"]: f["error"] for f in results.summary["failures"]} if results else {}
    if sample_id in run["demonstration_ids"]:
        why = "This sample is one of the run's demonstrations; demonstrations are not segmented."
    elif sample_id in failures:
        why = f"Segmenting this sample failed: {failures[sample_id]}"
    else:
        why = f"This sample has no prediction in {run['pred_field']!r}: it was not in the run's target view."
    return {"notice": why}


def review_facts(dataset, run: dict) -> dict | None:
    """Where the labeling loop stands on a demonstration run: round, counts, every round's verification."""
    if run["method"] != SEGMENT_METHODS[0]:
        return None
    from conceptseg.review import review

    out = review(dataset, run["pred_field"])
    rounds = [{k: r.get(k) for k in ("round", "verification", "verified", "accepted", "negatives")}
              for r in out["rounds"]]
    top = out["targets"][0] if out["targets"] else None
    return {"round": out["round"], "accepted": out["accepted"], "to_review": len(out["targets"]),
            "most_doubtful": top and top["id"], "top_doubt": top and top["doubt"], "rounds": rounds}


def review_markdown(facts: dict) -> str:
    """The loop in words and a table of rounds (verification and accepted count)."""
    lines = [f"**Review** · round {facts['round']} · {facts['accepted']} accepted · {facts['to_review']} to review"
             + (f" (most doubtful: {facts['top_doubt']:.2f})" if facts["top_doubt"] is not None else ""),
             "| round | verification | accepted | negatives |", "|---|---|---|---|"]
    for r in facts["rounds"]:
        v = "unavailable" if r["verification"] is None else f"{r['verification']:.3f}"
        lines.append(f"| {r['round']} | {v} | {r['accepted']} | {r['negatives']} |")
    return "\n".join(lines[:1]) + "\n\n" + "\n".join(lines[1:])


def verification_text(verification: float | None, verified: bool) -> str:
    """'0.865 (verified)', '0.312 (unverified: below threshold)' or 'unavailable'."""
    if verification is None:
        return "unavailable (no held-out demonstration to check against)"
    return f"{verification:.3f} ({'verified' if verified else 'unverified: below threshold'})"


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
        """Lists the runs and loads the chosen (or newest) one."""
        runs = segmentation_runs(ctx.dataset)
        chosen = ctx.panel.state.run_key
        ctx.panel.state.runs = runs
        ctx.panel.state.run_key = chosen if chosen in runs else (runs[0] if runs else None)
        self._load_run(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.run_key = None
        self.on_load(ctx)

    def on_change_current_sample(self, ctx):
        self._load_sample(ctx)

    def on_change_run(self, ctx):
        ctx.panel.state.run_key = ctx.params.get("value")
        self._load_run(ctx)

    def show_prediction_vs_gt(self, ctx):
        """Turns on exactly the prediction and its ground truth in the grid and modal."""
        run = ctx.panel.state.run
        fields = [f for f in (run["pred_field"], ctx.panel.state.gt_field) if f]
        ctx.ops.set_active_fields(fields=fields)

    def open_worst(self, ctx):
        """Shows the evaluated samples, lowest IoU first."""
        iou = metric_field(ctx.panel.state.eval_key, "iou")
        ctx.ops.set_view(view=ctx.dataset.exists(iou).sort_by(iou))

    def open_review(self, ctx):
        """Shows the targets not yet accepted, most doubtful first, and opens the most doubtful one."""
        from conceptseg.review import review

        pred = ctx.panel.state.run["pred_field"]
        out = review(ctx.dataset, pred)
        ids = [t["id"] for t in out["targets"]]
        if not ids:
            ctx.ops.notify("Every target is accepted: nothing left to review.")
            return
        ctx.ops.set_view(view=ctx.dataset.select(ids, ordered=True))
        ctx.ops.open_sample(id=ids[0])

    def accept_current(self, ctx):
        """Accepts the open sample's prediction (or the selected samples')."""
        from conceptseg.review import accept

        ids = list(ctx.selected or ([ctx.current_sample] if ctx.current_sample else []))
        out = accept(ctx.dataset, ctx.panel.state.run["pred_field"], ids)
        ctx.ops.notify(f"Accepted {len(out['accepted'])} into {out['mask_field']!r} as {out['class']!r}.")
        self._load_run(ctx)

    def rerun(self, ctx):
        """A new round: the targets not yet accepted, segmented with the enlarged demonstrations."""
        from conceptseg.review import rerun

        out = rerun(ctx.dataset, ctx.panel.state.run["pred_field"])
        ctx.ops.notify(f"Round {out['round']}: {out['segmented']} targets segmented again.")
        ctx.ops.reload_dataset()
        self._load_run(ctx)

    def _load_run(self, ctx) -> None:
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
        ctx.panel.state.sample = sample_facts(ctx.dataset, run, sample_id) if sample_id else None

    def render(self, ctx):
        # Markdown names end in _md: a component shows the state value of its own name, if any.
        state = ctx.panel.state
        panel = types.Object()
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
        panel.md(_run_markdown(run), name="run_md")
        panel.md(_sample_markdown(state.sample, run["rule"]), name="sample_md")
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
            panel.md(review_markdown(state.review), name="review_md")
            loop = panel.h_stack("review_actions", gap=1)
            loop.btn("open_review", label="Review by doubt", on_click=self.open_review, variant="contained")
            if ctx.current_sample or ctx.selected:
                loop.btn("accept_current", label="Accept", on_click=self.accept_current, variant="outlined")
            loop.btn("rerun", label="Re-run with accepted", on_click=self.rerun, variant="outlined")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=1))


def _run_markdown(run: dict) -> str:
    """The run-level facts as markdown: what was learned, how and how well it checked out."""
    if run["query"]:
        title = f"**Rule** for the query *{run['query']}*"
    elif run["concept"] and run["concept"] != "concept":  # "concept" is the form's placeholder name
        title = f"**Rule** for *{run['concept']}*"
    else:
        title = "**Rule**"
    lines = [
        title,
        f"> {run['rule'] or 'no rule recorded'}",
        f"**Route:** {run['route']} · **Verification:** {verification_text(run['verification'], run['verified'])}",
    ]
    if run["reason"]:
        lines.append(f"**Why this route:** {run['reason']}")
    if run["segmented"] is not None:
        cost = run["seconds_per_target"]
        lines.append(f"**Segmented:** {run['segmented']} targets" + (f", {cost:.2f} s each" if cost else ""))
    return "\n\n".join(lines)


def _sample_markdown(sample: dict | None, run_rule: str | None) -> str:
    """The current sample's own rule, reasoning and answer (the reasoning route writes these)."""
    if sample is None:
        return NO_SAMPLE
    if "notice" in sample:
        return f"**This sample:** {sample['notice']}"
    lines = ["**This sample**" + (f" · saved concept *{sample['concept_name']}*" if sample.get("concept_name") else "")]
    if sample.get("doubt") is not None:
        lines.append(f"**Doubt:** {sample['doubt']:.2f}" + (f" · **Review:** {sample['review']}" if sample.get("review") else ""))
    if sample["rule"] and sample["rule"] != run_rule:  # the reasoning route words a rule per image
        lines.append(f"**Rule:** {sample['rule']}")
    wordless = f"— (the {sample['route']} route does not reason in words)"
    lines.append(f"**Reasoning:** {sample['reasoning'] or wordless}")
    lines.append(f"**Answer:** {sample['answer'] or '—'}")
    if sample["parse_error"]:
        lines.append(f"**Parse error:** {sample['parse_error']}")
    lines.append(
        f"**Route:** {sample['route']} · **Verification:** "
        f"{verification_text(sample['verification'], bool(sample['verified']))}"
        + (f" · **Cost:** {sample['cost']:.3f} s" if sample["cost"] is not None else "")
    )
    return "\n\n".join(lines)
