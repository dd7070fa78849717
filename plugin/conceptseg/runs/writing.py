"""Writing a run's labels: the attributes every prediction carries, targets segmented in batches.

A run stopped by an exception keeps every label it wrote; a killed one loses at most the
last second (the samples are saved about once a second).
"""

from __future__ import annotations

import os

from conceptseg.runs import fiftyone_io as fio


def label_attributes(choice, result, run_key: str, run_id: str | None = None) -> dict:
    """Attributes every predicted label carries; the route's own words win over the run's.

    ``run_id`` (when the run has one) identifies the run even after its key is renamed.
    """
    details = result.details
    attrs = dict(
        route=choice.route.name,
        verification=choice.verification,
        verified=choice.verified,
        rule=details.get("rule") or choice.route.rule(),
        reasoning=details.get("reasoning"),
        answer=details.get("answer"),
        parse_error=details.get("parse_error"),
        truncated=details.get("truncated"),
        shortcut=details.get("shortcut_taken"),
        doubt=details.get("doubt"),  # in [0, 1], higher = more likely wrong (conceptseg.routes.doubt)
        run_key=run_key,
    )
    if details.get("doubt_terms"):  # the reasoning routes: what the doubt is made of, {term: its doubt}
        attrs["doubt_terms"] = {str(k): float(v) for k, v in details["doubt_terms"].items()}
    if details.get("decoded_tokens") is not None:  # the policy routes: tokens it wrote for this target
        attrs["decoded_tokens"] = int(details["decoded_tokens"])
    if run_id:
        attrs["run_id"] = run_id
    return attrs


def segment_targets(router, choice, todo, pred_field, inst_field, concept, run_key, out_dir, progress, run_id=None,
                     batch_size=1):
    """Segments every target, ``batch_size`` at a time, writing labels as it goes; returns (seconds, failures)."""
    failures, seconds, total, done = [], [], len(todo), 0
    # Saved in batches about once a second; a run stopped by an exception still saves
    # every target it labelled, and a killed one loses at most the last second.
    with todo.save_context(batch_size=1.0) as saver:
        for batch in sample_batches(fio.iter_targets(todo), batch_size):
            readable = [(sample, target) for sample, target, _ in batch if target is not None]
            results = dict(zip((s.id for s, _ in readable),
                               router.segment(choice, [t for _, t in readable], batch_size=batch_size)))
            for sample, target, error in batch:
                result = results.get(sample.id)
                error = result.error if result is not None else error
                if error is not None:
                    failures.append({"sample_id": sample.id, "filepath": sample.filepath, "error": error})
                    clear_stale(sample, saver, pred_field, inst_field)
                else:
                    seconds.append(result.seconds)
                    write_labels(sample, result, choice, pred_field, inst_field, concept, run_key, out_dir, run_id)
                    saver.save(sample)
                done += 1
                if progress is not None:
                    progress(done, total)
    return seconds, failures


def sample_batches(items, size: int):
    """(sample, target, error) triples in lists of ``size`` readable targets (unreadable ones ride along)."""
    batch, readable = [], 0
    for item in items:
        batch.append(item)
        readable += item[1] is not None
        if readable == size:
            yield batch
            batch, readable = [], 0
    if batch:
        yield batch


def clear_stale(sample, saver, pred_field, inst_field) -> None:
    """An old label on a failed target (kept only with overwrite) must not pass for this run's."""
    stale = [f for f in (pred_field, inst_field) if f and sample[f] is not None]
    for f in stale:
        sample[f] = None
    if stale:
        saver.save(sample)


def write_labels(sample, result, choice, pred_field, inst_field, concept, run_key, out_dir, run_id) -> None:
    attrs = label_attributes(choice, result, run_key, run_id)
    path = os.path.join(out_dir, f"{sample.id}.png")
    sample[pred_field] = fio.mask_to_segmentation(
        result.mask, path, cost=result.seconds, box=result.details.get("box"), **attrs
    )
    if inst_field:
        sample[inst_field] = fio.mask_to_detections(result.mask, result.probability, concept,
                                                   cost=result.seconds, **attrs)
