"""Watching a sharded run's shards, and re-queueing those whose worker died (`conceptseg shards`).

A shard counts as dead when its operation failed or was deleted, or it is RUNNING while its
worker's pid on this host is gone or its heartbeat is older than ``stale_after``. The new
attempt resumes: the targets that already carry the run's label are skipped.
"""

from __future__ import annotations

import datetime
import socket
import time

from conceptseg import shard_lock
from conceptseg.errors import ConceptSegError
from conceptseg.shards import (STALE_AFTER, _key, _op, _pid_alive, _run_doc, _store, finish_if_done,
                               queue_operation, shard_records)


def _dead_reason(record: dict, op, now: float, stale_after: float) -> str | None:
    """Why a shard's worker counts as dead, or None while it is queued, alive or done."""
    if op is None:
        return "its delegated operation is gone"
    state = op.run_state
    if state == "failed":
        return "its operation failed"
    if state != "running":
        return None
    if record.get("op_id") == str(op.id) and record.get("host") == socket.gethostname() and record.get("pid"):
        if not _pid_alive(record):
            return f"worker pid {record['pid']} on this host is gone"
    if record.get("op_id") == str(op.id) and record.get("heartbeat"):
        last = record["heartbeat"]
    else:  # claimed, but the shard never wrote: count from the claim
        last = op.started_at.replace(tzinfo=datetime.timezone.utc).timestamp() if op.started_at else now
    if now - last > stale_after:
        return f"no heartbeat for {now - last:.0f} s"
    return None


def shard_status(dataset, pred_field: str, stale_after: float = STALE_AFTER) -> dict:
    """The shards of the newest sharded run writing ``pred_field``, each with its state and whether it is dead."""
    from conceptseg.runs import RunNotFoundError, keys_for_field

    for key in keys_for_field(dataset, pred_field):
        config = dataset.get_run_info(key).config
        if getattr(config, "shards", None):
            break
    else:
        raise RunNotFoundError(f"No sharded conceptseg run writes {pred_field!r} on dataset {dataset.name!r}.")
    now, rows = time.time(), []
    for record in shard_records(dataset, config.run_id):
        op = _op(record.get("op_id"))
        rows.append(dict(index=record["index"], op_id=record.get("op_id"),
                         op_state=op.run_state if op is not None else None,
                         state=record.get("state"), attempt=record.get("attempt", 1), targets=record.get("targets"),
                         done=record.get("done", 0) + record.get("resumed", 0), host=record.get("host"),
                         pid=record.get("pid"), heartbeat_age=(now - record["heartbeat"]) if record.get("heartbeat") else None,
                         dead=_dead_reason(record, op, now, stale_after)))
    if rows and all(r["state"] == "completed" for r in rows) and not (_run_doc(dataset, config.run_id) or {}).get("results"):
        finish_if_done(dataset, config.run_id)  # the last worker died between its shard and the aggregate
    return dict(run_key=key, run_id=config.run_id, shards=rows)


def requeue_dead(dataset, pred_field: str, stale_after: float = STALE_AFTER) -> list[dict]:
    """Re-queues every shard whose worker died; the new operation resumes (finished targets are skipped).

    A RUNNING operation is first marked failed, atomically (only if still RUNNING), so a shard
    that just completed is left alone; the store's compare-and-set lets one caller win.
    """
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

    service, status, done = DelegatedOperationService(), shard_status(dataset, pred_field, stale_after), []
    store = _store(dataset)
    if any(row["dead"] for row in status["shards"]):  # the new attempts write the field: the run must hold it
        shard_lock.take(dataset, pred_field, status["run_key"], status["run_id"])
    for row in status["shards"]:
        if not row["dead"]:
            continue
        key = _key(status["run_id"], row["index"])
        record = store.get(key)
        op = _op(row["op_id"])
        if op is not None and op.run_state == "running":
            error = ExecutionResult(error=f"conceptseg: worker dead ({row['dead']}); {shard_lock.REQUEUE_MARK}")
            if service.set_failed(ObjectId(row["op_id"]), result=error, required_state=ExecutionRunState.RUNNING) is None:
                continue  # it finished or failed meanwhile
        params = dict(run_id=status["run_id"], index=row["index"], shards=record.get("shards"),
                      target_ids=list(op.context.request_params["params"]["target_ids"]) if op is not None else None)
        if params["target_ids"] is None:
            raise ConceptSegError(f"Shard {row['index'] + 1}'s operation was deleted: its targets are unknown; "
                                  "resume the run instead (segment --resume).")
        label = f"conceptseg {pred_field}: shard {row['index'] + 1}/{record.get('shards')} (attempt {row['attempt'] + 1})"
        new = dict(record, state="queued", attempt=row["attempt"] + 1, pid=None, host=None, heartbeat=None,
                   op_id="requeueing")
        if not store.compare_and_set(key, record, new):
            continue  # another caller re-queued it
        new_id = queue_operation(dataset, params, label)
        store.set(key, dict(new, op_id=new_id))
        done.append(dict(index=row["index"], reason=row["dead"], old_op_id=row["op_id"], op_id=new_id))
    return done
