"""The shards' records: one per shard in the dataset's execution store ``conceptseg_shards``.

Read and written by the queue, the workers, the watch, the run records and the field locks;
this module imports none of them, so each can ask it whether a shard still writes.
"""

from __future__ import annotations

import datetime
import socket

STORE = "conceptseg_shards"
# Seconds between a running shard's heartbeats, and without one before its worker counts as dead.
HEARTBEAT_SECONDS = 5.0
STALE_AFTER = 60.0
# A record's op_id while its shard's next operation is being queued (the record is written first).
QUEUEING, REQUEUEING = "queueing", "requeueing"
PENDING = (QUEUEING, REQUEUEING)
# The database's clock in seconds since the epoch, as an update expression.
_DB_SECONDS = {"$divide": [{"$toLong": "$$NOW"}, 1000]}


def execution_store(dataset):
    from fiftyone.operators.store import ExecutionStore

    return ExecutionStore.create(STORE, dataset._doc.id)


def record_key(run_id: str, index: int) -> str:
    return f"{run_id}:{index:05d}"


def targets_key(run_id: str, index: int) -> str:
    """Where a shard's target ids are kept (not under the records' prefix): a re-queue needs no old operation."""
    return f"targets/{record_key(run_id, index)}"


def records_collection():
    """The execution store's collection: records are updated there in place, conditionally."""
    from fiftyone.core.odm import get_db_conn
    from fiftyone.factory.repos.execution_store import MongoExecutionStoreRepo

    return get_db_conn()[MongoExecutionStoreRepo.COLLECTION_NAME]


def db_time() -> float:
    """The database's clock, in seconds since the epoch: what every staleness is judged by."""
    from fiftyone.core.odm import get_db_conn
    from pymongo.errors import OperationFailure

    db = get_db_conn()
    try:
        local = db.command("hello")["localTime"]
    except OperationFailure:  # a server before MongoDB 4.4.2
        local = db.command("isMaster")["localTime"]
    if local.tzinfo is None:
        local = local.replace(tzinfo=datetime.timezone.utc)
    return local.timestamp()


def update_record(dataset_id, run_id: str, index: int, changes: dict | None = None, when: dict | None = None,
                  stamp: tuple = (), replace: dict | None = None, upsert: bool = False) -> bool:
    """One conditional update of a shard's record; returns whether it landed.

    ``changes`` (field -> value) and ``stamp`` (fields set to the database's clock) are
    written only where the record matches ``when`` (field -> value or query operator, or
    ``"$or"`` -> list of such dicts); ``replace`` sets the whole record first. Nothing is
    read before: the database applies the condition and the write as one operation.
    """
    query = {"store_name": STORE, "key": record_key(run_id, index), "dataset_id": dataset_id}
    for name, condition in (when or {}).items():
        if name == "$or":
            query["$or"] = [{f"value.{k}": v for k, v in alt.items()} for alt in condition]
        else:
            query[f"value.{name}"] = condition
    stages, top = [], {"updated_at": "$$NOW"}
    if replace is not None:
        top.update(value={"$literal": replace}, policy="persist", expires_at=None,
                   created_at={"$ifNull": ["$created_at", "$$NOW"]})
        stages.append({"$set": top})
        top = {}
    fields = {f"value.{k}": {"$literal": v} for k, v in (changes or {}).items()}
    fields.update({f"value.{k}": _DB_SECONDS for k in stamp})
    fields.update(top)
    if fields:
        stages.append({"$set": fields})
    result = records_collection().update_one(query, stages, upsert=upsert)
    return bool(result.matched_count or result.upserted_id is not None)


def pending_op(record: dict):
    """The operation queued for a record's pending attempt (found by its ticket), or None."""
    from fiftyone.core.odm import get_db_conn
    from fiftyone.factory.repos.delegated_operation import MongoDelegatedOperationRepo

    if not record.get("ticket"):
        return None
    doc = get_db_conn()[MongoDelegatedOperationRepo.COLLECTION_NAME].find_one(
        {"context.request_params.params.ticket": record["ticket"]}, {"_id": 1})
    return operation(str(doc["_id"])) if doc else None


def shard_records(dataset, run_id: str) -> list[dict]:
    """The shard records of a run, by shard index."""
    store = execution_store(dataset)
    keys = sorted(k for k in store.list_keys() if k.startswith(run_id + ":"))
    return [r for r in (store.get(k) for k in keys) if r is not None]


def clear_records(dataset, run_id: str) -> None:
    store = execution_store(dataset)
    for key in store.list_keys():
        if key.startswith((run_id + ":", f"targets/{run_id}:")):
            store.delete(key)


def run_doc(dataset, run_id: str) -> dict | None:
    """The run's document, read from the database (not the cached dataset), or None once deleted."""
    from fiftyone.core.odm import get_db_conn

    return get_db_conn().runs.find_one({"_dataset_id": dataset._doc.id, "config.run_id": run_id},
                                       {"key": 1, "config": 1, "timestamp": 1, "results": 1})


def operation(op_id):
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    if not op_id:
        return None
    try:
        return DelegatedOperationService().get(ObjectId(op_id))
    except Exception:  # deleted with `fiftyone delegated delete`
        return None


def pid_alive(record: dict) -> bool:
    """Whether the worker process of a record (on this host) still runs (not reused, not a zombie)."""
    import psutil

    try:
        proc = psutil.Process(record["pid"])
        same = abs(proc.create_time() - record.get("pid_started", proc.create_time())) < 1.0
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def progress_of(dataset, run_id: str) -> dict:
    """{"shards": N, "completed": k, "done": targets finished so far} for ``conceptseg runs``."""
    records = shard_records(dataset, run_id)
    return dict(shards=len(records), completed=sum(r.get("state") == "completed" for r in records),
                done=sum(r.get("done", 0) + r.get("resumed", 0) for r in records))


# --- whether a shard may still write (the field locks ask) ---------------------------------


# Operation states in which a shard may still write labels.
ACTIVE_STATES = ("queued", "scheduled", "running")


def shard_active(record: dict, now: float | None = None) -> bool:
    """Whether a shard may still write: its operation is queued or running, or it is being queued.

    A record awaiting its operation (op_id "queueing"/"requeueing") is active while the
    operation of its ticket is, or, before one is found, for ``STALE_AFTER`` seconds of the
    database's clock: a queueing process that died in between leaves no lock behind.
    """
    if record.get("op_id") in PENDING:
        op = pending_op(record)
        if op is None:
            now = db_time() if now is None else now
            return now - (record.get("pending_since") or 0.0) <= STALE_AFTER
    else:
        op = operation(record.get("op_id"))
    return op is not None and op.run_state in ACTIVE_STATES


def run_holds(doc: dict) -> bool:
    """Whether the sharded run a lock document names still writes its field."""
    from bson import ObjectId
    from fiftyone.core.odm import get_db_conn
    from fiftyone.operators.store import ExecutionStore

    dataset_id = ObjectId(doc["dataset_id"])
    run = get_db_conn().runs.find_one({"_dataset_id": dataset_id, "config.run_id": doc["run_id"]}, {"results": 1})
    if run is None or run.get("results"):  # deleted, or aggregated
        return False
    store = ExecutionStore.create(STORE, dataset_id)
    keys = [k for k in store.list_keys() if k.startswith(doc["run_id"] + ":")]
    now = db_time()
    return any(shard_active(store.get(k) or {}, now) for k in keys)


# --- whether a shard's worker died (the watch and the run records ask) -------------------------


def claim_age(dataset, record: dict, op, now: float) -> float:
    """Seconds (database clock) since the running ``op`` was first seen unclaimed in its record.

    A worker takes its record at once; an operation RUNNING whose record it never wrote is
    stamped the first time it is seen so (one conditional update), and ages from there.
    """
    op_id = str(op.id)
    if record.get("claim_seen_op") == op_id and record.get("claim_seen_at"):
        return now - record["claim_seen_at"]
    update_record(dataset._doc.id, record["run_id"], record["index"], dict(claim_seen_op=op_id),
                  when={"op_id": record.get("op_id"), "heartbeat": record.get("heartbeat"),
                        "claim_seen_op": record.get("claim_seen_op")}, stamp=("claim_seen_at",))
    return 0.0


def dead_reason(dataset, record: dict, op, now: float, stale_after: float) -> str | None:
    """Why a shard's worker counts as dead, or None while it is queued, alive or done.

    ``op`` is the operation the record names, or for a record awaiting one, the operation
    queued with its ticket (None when there is none).
    """
    waiting = record.get("op_id") in PENDING
    if waiting and op is None:
        age = now - (record.get("pending_since") or 0.0)
        if age <= stale_after:
            return None  # being queued right now
        return f"its {'re-' if record['op_id'] == REQUEUEING else ''}queueing never reached the queue ({age:.0f} s ago)"
    if op is None:
        return record.get("error") or "its delegated operation is gone"
    state = op.run_state
    if state == "failed":
        return "its operation failed"
    if state != "running":
        return None
    if waiting or not record.get("heartbeat"):  # claimed, but the shard never wrote
        last_seen = claim_age(dataset, record, op, now)
        return f"claimed but silent for {last_seen:.0f} s" if last_seen > stale_after else None
    if record.get("host") == socket.gethostname() and record.get("pid") and not pid_alive(record):
        return f"worker pid {record['pid']} on this host is gone"
    age = now - record["heartbeat"]
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s"
    return None
