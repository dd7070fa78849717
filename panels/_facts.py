"""What the Concept Rules panel reads from the dataset: runs, evaluations, a sample's prediction, the review walk."""

from __future__ import annotations

from urllib.parse import urlencode

from bson import ObjectId
from fiftyone import ViewField as F

from .concept_evaluation import metric_field

SEGMENT_METHODS = ("conceptseg.segment_by_demonstration", "conceptseg.segment_by_query")
EVALUATE_METHOD = "conceptseg.evaluate"
MAX_THUMBNAILS = 8  # more demonstrations than this are counted, not drawn


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
    from conceptseg.runs.review import review, state

    out = review(dataset, run["pred_field"])
    rounds = [{k: r.get(k) for k in ("round", "verification", "verified", "accepted", "negatives")}
              for r in out["rounds"]]
    top = out["targets"][0] if out["targets"] else None
    record = state(dataset, run["pred_field"])
    learned = set(record["rounds"][-1]["demonstrations"])
    new = len(set(record["accepted"] + record["negatives"]) - learned)
    return {"round": out["round"], "accepted": out["accepted"], "to_review": len(out["targets"]),
            "most_doubtful": top and top["id"], "top_doubt": top and top["doubt"], "rounds": rounds,
            "new_since_round": new}


def review_walk(dataset, pred_field: str) -> list[dict]:
    """The round's targets in doubt order, decided ones included: the walk "k of N" counts along.

    The order is ``conceptseg.runs.review.review``'s (most doubtful first; a label without a doubt
    counts as fully doubtful); accepted and rejected targets keep their place, marked.
    """
    from conceptseg.runs.names import run_key_for
    from conceptseg.runs.review import REJECTED_TAG, state

    record = state(dataset, pred_field)
    # An applied concept's demonstrations are library references ("NAME@N:demos/000.png"), no sample here.
    demos = [i for i in record["rounds"][-1]["demonstrations"] if ObjectId.is_valid(i)]
    view = dataset.match(F(f"{pred_field}.run_key") == run_key_for(pred_field)).exclude(demos)
    ids, doubts, tags = view.values(["id", f"{pred_field}.doubt", "tags"])
    accepted = set(record["accepted"])
    rows = [{"id": i, "doubt": 1.0 if d is None else float(d),
             "status": "accepted" if i in accepted else ("rejected" if REJECTED_TAG in (t or []) else None)}
            for i, d, t in zip(ids, doubts, tags)]
    rows.sort(key=lambda r: -r["doubt"])
    return rows


def next_open(walk: list[dict], after: str | None) -> str | None:
    """The next undecided target after ``after`` in the walk (wrapping round), or None when all are decided."""
    ids = [r["id"] for r in walk]
    start = ids.index(after) + 1 if after in ids else 0
    for row in walk[start:] + walk[:start]:
        if row["status"] is None and row["id"] != after:
            return row["id"]
    return None


def walk_position(walk: list[dict], sample_id: str) -> dict | None:
    """Where ``sample_id`` stands in the walk: k, N, how many are still open, its status."""
    ids = [r["id"] for r in walk]
    if sample_id not in ids:
        return None
    row = walk[ids.index(sample_id)]
    return {"k": ids.index(sample_id) + 1, "n": len(ids), "open": sum(r["status"] is None for r in walk),
            "status": row["status"], "doubt": row["doubt"]}
