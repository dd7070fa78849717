"""A worker's side of a sharded run: claim a shard, re-fit the recorded route, segment, heartbeat, aggregate.

Run by the ``segment_shard`` operation on any `fiftyone delegated launch` worker.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
from fiftyone import ViewField as F

from conceptseg.runs.shards import lock as shard_lock
from conceptseg import threads
from conceptseg.errors import ConceptSegError
from conceptseg.runs.shards.store import (HEARTBEAT_SECONDS, PENDING, execution_store, pid_alive, record_key,
                                          run_doc, shard_records, update_record)
from conceptseg.types import Demonstration


class RunGoneError(ConceptSegError):
    """The run a shard belongs to was deleted."""


class ShardSuperseded(ConceptSegError):
    """The shard was handed to a newer attempt (re-queued): this worker's writes no longer land."""


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
    from conceptseg.runs.plan import load_model, read_template
    from conceptseg.routes.router import RouteChoice, make_router, usable
    from conceptseg.types import Verification

    router = make_router(config["route"], config["threshold"], bundle=load_model(config.get("model")),
                         question=config.get("question"), prompt_template=read_template(config.get("prompt_template")),
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
               if r.get("state") == "running" and r.get("host") == host and pid_alive(r))
    return threads.set_threads(threads.cores() // max(1, here))


class _Heartbeat(threading.Thread):
    """Writes the shard's heartbeat and progress every few seconds, also while one target takes long."""

    def __init__(self, shard: "Shard", every: float):
        super().__init__(name="conceptseg-shard-heartbeat", daemon=True)
        self.shard, self.every = shard, every
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(max(self.every, 0.5)):
            if not self.shard.write():  # superseded: the segmenting loop stops at its next target
                return


class Shard:
    """One attempt at one shard: its record, written only while this attempt is the shard's.

    The attempt is the shard's while the record names its operation, or awaits the
    operation of its ticket (queued, not yet named): each write is one conditional update
    (:func:`update_record`), so a re-queue between a check and a write cannot be
    overwritten. A write that matches nothing marks the attempt superseded.
    """

    def __init__(self, dataset, run_id: str, index: int, op_id: str | None, ticket: str | None = None):
        self.dataset, self.run_id, self.index, self.op_id, self.ticket = dataset, run_id, index, op_id, ticket
        self.lock = threading.Lock()
        self.record = execution_store(dataset).get(record_key(run_id, index)) or dict(run_id=run_id, index=index, attempt=1,
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


def _claim(shard: Shard, op_id: str | None) -> bool:
    """Takes the shard's record for this attempt (host, pid, start); False when it names another attempt."""
    import psutil

    me = psutil.Process()
    claim = dict(state="running", host=socket.gethostname(), pid=me.pid, pid_started=me.create_time(),
                 starts=shard.record.get("starts", 0) + 1)
    if op_id is not None:
        claim["op_id"] = op_id
    return shard.write(stamp=("started",), **claim)


def _reporter(shard: Shard, dataset, heartbeat: float, progress):
    """The shard's progress callback: counts, and stops the shard once it is re-queued or its run deleted."""
    run_id, index = shard.run_id, shard.index
    checked = [time.monotonic()]

    def report(done: int, total: int) -> None:
        shard.done = done
        if progress is not None:
            progress(done, total)
        if shard.superseded:  # a heartbeat found the shard re-queued: the new attempt does the rest
            raise ShardSuperseded(f"shard {index + 1} of run {run_id} was re-queued while this worker ran it")
        if time.monotonic() - checked[0] >= heartbeat:  # one query per heartbeat: was the run deleted?
            checked[0] = time.monotonic()
            if run_doc(dataset, run_id) is None:
                raise RunGoneError(f"run {run_id} was deleted while shard {index + 1} was running")
            _share_cores(dataset, run_id)  # workers here may have started or finished meanwhile

    return report


def run_shard(dataset, params: dict, op_id: str | None = None, progress=None,
              heartbeat: float = HEARTBEAT_SECONDS) -> dict:
    """Segments one shard's targets for the run ``params['run_id']``; returns the shard's counts.

    Targets that already hold a label of this run are skipped (a re-queued shard resumes).
    A run deleted before or during the shard ends it without writing further labels. A
    shard handed to a newer attempt meanwhile (re-queued) stops at its next target, keeping
    the labels it wrote (the new attempt skips them).
    """
    from conceptseg.runs.execution import report as execution_report
    from conceptseg.runs.writing import segment_targets

    run_id, index, ids = params["run_id"], int(params["index"]), list(params["target_ids"])
    doc = run_doc(dataset, run_id)
    if doc is None:
        execution_store(dataset).delete(record_key(run_id, index))
        return dict(run_id=run_id, index=index, ended="run deleted", segmented=0)
    dataset.reload()
    config, run_key = doc["config"], doc["key"]
    shard = Shard(dataset, run_id, index, op_id, params.get("ticket"))
    if not _claim(shard, op_id):  # the record names another attempt: this one is stale
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
    report = _reporter(shard, dataset, heartbeat, progress)

    batch_size = int(config.get("batch_size") or 1)
    def run_deleted() -> dict:
        _remove_leftovers(dataset, run_id, ids, [pred_field, inst_field], config["output_dir"])
        return dict(run_id=run_id, index=index, ended="run deleted", segmented=0)

    try:
        seconds, failures = segment_targets(router, choice, todo, pred_field, inst_field, config["concept"],
                                              run_key, config["output_dir"], report, run_id, batch_size)
    except RunGoneError:
        return run_deleted()
    except ShardSuperseded:  # its record was handed on, or went with the run
        if run_doc(dataset, run_id) is None:
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
        if run_doc(dataset, run_id) is None:
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


def aggregate(config: dict, records: list[dict]) -> dict:
    """The run's summary from its queue-time choice and its shards' records."""
    from conceptseg.runs.execution import combine

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
    from conceptseg.runs.plan import finish_record

    doc = run_doc(dataset, run_id)
    if doc is None:
        return None
    config = doc["config"]
    records = shard_records(dataset, run_id)
    if len(records) < config.get("shards", 0) or any(r.get("state") != "completed" for r in records):
        return None
    summary = aggregate(config, records)
    dataset.reload()
    finish_record(dataset, doc["key"], dict(run_key=doc["key"], **summary))
    shard_lock.release(dataset, config["pred_field"], run_id)
    return summary
