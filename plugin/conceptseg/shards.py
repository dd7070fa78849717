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
than ``stale_after``; or FAILED) is re-queued by :func:`conceptseg.shards_watch.requeue_dead`.

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

import datetime
import os
import socket
import threading
import time
import uuid

import numpy as np
from fiftyone import ViewField as F

from conceptseg import shard_lock, threads
from conceptseg.errors import ConceptSegError
from conceptseg.types import Demonstration

STORE = "conceptseg_shards"
SHARD_OPERATOR = "segment_shard"
# Seconds between a running shard's heartbeats, and without one before its worker counts as dead.
HEARTBEAT_SECONDS = 5.0
STALE_AFTER = 60.0
# A record's op_id while its shard's next operation is being queued (the record is written first).
QUEUEING, REQUEUEING = "queueing", "requeueing"
PENDING = (QUEUEING, REQUEUEING)
# The database's clock in seconds since the epoch, as an update expression.
_DB_SECONDS = {"$divide": [{"$toLong": "$$NOW"}, 1000]}


class RunGoneError(ConceptSegError):
    """The run a shard belongs to was deleted."""


class ShardSuperseded(ConceptSegError):
    """The shard was handed to a newer attempt (re-queued): this worker's writes no longer land."""


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


# --- the store ---------------------------------------------------------------------------


def _store(dataset):
    from fiftyone.operators.store import ExecutionStore

    return ExecutionStore.create(STORE, dataset._doc.id)


def _key(run_id: str, index: int) -> str:
    return f"{run_id}:{index:05d}"


def _targets_key(run_id: str, index: int) -> str:
    """Where a shard's target ids are kept (not under the records' prefix): a re-queue needs no old operation."""
    return f"targets/{_key(run_id, index)}"


def _records():
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
    query = {"store_name": STORE, "key": _key(run_id, index), "dataset_id": dataset_id}
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
    result = _records().update_one(query, stages, upsert=upsert)
    return bool(result.matched_count or result.upserted_id is not None)


def pending_op(record: dict):
    """The operation queued for a record's pending attempt (found by its ticket), or None."""
    from fiftyone.core.odm import get_db_conn
    from fiftyone.factory.repos.delegated_operation import MongoDelegatedOperationRepo

    if not record.get("ticket"):
        return None
    doc = get_db_conn()[MongoDelegatedOperationRepo.COLLECTION_NAME].find_one(
        {"context.request_params.params.ticket": record["ticket"]}, {"_id": 1})
    return _op(str(doc["_id"])) if doc else None


def shard_records(dataset, run_id: str) -> list[dict]:
    """The shard records of a run, by shard index."""
    store = _store(dataset)
    keys = sorted(k for k in store.list_keys() if k.startswith(run_id + ":"))
    return [r for r in (store.get(k) for k in keys) if r is not None]


def clear_records(dataset, run_id: str) -> None:
    store = _store(dataset)
    for key in store.list_keys():
        if key.startswith((run_id + ":", f"targets/{run_id}:")):
            store.delete(key)


def _run_doc(dataset, run_id: str) -> dict | None:
    """The run's document, read from the database (not the cached dataset), or None once deleted."""
    from fiftyone.core.odm import get_db_conn

    return get_db_conn().runs.find_one({"_dataset_id": dataset._doc.id, "config.run_id": run_id},
                                       {"key": 1, "config": 1, "timestamp": 1, "results": 1})


# --- queueing ----------------------------------------------------------------------------


def demonstrations_path(out_dir: str, run_id: str) -> str:
    """Where a sharded run keeps the demonstrations its shards re-fit on (next to its masks)."""
    return os.path.join(out_dir, ".shards", run_id, "demonstrations.npz")


def save_demonstrations(demos: list[Demonstration], path: str) -> None:
    """The demonstrations' pixels exactly as read (float images, bool masks) for every shard."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {}
    for i, d in enumerate(demos):
        arrays[f"image_{i}"], arrays[f"mask_{i}"] = d.image, d.mask
    arrays["ids"] = np.array([d.id for d in demos], dtype=str)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)  # a worker never reads a half-written file


def load_demonstrations(path: str) -> list[Demonstration]:
    """The demonstrations :func:`save_demonstrations` wrote."""
    if not os.path.isfile(path):
        raise ConceptSegError(
            f"The run's demonstrations file {path} is missing on this worker: the output directory must be "
            "shared by every worker (same path), like the media.")
    with np.load(path) as data:
        ids = [str(i) for i in data["ids"]]
        return [Demonstration(image=data[f"image_{i}"], mask=data[f"mask_{i}"], id=ids[i]) for i in range(len(ids))]


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
    store, dataset_id, op_ids = _store(dataset), dataset._doc.id, []
    parts = split_targets(todo_ids, shards)
    tickets = [uuid.uuid4().hex for _ in parts]
    for index, ids in enumerate(parts):
        store.set(_targets_key(run_id, index), ids)
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
    from conceptseg.shard_lock import shard_active

    now = db_time()
    busy = [r["index"] + 1 for r in shard_records(dataset, run_id) if shard_active(r, now)]
    if busy:
        raise ConceptSegError(
            f"Shard(s) {', '.join(map(str, busy))} of this run are still queued or running: wait for them "
            "(`conceptseg shards`), re-queue dead ones (--requeue-dead), or pass overwrite to start over.")


def _op(op_id):
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    if not op_id:
        return None
    try:
        return DelegatedOperationService().get(ObjectId(op_id))
    except Exception:  # deleted with `fiftyone delegated delete`
        return None


def segment_sharded(demonstrations, targets, mask_field: str, pred_field: str, shards: int, route: str = "auto",
                    threshold: float | None = None, concept: str = "concept", overwrite: bool = False,
                    resume: bool = False, instances: bool = True, output_dir: str | None = None, model=None,
                    classes=None, resize_masks: bool = False, prompt_template: str | None = None,
                    batch_size: int = 1, prefix_reuse: bool = True) -> dict:
    """Chooses the route once, records the run and queues its targets as ``shards`` delegated operations.

    Same arguments and checks as :func:`conceptseg.jobs.segment_by_demonstration`; returns
    the queued run (route, verification, targets, operation ids) without segmenting anything.
    """
    from conceptseg import fiftyone_io as fio
    from conceptseg import jobs
    from conceptseg.errors import EmptyViewError
    from conceptseg.outputs import writable_dir
    from conceptseg.router import DEFAULT_THRESHOLD, make_router
    from conceptseg.runs import run_identity
    from conceptseg.video import as_frames

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    jobs.check_field_name(pred_field)
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConceptSegError(f"threshold must be an IoU in [0, 1], got {threshold!r}.")
    if model is not None and not isinstance(model, str):
        raise ConceptSegError("A sharded run loads its model on every worker: give the model as a bundle directory, "
                              "zoo name or hub id, not a loaded bundle.")
    demonstrations = jobs._image_samples(demonstrations, mask_field)
    if targets._is_frames or targets.media_type != "image":
        raise ConceptSegError("Sharded runs segment image samples; run video datasets without --shards.")
    targets, unreadable = as_frames(targets)
    if len(demonstrations) == 0:
        raise EmptyViewError("No demonstrations: select samples (or tag them) whose masks show the concept.")
    dataset = targets._root_dataset
    run_key, run_id = run_identity(dataset, pred_field, resume, jobs.run_key_for(pred_field))
    inst_field = jobs.instances_field_for(pred_field) if instances else None
    if inst_field:
        jobs.check_field_name(inst_field)
    demo_ids = demonstrations.values("id")
    targets = targets.exclude(demo_ids)
    todo = jobs._targets_to_do(targets, pred_field, inst_field, mask_field, overwrite, resume, run_key, run_id)
    todo_ids = todo.values("id")
    n, note = check_shards(shards, len(todo_ids))
    classes = jobs._class_list(classes)
    settings = dict(mask_field=mask_field, classes=classes, route_requested=route, threshold=threshold, model=model)
    if resume and run_key in dataset.list_runs():
        jobs._check_resume(dataset, run_key, demo_ids, settings)
    refuse_busy(dataset, run_id)
    # Before anything is recorded or queued: every shard writes its masks there.
    out_dir = os.path.abspath(writable_dir(output_dir or jobs.default_output_dir(dataset, pred_field),
                                           "mask output directory"))

    demos, found = fio.read_demonstrations(demonstrations, mask_field, classes=classes, resize_masks=resize_masks)
    if concept == "concept" and found.classes:
        concept = ", ".join(found.classes)
    question = concept if concept != "concept" else None
    template = jobs._template(prompt_template)  # read and checked here; every worker reads the same path
    router = make_router(route, threshold, bundle=jobs._load_model(model), question=question, prompt_template=template,
                         prefix_reuse=prefix_reuse)
    choice = router.choose(demos)
    jobs._ensure_mask_targets(targets, pred_field, concept)
    demo_file = demonstrations_path(out_dir, run_id)
    save_demonstrations(demos, demo_file)
    record = dict(
        method="conceptseg.segment_by_demonstration", run_id=run_id, output_dir=out_dir, pred_field=pred_field,
        instances_field=inst_field, demonstration_ids=demo_ids, demonstrations=len(demos),
        negative_demonstrations=sum(1 for d in demos if not d.mask.any()), box_only_detections=found.box_only,
        classes_found=found.classes, warnings=found.warnings, route=choice.route.name, verification=choice.verification,
        verifications={v.route: v.scores for v in choice.verifications}, verified=choice.verified,
        reason=choice.reason, rule=choice.route.rule(), concept=concept, question=question, frames=False,
        fit_seconds=choice.fit_seconds, targets=len(targets), skipped=len(targets) - len(todo_ids),
        shards=n, shards_requested=shards, demonstrations_file=demo_file,
        prompt_template=os.path.abspath(prompt_template) if prompt_template else None, batch_size=batch_size,
        prefix_reuse=bool(prefix_reuse), **settings,
    )
    jobs._start_run(targets, run_key, record)
    try:
        op_ids = queue_shards(dataset, run_key, run_id, pred_field, todo_ids, n)
    except ShardQueueError as e:
        if e.queued:  # the queued shards write the field: the run holds it
            shard_lock.hold(dataset, pred_field, run_key, run_id)
        raise
    if op_ids:  # the field stays locked until the last shard ends, not only while queueing
        shard_lock.hold(dataset, pred_field, run_key, run_id)
    summary = dict(run_key=run_key, run_id=run_id, queued=True, operations=op_ids, note=note,
                   failures=unreadable, **{k: record[k] for k in (
                       "pred_field", "instances_field", "route", "verification", "verified", "reason", "rule",
                       "warnings", "targets", "skipped", "shards", "shards_requested", "fit_seconds")})
    if not op_ids:  # nothing left to do (a resumed run already finished): the record is complete now
        finish_if_done(dataset, run_id)
    return summary


# --- a shard on a worker -----------------------------------------------------------------


class _RecordedRule:
    """The re-fitted route, saying the rule recorded when the run chose it (a reasoning rule comes from verifying)."""

    def __init__(self, route, rule: str):
        self._route, self._rule = route, rule

    def rule(self) -> str:
        return self._rule

    def __getattr__(self, name):
        return getattr(self._route, name)


def _recorded_choice(config: dict, demos: list[Demonstration]):
    """The run's route choice, rebuilt: the named route re-fitted on the same demonstrations."""
    from conceptseg.jobs import _load_model, _template
    from conceptseg.router import RouteChoice, make_router, usable
    from conceptseg.types import Verification

    router = make_router(config["route"], config["threshold"], bundle=_load_model(config.get("model")),
                         question=config.get("question"), prompt_template=_template(config.get("prompt_template")),
                         prefix_reuse=config.get("prefix_reuse", True))
    route = router.routes[0]
    start = time.perf_counter()
    # A reused rule (reasoning-fast) is the recorded one: a worker never induces its own.
    route.refit(usable(route, demos), config.get("rule") or "")
    verifications = [Verification(name, dict(scores)) for name, scores in (config.get("verifications") or {}).items()]
    choice = RouteChoice(_RecordedRule(route, config.get("rule") or ""), verifications,
                         verified=bool(config.get("verified")), reason=config.get("reason") or "")
    choice.fit_seconds = time.perf_counter() - start
    return router, choice


def _share_cores(dataset, run_id: str) -> int:
    """Limits this worker's threads to its share of the cores: cores ÷ this run's shards running on this host.

    ``CONCEPTSEG_THREADS`` (``conceptseg worker --threads``) fixes the count instead.
    """
    if threads.explicit():
        return threads.set_threads(threads.budget())
    host = socket.gethostname()
    here = sum(1 for r in shard_records(dataset, run_id)
               if r.get("state") == "running" and r.get("host") == host and _pid_alive(r))
    return threads.set_threads(threads.cores() // max(1, here))


class _Heartbeat(threading.Thread):
    """Writes the shard's heartbeat and progress every few seconds, also while one target takes long."""

    def __init__(self, shard: "_Shard", every: float):
        super().__init__(name="conceptseg-shard-heartbeat", daemon=True)
        self.shard, self.every = shard, every
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(max(self.every, 0.5)):
            if not self.shard.write():  # superseded: the segmenting loop stops at its next target
                return


class _Shard:
    """One attempt at one shard: its record, written only while this attempt is the shard's.

    The attempt is the shard's while the record names its operation, or awaits the
    operation of its ticket (queued, not yet named): each write is one conditional update
    (:func:`update_record`), so a re-queue between a check and a write cannot be
    overwritten. A write that matches nothing marks the attempt superseded.
    """

    def __init__(self, dataset, run_id: str, index: int, op_id: str | None, ticket: str | None = None):
        self.dataset, self.run_id, self.index, self.op_id, self.ticket = dataset, run_id, index, op_id, ticket
        self.lock = threading.Lock()
        self.record = _store(dataset).get(_key(run_id, index)) or dict(run_id=run_id, index=index, attempt=1,
                                                                        starts=0)
        self.done = 0
        self.superseded = False

    def _mine(self) -> dict | None:
        """The condition under which the record is this attempt's (None: run in-process, no operation)."""
        if self.op_id is None:
            return None
        mine = [{"op_id": self.op_id}]
        if self.ticket:
            mine.append({"op_id": {"$in": list(PENDING)}, "ticket": self.ticket})
        return {"$or": mine}

    def write(self, stamp: tuple = (), **changes) -> bool:
        """Writes ``changes``, the progress and a heartbeat (the database's clock); False once superseded."""
        with self.lock:
            if self.superseded:
                return False
            changes = dict(changes, done=self.done)
            if update_record(self.dataset._doc.id, self.run_id, self.index, changes, when=self._mine(),
                             stamp=("heartbeat",) + tuple(stamp)):
                self.record.update(changes)
                return True
            self.superseded = True
            return False


def run_shard(dataset, params: dict, op_id: str | None = None, progress=None,
              heartbeat: float = HEARTBEAT_SECONDS) -> dict:
    """Segments one shard's targets for the run ``params['run_id']``; returns the shard's counts.

    Targets that already hold a label of this run are skipped (a re-queued shard resumes).
    A run deleted before or during the shard ends it without writing further labels. A
    shard handed to a newer attempt meanwhile (re-queued) stops at its next target, keeping
    the labels it wrote (the new attempt skips them).
    """
    import psutil

    from conceptseg.execution import report as execution_report
    from conceptseg.jobs import _segment_targets

    run_id, index, ids = params["run_id"], int(params["index"]), list(params["target_ids"])
    doc = _run_doc(dataset, run_id)
    if doc is None:
        _store(dataset).delete(_key(run_id, index))
        return dict(run_id=run_id, index=index, ended="run deleted", segmented=0)
    dataset.reload()
    config, run_key = doc["config"], doc["key"]
    shard = _Shard(dataset, run_id, index, op_id, params.get("ticket"))
    me = psutil.Process()
    claim = dict(state="running", host=socket.gethostname(), pid=me.pid, pid_started=me.create_time(),
                 starts=shard.record.get("starts", 0) + 1)
    if op_id is not None:
        claim["op_id"] = op_id
    if not shard.write(stamp=("started",), **claim):  # the record names another attempt: this one is stale
        return dict(run_id=run_id, index=index, ended="superseded", segmented=0)

    started, cpu_started = time.perf_counter(), time.process_time()
    pred_field, inst_field = config["pred_field"], config.get("instances_field")
    targets = dataset.select(ids)
    own = F(f"{pred_field}.run_id") == run_id
    todo = targets.match(~own) if dataset.has_field(pred_field) else targets
    resumed = len(ids) - len(todo)
    shard.write(resumed=resumed)  # progress counts the targets an earlier attempt finished
    _share_cores(dataset, run_id)
    demos = load_demonstrations(config["demonstrations_file"])
    router, choice = _recorded_choice(config, demos)
    _share_cores(dataset, run_id)  # again: workers that claimed their shards during the fit count now

    beat = _Heartbeat(shard, heartbeat)
    beat.start()
    checked = [time.monotonic()]

    def report(done: int, total: int) -> None:
        shard.done = done
        if progress is not None:
            progress(done, total)
        if shard.superseded:  # a heartbeat found the shard re-queued: the new attempt does the rest
            raise ShardSuperseded(f"shard {index + 1} of run {run_id} was re-queued while this worker ran it")
        if time.monotonic() - checked[0] >= heartbeat:  # one query per heartbeat: was the run deleted?
            checked[0] = time.monotonic()
            if _run_doc(dataset, run_id) is None:
                raise RunGoneError(f"run {run_id} was deleted while shard {index + 1} was running")
            _share_cores(dataset, run_id)  # workers here may have started or finished meanwhile

    batch_size = int(config.get("batch_size") or 1)
    def run_deleted() -> dict:
        _remove_leftovers(dataset, run_id, ids, [pred_field, inst_field], config["output_dir"])
        return dict(run_id=run_id, index=index, ended="run deleted", segmented=0)

    try:
        seconds, failures = _segment_targets(router, choice, todo, pred_field, inst_field, config["concept"],
                                              run_key, config["output_dir"], report, run_id, batch_size)
    except RunGoneError:
        return run_deleted()
    except ShardSuperseded:  # its record was handed on, or went with the run
        if _run_doc(dataset, run_id) is None:
            return run_deleted()
        return dict(run_id=run_id, index=index, ended="superseded", segmented=0, done=shard.done)
    finally:
        beat.stop.set()
        beat.join()
        used_threads = threads.budget()  # the share it ended with
        threads.reset()
    result = dict(run_id=run_id, index=index, targets=len(ids), segmented=len(seconds), resumed=resumed,
                  failures=failures, seconds_sum=float(sum(seconds)), fit_seconds=choice.fit_seconds,
                  busy_seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
                  threads=used_threads, execution=execution_report(choice.route, batch_size))
    if not shard.write(stamp=("finished",), state="completed",
                       **{k: v for k, v in result.items() if k not in ("run_id", "index")}):
        if _run_doc(dataset, run_id) is None:
            return run_deleted()
        return dict(result, ended="superseded")  # re-queued at the last moment: the new attempt finishes
    finish_if_done(dataset, run_id)
    return result


def _remove_leftovers(dataset, run_id: str, ids: list[str], fields: list[str | None], out_dir: str) -> None:
    """Takes back what a shard wrote after its run was deleted: labels, an emptied field, mask files."""
    dataset.reload()
    fields = [f for f in fields if f and dataset.has_field(f)]
    if fields:  # the deletion removed the fields; the shard's last save may have re-created them
        mine = dataset.select(ids).match(F(f"{fields[0]}.run_id") == run_id)
        for field in fields:
            mine.set_values(field, [None] * len(mine))
        for field in fields:
            if not len(dataset.exists(field)):
                dataset.delete_sample_field(field)
    dataset.reload()
    used = set(dataset.values(f"{fields[0]}.mask_path")) if fields and dataset.has_field(fields[0]) else set()
    for sample_id in ids:  # masks are written before their label is saved: remove every one no label uses
        path = os.path.join(out_dir, f"{sample_id}.png")
        if path not in used and os.path.isfile(path):
            os.remove(path)
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)


# --- aggregation -------------------------------------------------------------------------


def aggregate(config: dict, records: list[dict]) -> dict:
    """The run's summary from its queue-time choice and its shards' records."""
    from conceptseg.execution import combine

    segmented = sum(r.get("segmented", 0) + r.get("resumed", 0) for r in records)
    written = sum(r.get("segmented", 0) for r in records)
    seconds = sum(r.get("seconds_sum", 0.0) for r in records)
    return dict(
        pred_field=config["pred_field"],
        instances_field=config.get("instances_field"),
        classes=config.get("classes_found"),
        warnings=config.get("warnings") or [],
        route=config["route"],
        verification=config.get("verification"),
        verifications=config.get("verifications"),
        verified=config.get("verified"),
        reason=config.get("reason"),
        rule=config.get("rule"),
        demonstrations=config.get("demonstrations"),
        negative_demonstrations=config.get("negative_demonstrations"),
        box_only_detections=config.get("box_only_detections"),
        targets=config.get("targets"),
        segmented=segmented,
        skipped=config.get("skipped", 0),
        resumed=sum(r.get("resumed", 0) for r in records),
        failures=[f for r in records for f in r.get("failures", [])],
        fit_seconds=config.get("fit_seconds"),
        seconds_per_target=seconds / written if written else None,
        shards=len(records),
        shard_attempts=sum(r.get("attempt", 1) for r in records),
        worker_seconds=sum(r.get("busy_seconds", 0.0) for r in records),
        worker_cpu_seconds=sum(r.get("cpu_seconds", 0.0) for r in records),
        execution=combine([dict(r["execution"], fallbacks=[dict(f, shard=r["index"]) for f in
                                                           r["execution"].get("fallbacks", [])])
                           for r in records if r.get("execution")]),
    )


def finish_if_done(dataset, run_id: str) -> dict | None:
    """Writes the run's aggregated results once every shard has completed; returns them then."""
    from conceptseg.jobs import _finish_run

    doc = _run_doc(dataset, run_id)
    if doc is None:
        return None
    config = doc["config"]
    records = shard_records(dataset, run_id)
    if len(records) < config.get("shards", 0) or any(r.get("state") != "completed" for r in records):
        return None
    summary = aggregate(config, records)
    dataset.reload()
    _finish_run(dataset, doc["key"], dict(run_key=doc["key"], **summary))
    shard_lock.release(dataset, config["pred_field"], run_id)
    return summary


def progress_of(dataset, run_id: str) -> dict:
    """{"shards": N, "completed": k, "done": targets finished so far} for ``conceptseg runs``."""
    records = shard_records(dataset, run_id)
    return dict(shards=len(records), completed=sum(r.get("state") == "completed" for r in records),
                done=sum(r.get("done", 0) + r.get("resumed", 0) for r in records))


# --- workers ------------------------------------------------------------------------------


def _pid_alive(record: dict) -> bool:
    """Whether the worker process of a record (on this host) still runs (not reused, not a zombie)."""
    import psutil

    try:
        proc = psutil.Process(record["pid"])
        same = abs(proc.create_time() - record.get("pid_started", proc.create_time())) < 1.0
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
