"""Benchmark results: aggregates per group and level, and Markdown tables like the paper's.

One table per level, laid out like the paper's Tables 1 (concepts) and 3 (ReasonSeg).
Table values are percentages with one decimal, as the paper prints them; the JSON
results keep the raw [0, 1] numbers. Plain Python, no FiftyOne.
"""

from __future__ import annotations

from typing import Sequence

from conceptseg.metrics import aggregate

# (result key, column title): concept levels report the paper's Fω and mIoU plus Sα and
# foreground IoU (mIoU is the fg/bg mean, see metrics.fg_bg_miou); ReasonSeg reports gIoU/cIoU.
CONCEPT_COLUMNS = (("wfm", "Fω"), ("sm", "Sα"), ("miou", "mIoU"), ("iou", "IoU"))
QUERY_COLUMNS = (("giou", "gIoU"), ("ciou", "cIoU"))
# Pixel counts behind cIoU: in the aggregates, not in each sample's scores.
_COUNTS = ("intersection", "union")


def percent(value: float | None) -> str:
    """0.8991 → "89.9"; a missing value → "—"."""
    return "—" if value is None else f"{100 * value:.1f}"


def level_table(level: str, rows: list[dict], total: dict, query: bool) -> str:
    """One Markdown table: a row per group (dataset key / concept or split) and a mean row.

    ``rows`` are the groups' result dicts (keys category, dataset_key, concept, split, n
    and metrics); ``total`` is the level's aggregate over all its samples.
    """
    columns = QUERY_COLUMNS if query else CONCEPT_COLUMNS
    head = ["Dataset", "Split", "n"] if query else ["Category", "Dataset", "Concept", "n"]
    lines = [f"### {level}", "", "| " + " | ".join(head + [t for _, t in columns]) + " |",
             "|" + "---|" * (len(head) + len(columns))]
    for row in rows:
        names = [row.get("dataset_key") or "", row.get("split") or ""] if query else \
            [row.get("category") or "", row.get("dataset_key") or "", row.get("concept") or ""]
        values = [percent(row.get(k)) for k, _ in columns]
        lines.append("| " + " | ".join(names + [str(row.get("n", 0))] + values) + " |")
    blanks = [""] * (len(head) - 2)
    values = [f"**{percent(total.get(k))}**" for k, _ in columns]
    lines.append("| " + " | ".join(["**mean**"] + blanks + [str(total.get("n", 0))] + values) + " |")
    return "\n".join(lines)


def summarise(groups: Sequence, scores: dict[str, dict[str, float]]) -> dict:
    """Aggregates per-sample scores per group and per level and renders a table per level.

    ``groups`` are ``protocol.Group``s (key, level, category, dataset_key, concept, split,
    query, ids, info); ``scores`` maps a sample id to its ``metrics.score_sample`` dict.
    Returns ``{"levels", "concepts", "samples", "tables", "markdown"}``; a group or level
    with nothing scored has n = 0 and no metrics.
    """
    concepts, per_level = {}, {}
    for group in groups:
        mine = [scores[i] for i in group.ids if i in scores]
        info = {k: v for k, v in group.info.items() if k != "key"}
        row = dict(level=group.level, category=group.category, dataset_key=group.dataset_key,
                   concept=group.concept, split=group.split, n=len(mine), **aggregate(mine), **info)
        concepts[group.key] = row
        samples, rows = per_level.setdefault(group.level, ([], []))
        samples.extend(mine)
        rows.append((row, group.query))
    levels, tables = {}, {}
    for level, (mine, rows) in per_level.items():
        levels[level] = dict(n=len(mine), **aggregate(mine))
        tables[level] = level_table(level, [r for r, _ in rows], levels[level], query=rows[0][1])
    samples = {
        i: dict(group=g.key, level=g.level, **{k: v for k, v in scores[i].items() if k not in _COUNTS})
        for g in groups for i in g.ids if i in scores
    }
    markdown = "\n\n".join(tables[level] for level in sorted(tables))
    return dict(levels=levels, concepts=concepts, samples=samples, tables=tables, markdown=markdown)
