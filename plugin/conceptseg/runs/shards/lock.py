"""A sharded run holds its output field's lock for its whole life, not only while it is queued.

The process that queues the shards ends long before they do, so its lock document (see
:mod:`conceptseg.runs.locks`) is handed to the run: the document then names the run (dataset id,
run id) instead of a process, and counts as held while the run still exists, has no
results yet and has a shard queued, running or being (re-)queued. Nothing has to renew it:
a worker that dies leaves its shard RUNNING (held) until ``requeue_dead`` queues a new
attempt (still held); the last shard's aggregate and ``delete-run`` release it, and a run
whose shards all ended without that (failed, operations deleted, a re-queue that never
reached the queue) is found not to hold it by the next run that asks.
"""

from __future__ import annotations

from conceptseg.runs import locks

REQUEUE_MARK = "shard re-queued"  # in the error requeue_dead gives the attempt it replaces


def hold(dataset, pred_field: str, run_key: str, run_id: str) -> None:
    """Makes the run hold ``pred_field``: this process's lock is handed to it, or the lock is taken for it.

    Raises :class:`conceptseg.runs.locks.FieldLockedError` when another run holds the field.
    """
    locks.hand_to_run(dataset.name, pred_field, dict(run_id=run_id, run_key=run_key, dataset_id=str(dataset._doc.id)))


def take(dataset, pred_field: str, run_key: str, run_id: str) -> None:
    """Takes ``pred_field`` for the run again (re-queued shards write it); FieldLockedError if another run has it."""
    locks.acquire(dataset.name, pred_field, "sharded run",
                  dict(run_id=run_id, run_key=run_key, dataset_id=str(dataset._doc.id)))


def release(dataset, pred_field: str, run_id: str) -> bool:
    """Releases the field if this run holds it (its shards are done, or it was deleted)."""
    return locks.release_run(dataset.name, pred_field, run_id)
