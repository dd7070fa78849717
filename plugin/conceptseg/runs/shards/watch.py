"""Watching a sharded run's shards, and re-queueing those whose worker died (`conceptseg shards`).

A shard counts as dead when its operation failed or was deleted or never reached the queue,
or it is RUNNING while its worker's pid on this host is gone or its heartbeat is older than
``stale_after``. Ages are read on the database's clock, which stamps every heartbeat, so a
worker host whose clock is off neither dies early nor lives forever. The new attempt
resumes: the targets that already carry the run's label are skipped.
"""

from __future__ import annotations

import uuid

from conceptseg.runs.shards import lock as shard_lock
from conceptseg.errors import ConceptSegError
from conceptseg.runs.shards.worker import finish_if_done
from conceptseg.runs.shards.queue import queue_operation, settle
from conceptseg.runs.shards.store import (PENDING, REQUEUEING, STALE_AFTER, db_time, dead_reason, execution_store,
                                          operation, pending_op, run_doc, shard_records, targets_key,
                                          update_record)


def _judge(dataset, pred_field: str, stale_after: float):
    """(run key, run id, [(record, its operation, dead reason, database time)]) of the newest sharded run
    writing the field."""
    from conceptseg.runs.records import RunNotFoundError, fresh, keys_for_field

    fresh(dataset)  # the run was most likely queued from another process
    for key in keys_for_field(dataset, pred_field):
        config = dataset.get_run_info(key).config
        if getattr(config, "shards", None):
            break
    else:
        raise RunNotFoundError(f"No sharded conceptseg run writes {pred_field!r} on dataset {dataset.name!r}.")
    now, judged = db_time(), []
    for record in shard_records(dataset, config.run_id):
        op = pending_op(record) if record.get("op_id") in PENDING else operation(record.get("op_id"))
        judged.append((record, op, dead_reason(dataset, record, op, now, stale_after), now))
    return key, config.run_id, judged


def shard_status(dataset, pred_field: str, stale_after: float = STALE_AFTER) -> dict:
    """The shards of the newest sharded run writing ``pred_field``, each with its state and whether it is dead."""
    key, run_id, judged = _judge(dataset, pred_field, stale_after)
    rows = []
    for record, op, dead, now in judged:
        rows.append(dict(index=record["index"], op_id=str(op.id) if op is not None else record.get("op_id"),
                         op_state=op.run_state if op is not None else None,
                         state=record.get("state"), attempt=record.get("attempt", 1), targets=record.get("targets"),
                         done=record.get("done", 0) + record.get("resumed", 0), host=record.get("host"),
                         pid=record.get("pid"),
                         heartbeat_age=(now - record["heartbeat"]) if record.get("heartbeat") else None,
                         dead=dead))
    if rows and all(r["state"] == "completed" for r in rows) and not (run_doc(dataset, run_id) or {}).get("results"):
        finish_if_done(dataset, run_id)  # the last worker died between its shard and the aggregate
    return dict(run_key=key, run_id=run_id, shards=rows)


def _targets(store, record: dict, op) -> list[str] | None:
    """A shard's target ids: kept in the store at queueing, else (older runs) its operation's params."""
    ids = store.get(targets_key(record["run_id"], record["index"]))
    if ids is None and op is not None:
        ids = op.context.request_params["params"].get("target_ids")
    return list(ids) if ids is not None else None


def requeue_dead(dataset, pred_field: str, stale_after: float = STALE_AFTER) -> list[dict]:
    """Re-queues every shard whose worker died; the new operation resumes (finished targets are skipped).

    Per dead shard: the record is fenced first, in one conditional update that matches only
    the record exactly as it was judged dead (same operation, attempt, heartbeat, ticket), so
    of two callers one wins and a worker that wrote meanwhile keeps its shard; from then on
    the old worker's writes match nothing. Its operation, if still RUNNING, is marked failed
    (only if still RUNNING), then the new attempt is queued. If queueing fails, the record is
    put back as it was (dead, holding nothing) and the error raised.
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

    service, done = DelegatedOperationService(), []
    run_key, run_id, judged = _judge(dataset, pred_field, stale_after)
    store, dataset_id = execution_store(dataset), dataset._doc.id
    if any(dead for _, _, dead, _ in judged):  # the new attempts write the field: the run must hold it
        shard_lock.take(dataset, pred_field, run_key, run_id)
    for record, op, dead, _ in judged:
        if not dead:
            continue
        index = record["index"]
        ids = _targets(store, record, op)
        if ids is None:
            raise ConceptSegError(f"Shard {index + 1}'s operation was deleted: its targets are unknown; "
                                  "resume the run instead (segment --resume).")
        attempt, ticket = int(record.get("attempt", 1)) + 1, uuid.uuid4().hex
        if op is not None:
            replaced = str(op.id)
        else:  # the operation was deleted or never queued (a stuck re-queue keeps naming the one before)
            replaced = record.get("requeued_from") if record.get("op_id") in PENDING else record.get("op_id")
        fence = dict(state="queued", attempt=attempt, ticket=ticket, op_id=REQUEUEING, pid=None, host=None,
                     heartbeat=None, requeued_from=replaced, error=None, claim_seen_op=None, claim_seen_at=None)
        judged_as = {name: record.get(name) for name in ("op_id", "attempt", "heartbeat", "ticket")}
        if not update_record(dataset_id, run_id, index, fence, when=judged_as, stamp=("pending_since",)):
            continue  # another caller re-queued it, or its worker wrote: not the record judged dead
        if op is not None and op.run_state == "running":
            error = ExecutionResult(error=f"conceptseg: worker dead ({dead}); {shard_lock.REQUEUE_MARK}")
            service.set_failed(op.id, result=error, required_state=ExecutionRunState.RUNNING)
        shards = record.get("shards")
        params = dict(run_id=run_id, index=index, shards=shards, target_ids=ids, attempt=attempt, ticket=ticket)
        try:
            new_id = queue_operation(dataset, params, f"conceptseg {pred_field}: shard {index + 1}/{shards} "
                                                      f"(attempt {attempt})")
        except Exception as e:
            update_record(dataset_id, run_id, index, replace=dict(record, error=f"re-queueing failed: {e}"),
                          when={"op_id": REQUEUEING, "ticket": ticket})
            raise ConceptSegError(
                f"Re-queueing shard {index + 1} failed ({type(e).__name__}: {e}); its record is back as it was "
                "(dead, holding nothing): run `conceptseg shards --requeue-dead` again.") from e
        settle(dataset_id, run_id, index, ticket, new_id)
        done.append(dict(index=index, reason=dead, old_op_id=fence["requeued_from"], op_id=new_id))
    return done
