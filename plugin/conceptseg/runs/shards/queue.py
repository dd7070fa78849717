"""A run spread over workers: its targets split into shards, each a FiftyOne delegated operation.

Queueing chooses the route once (fit + verify) on the caller's machine, records the run
with its choice, saves the demonstrations it read next to the run's masks, and queues one
``segment_shard`` operation per shard with an explicit list of target ids (index modulo N
over the sorted ids). Any ``fiftyone delegated launch`` worker that reaches the database,
the media and the output directory runs a shard: it re-fits the chosen route on the saved
demonstrations (same pixels, same seed: the same rule and the same masks) and segments its
targets, skipping those that already carry a label of this run, so a re-queued shard
resumes. FiftyOne claims a queued operation atomically (QUEUED -> RUNNING in one
conditional update), so two workers never run the same shard attempt.

Each shard keeps a record in the dataset's execution store ``conceptseg_shards``: its
operation, worker host and pid, a heartbeat, and its counts. The last shard to finish
aggregates the records into the run's results, which ``conceptseg runs`` shows. A shard
whose worker died (its operation RUNNING with a dead pid on this host, or a heartbeat older
than ``stale_after``; or FAILED) is re-queued by :func:`conceptseg.runs.shards.watch.requeue_dead`.

The records are written only by :func:`update_record`: one conditional update on the
record's database document, never a read and then a write. So:

* a record exists before its operation is queued: it names a placeholder
  (``op_id="queueing"`` or ``"requeueing"``) and a fresh ``ticket`` that the operation's
  params carry, and the worker that claims the operation first takes the record by that
  ticket; the queueing process names the operation afterwards only if no worker did;
* a worker writes only while the record names its operation (or awaits its ticket): once a
  re-queue has handed the shard on, a stale worker's writes match nothing and it stops;
* a re-queue first fences the record (only if it is still exactly the one judged dead),
  then queues; a re-queue whose queueing fails puts the record back, and one whose process
  died in between is found stuck (no operation carries its ticket after ``stale_after``),
  so a field never stays locked by a placeholder;
* heartbeats and every time a staleness is judged by are the database's clock (``$$NOW``,
  the ``hello`` command's ``localTime``), never a worker host's wall clock.
"""

from __future__ import annotations

import os
import uuid


from conceptseg.runs.shards import lock as shard_lock
from conceptseg.errors import ConceptSegError
from conceptseg.runs import plan
from conceptseg.runs.shards.store import (PENDING, QUEUEING, clear_records, db_time, execution_store,
                                          shard_records, targets_key, update_record)
from conceptseg.runs.shards.worker import demonstrations_path, finish_if_done, save_demonstrations

SHARD_OPERATOR = "segment_shard"


class ShardQueueError(ConceptSegError):
    """Queueing a run's shards failed part way; ``queued`` holds the operations that were queued."""

    def __init__(self, message: str, queued: list[str]):
        super().__init__(message)
        self.queued = queued


def operator_uri() -> str:
    """The shard operator's URI (what workers execute)."""
    from conceptseg.install import PLUGIN_NAME

    return f"{PLUGIN_NAME}/{SHARD_OPERATOR}"


def split_targets(ids: list[str], shards: int) -> list[list[str]]:
    """Sorted ids dealt round-robin into ``shards`` lists (index modulo N): deterministic and balanced."""
    ordered = sorted(ids)
    return [ordered[i::shards] for i in range(shards)]


def check_shards(shards, n_targets: int) -> tuple[int, str | None]:
    """(shards to queue, note): a count above the number of targets is clamped to it, with a note."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConceptSegError(f"shards must be a whole number of at least 1, got {shards!r}.")
    if n_targets and shards > n_targets:
        return n_targets, (f"{shards} shards asked for {n_targets} target(s): queued {n_targets} shards "
                           "of one target each (a shard without targets would have nothing to do).")
    return min(shards, n_targets), None


# --- queueing ----------------------------------------------------------------------------


def queue_operation(dataset, params: dict, label: str) -> str:
    """Queues one shard as a delegated operation on the dataset's database; returns its id."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    context = ExecutionContext(request_params={"dataset_name": dataset.name, "dataset_id": str(dataset._doc.id),
                                               "params": params})
    doc = DelegatedOperationService().queue_operation(operator=operator_uri(), label=label, context=context)
    return str(doc.id)


def queue_shards(dataset, run_key: str, run_id: str, pred_field: str, todo_ids: list[str], shards: int) -> list[str]:
    """Queues the shards of a recorded run; returns their operation ids.

    Every record (and its targets) is written before any operation is queued, so a worker
    that claims an operation at once finds its record. Raises :class:`ShardQueueError`
    when queueing fails part way: the shards not queued are recorded as such (dead, so
    ``--requeue-dead`` queues them), never left pending.
    """
    clear_records(dataset, run_id)  # a resumed run starts its shards afresh
    store, dataset_id, op_ids = execution_store(dataset), dataset._doc.id, []
    parts = split_targets(todo_ids, shards)
    tickets = [uuid.uuid4().hex for _ in parts]
    for index, ids in enumerate(parts):
        store.set(targets_key(run_id, index), ids)
        update_record(dataset_id, run_id, index, stamp=("queued_at", "pending_since"), upsert=True, replace=dict(
            run_id=run_id, index=index, shards=len(parts), op_id=QUEUEING, ticket=tickets[index], state="queued",
            attempt=1, starts=0, targets=len(ids)))
    for index, ids in enumerate(parts):
        params = dict(run_id=run_id, index=index, shards=len(parts), target_ids=ids, attempt=1, ticket=tickets[index])
        try:
            op_id = queue_operation(dataset, params, f"conceptseg {pred_field}: shard {index + 1}/{len(parts)}")
        except Exception as e:
            for left in range(index, len(parts)):
                update_record(dataset_id, run_id, left, dict(op_id=None, state="not queued",
                                                             error=f"queueing failed: {type(e).__name__}: {e}"),
                              when={"op_id": QUEUEING, "ticket": tickets[left]})
            raise ShardQueueError(
                f"Queueing shard {index + 1} of {len(parts)} failed ({type(e).__name__}: {e}); "
                f"{index} shard(s) are queued. Queue the others with `conceptseg shards --dataset {dataset.name} "
                f"--pred-field {pred_field} --requeue-dead`, or delete the run.", op_ids) from e
        settle(dataset_id, run_id, index, tickets[index], op_id)
        op_ids.append(op_id)
    return op_ids


def settle(dataset_id, run_id: str, index: int, ticket: str, op_id: str) -> None:
    """Names the queued operation in its record, unless the worker that claimed it already did."""
    update_record(dataset_id, run_id, index, dict(op_id=op_id), when={"op_id": {"$in": list(PENDING)}, "ticket": ticket})


def refuse_busy(dataset, run_id: str) -> None:
    """A run whose shards are still queued or running cannot be started again under the same id."""
    from conceptseg.runs.shards.store import shard_active

    now = db_time()
    busy = [r["index"] + 1 for r in shard_records(dataset, run_id) if shard_active(r, now)]
    if busy:
        raise ConceptSegError(
            f"Shard(s) {', '.join(map(str, busy))} of this run are still queued or running: wait for them "
            "(`conceptseg shards`), re-queue dead ones (--requeue-dead), or pass overwrite to start over.")


def segment_sharded(demonstrations, targets, mask_field: str, pred_field: str, shards: int, route: str = "auto",
                    threshold: float | None = None, concept: str = "concept", overwrite: bool = False,
                    resume: bool = False, instances: bool = True, output_dir: str | None = None, model=None,
                    classes=None, resize_masks: bool = False, prompt_template: str | None = None,
                    batch_size: int = 1, prefix_reuse: bool = True) -> dict:
    """Chooses the route once, records the run and queues its targets as ``shards`` delegated operations.

    Same arguments and checks as :func:`conceptseg.runs.jobs.segment_by_demonstration`; returns
    the queued run (route, verification, targets, operation ids) without segmenting anything.
    """
    from conceptseg.routes.router import DEFAULT_THRESHOLD

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if model is not None and not isinstance(model, str):
        raise ConceptSegError("A sharded run loads its model on every worker: give the model as a bundle directory, "
                              "zoo name or hub id, not a loaded bundle.")
    if targets._is_frames or targets.media_type != "image":
        raise ConceptSegError("Sharded runs segment image samples; run video datasets without --shards.")
    run = plan.prepare(demonstrations, targets, mask_field, pred_field, route=route, threshold=threshold, model=model,
                       classes=classes, instances=instances, overwrite=overwrite, resume=resume)
    dataset, run_key, run_id, targets = run.dataset, run.run_key, run.run_id, run.targets
    todo_ids = run.todo.values("id")
    n, note = check_shards(shards, len(todo_ids))
    refuse_busy(dataset, run_id)
    # Before anything is recorded or queued: every shard writes its masks there.
    out_dir = plan.output_folder(dataset, pred_field, output_dir)
    # The prompt template is read and checked here; every worker reads the same path.
    learned = plan.learn(run, mask_field, concept, route, threshold, model, prompt_template, prefix_reuse, resize_masks)
    choice, demos = learned.choice, learned.demos
    plan.ensure_mask_targets(targets, pred_field, learned.concept)
    demo_file = demonstrations_path(out_dir, run_id)
    save_demonstrations(demos, demo_file)
    record = dict(
        method="conceptseg.segment_by_demonstration", run_id=run_id, output_dir=out_dir, pred_field=pred_field,
        instances_field=run.inst_field, demonstration_ids=run.demo_ids, demonstrations=len(demos),
        negative_demonstrations=learned.negatives, box_only_detections=learned.found.box_only,
        classes_found=learned.found.classes, warnings=learned.found.warnings, route=choice.route.name,
        verification=choice.verification, verifications={v.route: v.scores for v in choice.verifications},
        verified=choice.verified, reason=choice.reason, rule=choice.route.rule(), concept=learned.concept,
        question=learned.question, frames=False, fit_seconds=choice.fit_seconds, targets=len(targets),
        skipped=len(targets) - len(todo_ids), shards=n, shards_requested=shards, demonstrations_file=demo_file,
        prompt_template=os.path.abspath(prompt_template) if prompt_template else None, batch_size=batch_size,
        prefix_reuse=bool(prefix_reuse), **run.settings,
    )
    plan.start_record(targets, run_key, record)
    try:
        op_ids = queue_shards(dataset, run_key, run_id, pred_field, todo_ids, n)
    except ShardQueueError as e:
        if e.queued:  # the queued shards write the field: the run holds it
            shard_lock.hold(dataset, pred_field, run_key, run_id)
        raise
    if op_ids:  # the field stays locked until the last shard ends, not only while queueing
        shard_lock.hold(dataset, pred_field, run_key, run_id)
    summary = dict(run_key=run_key, run_id=run_id, queued=True, operations=op_ids, note=note,
                   failures=run.unreadable, **{k: record[k] for k in (
                       "pred_field", "instances_field", "route", "verification", "verified", "reason", "rule",
                       "warnings", "targets", "skipped", "shards", "shards_requested", "fit_seconds")})
    if not op_ids:  # nothing left to do (a resumed run already finished): the record is complete now
        finish_if_done(dataset, run_id)
    return summary


