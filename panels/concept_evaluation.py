"""Concept Evaluation panel: Fω, Sα and IoU per level or concept, the IoU histogram, routes and cost."""

from __future__ import annotations

import functools
import hashlib
import json

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

EVALUATE_METHOD = "conceptseg.evaluate"
GROUP_FIELDS = ("level", "concept")  # the benchmark's CI/CD/CR levels first, else the concept name
LEVEL_ORDER = ("CI", "CD", "CR")
METRICS = (("wfm", "Fω"), ("sm", "Sα"), ("iou", "IoU"))
BINS = 10
ALL = "all"  # the one bar group when the dataset has no level or concept field
# The App's default plot margins (8 px on top) leave no room for a title or axis labels.
PLOT_LAYOUT = {"margin": {"t": 40, "l": 48, "b": 48, "r": 16}}
PLOT_CONFIG = {"displayModeBar": False}  # its buttons would cover the titles; clicks still work

# How often an open panel checks whether a run, an evaluation or a review step changed the dataset.
REFRESH_MS = 2000

NO_EVALUATIONS = (
    "No concept evaluation on this dataset yet. Run **Evaluate concept segmentation** on a prediction "
    "field with ground truth; its Fω, Sα and IoU per level or concept will show here."
)


def fingerprint(dataset) -> str:
    """Changes whenever what our panels show may have: a run or evaluation recorded, re-run or deleted
    (its record and results), or a review step (the loop's record in the dataset's info).

    ``ctx.dataset`` is reloaded for every panel event, so a write by any process shows here.
    """
    try:  # the run documents come with the dataset's: no query per run
        runs = [(key, str(doc.id), str(getattr(doc.results, "grid_id", None)))
                for key, doc in sorted(dataset._doc.runs.items())]
    except Exception:  # a FiftyOne whose documents differ: the records' keys and times
        runs = [(key, str(dataset.get_run_info(key).timestamp)) for key in sorted(dataset.list_runs())]
    review = (dataset.info or {}).get("conceptseg_review")
    text = json.dumps([runs, review], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def friendly(method):
    """A panel callback whose user-fixable error (ConceptSegError) is one notification, never an error box."""

    @functools.wraps(method)
    def wrapper(self, ctx):
        from conceptseg.errors import ConceptSegError

        try:
            return method(self, ctx)
        except ConceptSegError as error:
            ctx.ops.notify(str(error), variant="error")
            return None

    return wrapper


def evaluation_runs(dataset) -> list[str]:
    """Keys of this plugin's evaluation runs, newest first."""
    infos = [(key, dataset.get_run_info(key)) for key in dataset.list_runs()]
    runs = [(info.timestamp, key) for key, info in infos if info.config.method == EVALUATE_METHOD]
    return [key for _, key in sorted(runs, reverse=True)]


def metric_field(eval_key: str, metric: str) -> str:
    """The per-sample field of a metric (``conceptseg.runs.evaluation.metric_field``, without the engine import)."""
    return f"{eval_key}_concept_{metric}"


def group_field(dataset) -> str | None:
    """The field the bars group by: ``level`` when present, else ``concept``, else none."""
    return next((f for f in GROUP_FIELDS if dataset.has_field(f)), None)


def group_scores(scored, field: str | None, key: str) -> dict:
    """Per group: sample count and mean of each metric, aggregated by the database."""
    groups = scored.distinct(field) if field else [ALL]
    if field == "level":
        groups = sorted(groups, key=lambda g: LEVEL_ORDER.index(g) if g in LEVEL_ORDER else len(LEVEL_ORDER))
    out = {}
    for group in groups:
        view = scored.match(F(field) == group) if field else scored
        means = view.aggregate([fo.Count()] + [fo.Mean(metric_field(key, m)) for m, _ in METRICS])
        out[str(group)] = {"count": means[0], **{m: v for (m, _), v in zip(METRICS, means[1:])}}
    return out


def route_costs(dataset, pred_field: str) -> list[dict]:
    """The mix of routes among the predictions and the mean seconds per target of each."""
    counts = dataset.count_values(f"{pred_field}.route")
    rows = []
    for route, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        if route is None:  # samples without a prediction
            continue
        cost = dataset.match(F(f"{pred_field}.route") == route).mean(f"{pred_field}.cost")
        rows.append({"route": route, "count": count, "cost": cost})
    return rows


def bar_traces(scores: dict) -> list[dict]:
    """One bar trace per metric, grouped by level or concept (plotly JSON)."""
    groups = list(scores)
    return [
        {"type": "bar", "name": label, "x": groups, "y": [scores[g][m] for g in groups]}
        for m, label in METRICS
    ]


def histogram_trace(scored, iou_field: str) -> list[dict]:
    """Per-sample IoU counted in fixed bins by the database, drawn as bars at bin centres."""
    counts, edges, _ = scored.histogram_values(iou_field, bins=BINS, range=[0.0, 1.0])
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    return [{"type": "bar", "name": "samples", "x": centres, "y": counts, "width": 1.0 / BINS}]


class ConceptEvaluation(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="concept_evaluation",
            label="Concept Evaluation",
            surfaces="grid",
            icon="insights",
            help_markdown="Fω, Sα and IoU of a ConceptSeg evaluation per level or concept; click a bar to filter.",
        )

    def on_load(self, ctx):
        """Lists the evaluations and loads one: an evaluation new since the last look, else the chosen, else the newest."""
        runs = evaluation_runs(ctx.dataset)
        chosen, known = ctx.panel.state.eval_key, ctx.panel.state.evals
        new = [key for key in runs if known is not None and key not in known]
        ctx.panel.state.evals = runs
        ctx.panel.state.eval_key = next((k for k in (*new, chosen) if k in runs), runs[0] if runs else None)
        self._load(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.eval_key = None
        ctx.panel.state.evals = None
        self.on_load(ctx)

    def check_fresh(self, ctx):
        """Every REFRESH_MS: reloads when an evaluation (or a run) changed the dataset, in any process."""
        self.on_load(ctx)

    def execute(self, ctx):
        # A timer tick when nothing changed sends nothing back: no state, no render.
        if ctx.params.get("__method__") == "check_fresh" and fingerprint(ctx.dataset) == ctx.panel.state.fingerprint:
            return None
        return super().execute(ctx)

    def on_change_eval(self, ctx):
        ctx.panel.state.eval_key = ctx.params.get("value")
        self._load(ctx)

    def on_bar_click(self, ctx):
        """Filters the grid to the scored samples of the clicked level or concept."""
        scored = ctx.dataset.exists(metric_field(ctx.panel.state.eval_key, "iou"))
        group, field = ctx.params.get("x"), ctx.panel.state.group_field
        ctx.ops.set_view(view=scored.match(F(field) == group) if field and group != ALL else scored)

    def on_histogram_click(self, ctx):
        """Filters the grid to the samples whose IoU falls in the clicked bin."""
        iou = metric_field(ctx.panel.state.eval_key, "iou")
        lo = float(ctx.params["x"]) - 0.5 / BINS
        hi = lo + 1.0 / BINS
        upper = F(iou) <= hi if hi >= 1.0 - 1e-9 else F(iou) < hi  # the last bin holds IoU = 1
        ctx.ops.set_view(view=ctx.dataset.match((F(iou) >= lo - 1e-9) & upper).sort_by(iou))

    def _load(self, ctx) -> None:
        key = ctx.panel.state.eval_key
        state = {"notice": None, "summary": None, "routes": None, "group_field": None,
                 "fingerprint": fingerprint(ctx.dataset)}
        if key is None:
            ctx.panel.state.set({**state, "notice": NO_EVALUATIONS})
            return
        config = ctx.dataset.get_run_info(key).config
        iou = metric_field(key, "iou")
        missing = [metric_field(key, m) for m, _ in METRICS if not ctx.dataset.has_field(metric_field(key, m))]
        scored = ctx.dataset.exists(iou) if not missing else None
        if missing or scored.count() == 0:
            why = f"fields {', '.join(missing)} were deleted" if missing else "it scored no sample"
            ctx.panel.state.set({**state, "notice": f"Evaluation {key!r} has nothing to plot: {why}. "
                                 "Run **Evaluate concept segmentation** again."})
            return
        field = group_field(ctx.dataset)
        scores = group_scores(scored, field, key)
        metrics = ctx.dataset.load_run_results(key).metrics
        state.update(
            group_field=field,
            summary={"pred_field": config.pred_field, "gt_field": config.gt_field, "scored": scored.count(),
                     **{m: metrics.get(m) for m, _ in METRICS}},
        )
        if ctx.dataset.has_field(config.pred_field):
            state["routes"] = route_costs(ctx.dataset, config.pred_field)
        ctx.panel.state.set(state)
        # Plot traces grow with groups and bins: panel data, never sent back with events.
        ctx.panel.data.set({
            "bars": bar_traces(scores),
            "histogram": histogram_trace(scored, iou),
            "routes_plot": [{"type": "pie", "labels": [r["route"] for r in state["routes"] or []],
                             "values": [r["count"] for r in state["routes"] or []], "hole": 0.4}],
        })

    def render(self, ctx):
        # Markdown names end in _md: a component shows the state value of its own name, if any.
        state = ctx.panel.state
        panel = types.Object()
        # Re-reads the dataset when any process (operator, panel, delegated worker) changed it.
        panel.view("refresh_timer", types.TimerView(interval=REFRESH_MS, on_interval=self.check_fresh))
        if not state.evals:
            panel.md(NO_EVALUATIONS, name="empty_md")
            return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))
        choices = types.DropdownView()
        for key in state.evals:
            choices.add_choice(key, label=key)
        panel.enum("eval_key", state.evals, label="Evaluation", view=choices, on_change=self.on_change_eval)
        if state.notice:
            panel.md(state.notice, name="notice_md")
            return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))
        panel.md(_summary_markdown(state.summary), name="summary_md")
        by = state.group_field or "evaluation"
        panel.plot("bars", on_click=self.on_bar_click, height="320px", config=PLOT_CONFIG, layout={
            **PLOT_LAYOUT, "title": {"text": f"Fω, Sα and IoU per {by} (click a bar to filter)"},
            "barmode": "group", "yaxis": {"range": [0, 1]}, "xaxis": {"type": "category"},
            "showlegend": True, "legend": {"orientation": "h", "x": 0, "y": -0.12},
        })
        panel.plot("histogram", on_click=self.on_histogram_click, height="260px", config=PLOT_CONFIG, layout={
            **PLOT_LAYOUT, "title": {"text": "Per-sample IoU (click a bin to filter)"},
            "xaxis": {"range": [0, 1], "title": {"text": "IoU"}}, "yaxis": {"title": {"text": "samples"}},
        })
        if state.routes is None:
            panel.md(f"The prediction field {state.summary['pred_field']!r} no longer exists: no route mix.",
                     name="routes_gone_md")
        elif state.routes:
            panel.plot("routes_plot", height="240px", config=PLOT_CONFIG,
                       layout={**PLOT_LAYOUT, "title": {"text": "Routes"}})
            panel.md(_routes_markdown(state.routes), name="routes_md")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=1, width=100))


def _summary_markdown(summary: dict) -> str:
    """The evaluation's means over every scored sample."""
    means = " · ".join(f"**{label}** {summary[m]:.3f}" for m, label in METRICS if summary[m] is not None)
    return (f"`{summary['pred_field']}` against `{summary['gt_field']}` on {summary['scored']} samples: "
            f"{means}")


def _routes_markdown(routes: list[dict]) -> str:
    """A small table: how many targets each route segmented and its mean cost."""
    rows = ["| route | targets | mean cost per target |", "|---|---|---|"]
    rows += [f"| {r['route']} | {r['count']} | " + (f"{r['cost']:.3f} s" if r["cost"] is not None else "—") + " |"
             for r in routes]
    return "\n".join(rows)
