"""The Concept Rules panel's words: a run, a sample's prediction, the review, as markdown."""

from __future__ import annotations

NO_SAMPLE = "Open a sample to see the rule, reasoning and answer recorded on its own prediction."


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


def walk_markdown(walk: dict) -> str:
    """'Review: 3 of 9 by doubt · accepted · 6 still open'."""
    status = f" · **{walk['status']}**" if walk["status"] else ""
    return f"**Review:** {walk['k']} of {walk['n']} by doubt{status} · {walk['open']} still open"


def run_markdown(run: dict) -> str:
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


def sample_markdown(sample: dict | None, run_rule: str | None) -> str:
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
