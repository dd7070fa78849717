"""A sharded run holds its output field's lock for its whole life, not only while it is queued.

The process that queues the shards ends long before they do, so its lock document (see
:mod:`conceptseg.locks`) is handed to the run: the document then names the run (dataset id,
run id) instead of a process, and counts as held while the run still exists, has no
results yet and has a shard queued, running or being (re-)queued. Nothing has to renew it:
a worker that dies leaves its shard RUNNING (held) until ``requeue_dead`` queues a new
attempt (still held); the last shard's aggregate and ``delete-run`` release it, and a run
whose shards all ended without that (failed, operations deleted, a re-queue that never
reached the queue) is found not to hold it by the next run that asks.
"""

from __future__ import annotations

from conceptseg import locks

# Operation states in which a shard may still write labels.
_ACTIVE = ("queued", "scheduled", "running")
REQUEUE_MARK = "shard re-queued"  # in the error requeue_dead gives the attempt it replaces


def shard_active(record: dict, now: float | None = None) -> bool:
    """Whether a shard may still write: its operation is queued or running, or it is being queued.

    A record awaiting its operation (op_id "queueing"/"requeueing") is active while the
    operation of its ticket is, or, before one is found, for ``STALE_AFTER`` seconds of the
    database's clock: a queueing process that died in between leaves no lock behind.
    """
    from conceptseg.shards import PENDING, STALE_AFTER, _op, db_time, pending_op

    if record.get("op_id") in PENDING:
        op = pending_op(record)
        if op is None:
            now = db_time() if now is None else now
            return now - (record.get("pending_since") or 0.0) <= STALE_AFTER
    else:
        op = _op(record.get("op_id"))
    return op is not None and op.run_state in _ACTIVE


def run_holds(doc: dict) -> bool:
    """Whether the sharded run a lock document names still writes its field."""
    from bson import ObjectId
    from fiftyone.core.odm import get_db_conn
    from fiftyone.operators.store import ExecutionStore

    from conceptseg.shards import STORE, db_time

    dataset_id = ObjectId(doc["dataset_id"])
    run = get_db_conn().runs.find_one({"_dataset_id": dataset_id, "config.run_id": doc["run_id"]}, {"results": 1})
    if run is None or run.get("results"):  # deleted, or aggregated
        return False
    store = ExecutionStore.create(STORE, dataset_id)
    keys = [k for k in store.list_keys() if k.startswith(doc["run_id"] + ":")]
    now = db_time()
    return any(shard_active(store.get(k) or {}, now) for k in keys)


def hold(dataset, pred_field: str, run_key: str, run_id: str) -> None:
    """Makes the run hold ``pred_field``: this process's lock is handed to it, or the lock is taken for it.

    Raises :class:`conceptseg.locks.FieldLockedError` when another run holds the field.
    """
    locks.hand_to_run(dataset.name, pred_field, dict(run_id=run_id, run_key=run_key, dataset_id=str(dataset._doc.id)))


def take(dataset, pred_field: str, run_key: str, run_id: str) -> None:
    """Takes ``pred_field`` for the run again (re-queued shards write it); FieldLockedError if another run has it."""
    locks.acquire(dataset.name, pred_field, "sharded run",
                  dict(run_id=run_id, run_key=run_key, dataset_id=str(dataset._doc.id)))


def release(dataset, pred_field: str, run_id: str) -> bool:
    """Releases the field if this run holds it (its shards are done, or it was deleted)."""
    return locks.release_run(dataset.name, pred_field, run_id)
