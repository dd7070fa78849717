"""One writer per output field: a lock document in FiftyOne's own MongoDB database.

Two runs writing the same field would both pass the empty-field check, interleave their
labels and leave the run record of whichever finished last. A run therefore inserts a
document ``{_id: "<dataset>:<field>"}`` into the ``conceptseg_locks`` collection (an
insert on a unique ``_id`` is atomic in MongoDB, so exactly one of two racing runs gets
it) holding who it is: pid, host, process start time, started at, what. The document is
deleted when the run ends, however it ends. A run killed outright leaves it behind; the
next run on the same host sees that the holder's process is gone (or its pid now belongs
to a younger process) and takes the lock over, with a warning. A holder on another host
cannot be checked from here: the message says how to release its lock by hand.

A sharded run outlives the process that queued it: that process hands its lock to the run
(:func:`hand_to_run`), and the document then counts as held while the run still has shards
to write (:mod:`conceptseg.runs.shards.lock`), whichever workers run them.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Iterator

from conceptseg.errors import ConceptSegError

COLLECTION = "conceptseg_locks"
logger = logging.getLogger(__name__)
_held = threading.local()  # lock id -> token of the locks this thread holds through field_lock


class FieldLockedError(ConceptSegError):
    """Another run is writing the same output field."""


def _collection():
    import fiftyone.core.odm.database as fod

    return fod.get_db_conn()[COLLECTION]


def _process_started(pid: int) -> float | None:
    """The start time of process ``pid`` on this host, None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # it exists, owned by someone else
        return 0.0


def this_process() -> dict:
    """Who holds a lock (or a scratch dataset): this process's pid, host, start time and command."""
    return dict(pid=os.getpid(), host=socket.gethostname(), process_started=_process_started(os.getpid()),
                started_at=time.time(), command=" ".join(sys.argv[:6]))


def is_stale(doc: dict) -> bool:
    """Whether the lock's holder is known to be gone: same host, and its process is not running.

    A sharded run's lock is gone once the run has no shard left to write.
    """
    if doc.get("run_id"):
        from conceptseg.runs.shards.store import run_holds

        return not run_holds(doc)
    if doc.get("host") != socket.gethostname():
        return False
    started = _process_started(int(doc.get("pid", -1)))
    if started is None:
        return True
    # The pid was reused by a process born after the holder's (1 s slack for clock rounding).
    return started > (doc.get("process_started") or 0.0) + 1.0


def describe(doc: dict) -> str:
    """Who holds a lock, in words."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(doc.get("started_at", 0)))
    if doc.get("run_id"):
        return f"sharded run {doc.get('run_key')}, queued {when} by pid {doc.get('pid')} on {doc.get('host')}"
    return f"pid {doc.get('pid')} on {doc.get('host')}, started {when} ({doc.get('what')}: {doc.get('command')})"


def lock_id(dataset_name: str, field: str) -> str:
    """The lock document's id for ``field`` of the dataset."""
    return f"{dataset_name}:{field}"


def _refusal(held: dict, dataset_name: str, field: str) -> FieldLockedError:
    if held.get("run_id"):
        return FieldLockedError(
            f"Field {field!r} of dataset {dataset_name!r} is being written by a run spread over workers "
            f"({describe(held)}) whose shards are still queued or running: wait for them (`conceptseg shards "
            f"--dataset {dataset_name} --pred-field {field}`), delete that run (`conceptseg delete-run`) or "
            "choose another output field.")
    return FieldLockedError(
        f"Field {field!r} of dataset {dataset_name!r} is being written by another run ({describe(held)}). "
        "Wait for it to finish or choose another output field. If that run is gone (killed on another "
        f"machine), release its lock with: python -m conceptseg.runs.locks --release {dataset_name!r} {field!r}"
    )


def acquire(dataset_name: str, field: str, what: str, run: dict | None = None) -> str:
    """Takes the lock on ``field``; returns the token that releases it. Raises FieldLockedError.

    With ``run`` (run_id, run_key, dataset_id) the lock is taken for that sharded run, and a
    lock that run already holds is its own.
    """
    from pymongo.errors import DuplicateKeyError

    coll, key, token = _collection(), lock_id(dataset_name, field), uuid.uuid4().hex
    doc = dict(_id=key, dataset=dataset_name, field=field, token=token, what=what, **(run or {}),
               **this_process())
    try:
        coll.insert_one(doc)
        return token
    except DuplicateKeyError:
        held = coll.find_one({"_id": key})
    if held is None:  # released between our insert and our read: try once more
        return acquire(dataset_name, field, what, run)
    own = run is not None and held.get("run_id") == run.get("run_id")
    if not own and not is_stale(held):
        raise _refusal(held, dataset_name, field)
    # Replace exactly the document we read: of two runs taking over, one wins.
    if coll.find_one_and_replace({"_id": key, "token": held.get("token")}, doc) is None:
        return acquire(dataset_name, field, what, run)
    if not own and not held.get("run_id"):  # a finished sharded run's lock is released this way as a rule
        logger.warning("Took over the lock on %r of %r from a run that is no longer running (%s).",
                       field, dataset_name, describe(held))
    return token


def holder(dataset_name: str, field: str) -> dict | None:
    """The lock document of ``field`` while its holder is not known to be gone, else None."""
    held = _collection().find_one({"_id": lock_id(dataset_name, field)})
    return None if held is None or is_stale(held) else held


def hand_to_run(dataset_name: str, field: str, run: dict) -> str:
    """Hands the lock this thread holds on ``field`` to a sharded run (taken for it if not held); returns its token."""
    key = lock_id(dataset_name, field)
    mine = getattr(_held, "tokens", {}).get(key)
    doc = dict(_id=key, dataset=dataset_name, field=field, token=uuid.uuid4().hex, what="sharded run", **run,
               **this_process())
    if mine is not None and _collection().find_one_and_replace({"_id": key, "token": mine}, doc) is not None:
        return doc["token"]
    return acquire(dataset_name, field, "sharded run", run)


def release_run(dataset_name: str, field: str, run_id: str) -> bool:
    """Deletes the lock held by the sharded run ``run_id``; returns whether one was deleted."""
    return _collection().delete_one({"_id": lock_id(dataset_name, field), "run_id": run_id}).deleted_count == 1


def release(dataset_name: str, field: str, token: str | None = None) -> bool:
    """Deletes the lock (only ours when ``token`` is given); returns whether one was deleted."""
    query = {"_id": lock_id(dataset_name, field)}
    if token is not None:
        query["token"] = token
    return _collection().delete_one(query).deleted_count == 1


@contextlib.contextmanager
def field_lock(dataset_name: str, field: str, what: str) -> Iterator[None]:
    """Holds the lock on ``field`` for the block; released however the block ends."""
    token = acquire(dataset_name, field, what)
    key, tokens = lock_id(dataset_name, field), getattr(_held, "tokens", None)
    if tokens is None:
        tokens = _held.tokens = {}
    tokens[key] = token
    try:
        yield
    finally:
        tokens.pop(key, None)
        release(dataset_name, field, token)  # a lock handed to a sharded run has another token: kept


def locks_output_field(func):
    """Decorates a job taking ``targets`` and ``pred_field``: the whole job holds that field's lock."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        dataset = bound.arguments["targets"]._root_dataset  # a frames view writes its videos
        with field_lock(dataset.name, bound.arguments["pred_field"], func.__name__):
            from conceptseg.runs.records import fresh  # here: this module stays free of FiftyOne

            fresh(dataset)  # what another process wrote into the field before the lock was ours
            return func(*args, **kwargs)

    return wrapper


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m conceptseg.runs.locks", description="Show or release output-field locks.")
    parser.add_argument("--release", nargs=2, metavar=("DATASET", "FIELD"), help="delete the lock on FIELD of DATASET")
    args = parser.parse_args()
    if args.release:
        print("released" if release(*args.release) else "no such lock")
    for held in _collection().find():
        print(f"{held['dataset']}:{held['field']}  {describe(held)}{'  (stale)' if is_stale(held) else ''}")
