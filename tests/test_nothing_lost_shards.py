"""Issue 21 items 14 and 16 and two smaller ones: what a run really did is on record, and shard
bookkeeping without races.

14. Batching and prefix reuse fall back by themselves (a batch that raises is retried one by
    one, an out-of-memory batch is halved, rows that share no prefix are encoded whole); the
    run record and the CLI report say so, and ``--no-prefix-reuse`` turns reuse off.
16. Shard records are written by conditional updates only: a stale worker cannot overwrite
    a re-queued shard, a record exists before its operation is queued, a re-queue whose
    queueing fails or whose process dies leaves no lock behind, and staleness is read on
    the database's clock. Each racy interleaving is built step by step on the real
    database (no sleeps).
"""

import json
import time

import cv2
import fiftyone as fo
import fiftyone.core.odm.database as fod
import numpy as np
import pytest
import torch
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionResult

from conceptseg import cli
from conceptseg.runs.shards import queue as sh
from conceptseg.runs.shards import worker as shard_worker
from conceptseg.runs.shards import store as shard_store
from conceptseg.runs.shards import watch as sw
from conceptseg.model.checkpoint import load_bundle
from conceptseg.errors import ConceptSegError
from conceptseg.runs.jobs import segment_by_demonstration, segment_by_query
from conceptseg.runs.locks import COLLECTION, FieldLockedError, is_stale, lock_id
from conceptseg.testing import ScriptedPolicy, scripted_bundle

PARSABLE = ("<think>bright blobs</think><rule>nuclei are bright ovals</rule>"
            "<check>[0, 0, 299, 299]</check><bbox>[150, 300, 449, 599]</bbox><answer>nucleus</answer>")
BAD = "CUDA error: an illegal memory access was encountered"


def _answer(request):
    """The scripted policy: a parsable answer, except on the black image, where it fails as a GPU kernel can."""
    if not np.asarray(request.images[-1]).any():
        raise RuntimeError(BAD)
    return PARSABLE


@pytest.fixture
def with_bad_image(nuclei_dataset, tmp_path):
    """The nuclei demonstrations; targets: five nuclei tiles and a real black PNG, saved as the view 'batch'."""
    dataset = nuclei_dataset
    path = str(tmp_path / "black.png")
    cv2.imwrite(path, np.zeros((96, 96, 3), np.uint8))
    bad = fo.Sample(filepath=path)
    dataset.add_sample(bad)
    nuclei = dataset.load_saved_view("nuclei").match_tags("demo", bool=False)
    ids = nuclei.limit(5).values("id") + [bad.id]
    dataset.save_view("batch", dataset.select(ids, ordered=True))
    return dataset, dataset.match_tags("demo"), dataset.load_saved_view("batch"), bad.id


def _masks(view, field):
    return {s.id: s[field].get_mask() for s in view.exists(field).select_fields(field)}


def _same_mask(a, b):
    """Masks of two runs whose hidden states round differently: at most 1 pixel in 10 000 apart."""
    assert a.shape == b.shape and (a != b).sum() <= a.size // 10000


class TestWhatRanIsOnRecord:
    def test_a_bad_image_in_a_batch_is_a_recorded_fallback(self, with_bad_image, tiny_bundle_dir):
        dataset, demos, targets, bad_id = with_bad_image
        bundle = load_bundle(tiny_bundle_dir)
        bundle.policy = ScriptedPolicy(bundle.policy, _answer)
        summary = segment_by_demonstration(demos, targets, "ground_truth", "pred", route="reasoning", model=bundle,
                                           batch_size=3, instances=False)
        assert summary["segmented"] == 5
        (failure,) = summary["failures"]
        assert failure["sample_id"] == bad_id and BAD in failure["error"]
        execution = summary["execution"]
        assert execution["batch_size"] == 3 and execution["batch_size_used"] == 3
        (fallback,) = execution["fallbacks"]  # the second batch (4, 5, black) raised and went one by one
        assert fallback == {"what": "batch of 3 retried one by one", "reason": f"RuntimeError: {BAD}", "targets": 3}
        prefix = execution["prefix"]
        # the canvas encoded once (verification's episode: the same mosaic), reused by the first batch's call and
        # by the two good targets retried alone (the failing calls never reached the store)
        assert prefix["reuse"] is True and (prefix["misses"], prefix["hits"]) == (1, 3)
        assert prefix["unshared"] == {}
        recorded = dataset.load_run_results(summary["run_key"]).summary["execution"]
        assert recorded == execution  # the run record says what ran, not only what was asked
        assert dataset.get_run_info(summary["run_key"]).config.prefix_reuse is True

    def test_the_cli_prints_what_ran_and_no_prefix_reuse_turns_it_off(self, with_bad_image, tiny_bundle_dir, capsys):
        dataset, demos, targets, _ = with_bad_image
        args = ["segment", "--dataset", dataset.name, "--demo-tag", "demo", "--mask-field", "ground_truth",
                "--view", "batch", "--route", "reasoning", "--model", tiny_bundle_dir, "--batch-size", "3",
                "--no-instances"]
        with scripted_bundle(tiny_bundle_dir, _answer):
            assert cli.main(args + ["--pred-field", "reused"]) == 0
            out = capsys.readouterr().out
            assert f"fallback: batch of 3 retried one by one because RuntimeError: {BAD}" in out
            assert "batch size 3" in out and "prefix reuse: 1 prefix(es) encoded, 3 call(s) reused one" in out
            assert cli.main(args + ["--pred-field", "whole", "--no-prefix-reuse", "--json"]) == 0
            whole = json.loads(capsys.readouterr().out)
        assert whole["execution"]["prefix"] == {"reuse": False, "hits": 0, "misses": 0, "unshared": {}}
        assert len(whole["execution"]["fallbacks"]) == 1
        dataset.reload()
        assert dataset.get_run_info(whole["run_key"]).config.prefix_reuse is False
        reused, plain = _masks(targets, "reused"), _masks(targets, "whole")
        assert reused.keys() == plain.keys() and len(reused) == 5  # the same labels either way
        for key in reused:
            _same_mask(reused[key], plain[key])
        with scripted_bundle(tiny_bundle_dir, _answer):
            assert cli.main(args + ["--pred-field", "off", "--no-prefix-reuse"]) == 0
        assert "prefix reuse: off" in capsys.readouterr().out

    def test_an_out_of_memory_halving_is_the_batch_size_used(self, with_bad_image, tiny_bundle_dir):
        dataset, demos, targets, _ = with_bad_image

        class TwoRowsFit:
            def __init__(self, policy):
                self.policy = policy

            def __getattr__(self, name):
                return getattr(self.policy, name)

            def generate(self, requests, **kwargs):
                if len(requests) > 2:
                    raise torch.OutOfMemoryError(f"CUDA out of memory: {len(requests)} rows")
                return self.policy.generate(requests, **kwargs)

        bundle = load_bundle(tiny_bundle_dir)
        bundle.policy = TwoRowsFit(ScriptedPolicy(bundle.policy, PARSABLE))
        summary = segment_by_demonstration(demos, targets.limit(5), "ground_truth", "halved", route="reasoning",
                                           model=bundle, batch_size=4, instances=False)
        assert summary["segmented"] == 5 and summary["failures"] == []
        execution = summary["execution"]
        assert execution["batch_size"] == 4 and execution["batch_size_used"] == 2
        (fallback,) = execution["fallbacks"]
        assert fallback["what"] == "batch of 4 halved to 2 (and later batches)" and fallback["targets"] == 4
        assert fallback["reason"].startswith("out of GPU memory: CUDA out of memory: 4 rows")

    def test_a_text_query_says_why_it_shares_no_prefix(self, with_bad_image, tiny_bundle_dir, capsys):
        dataset, _, targets, _ = with_bad_image
        with scripted_bundle(tiny_bundle_dir, "<think>x</think><bbox>[1, 1, 30, 30]</bbox><answer>blob</answer>"):
            summary = segment_by_query(targets.limit(3), "the bright blob", "asked", tiny_bundle_dir, batch_size=3,
                                       instances=False)
            assert cli.main(["query", "--dataset", dataset.name, "--view", "batch", "--text", "the bright blob",
                             "--pred-field", "asked_cli", "--model", tiny_bundle_dir, "--no-instances"]) == 0
        reason = "the prompt has no image before the target's (a text query): nothing to share"
        assert summary["execution"]["prefix"]["unshared"] == {reason: 1}
        assert summary["execution"]["prefix"]["hits"] == summary["execution"]["prefix"]["misses"] == 0
        assert f"6 call(s) encoded everything because {reason}" in capsys.readouterr().out

    def test_a_route_that_does_not_batch_says_so(self, nuclei_dataset):
        view = nuclei_dataset.load_saved_view("nuclei")
        summary = segment_by_demonstration(view.match_tags("demo"), view.match_tags("demo", bool=False),
                                           "ground_truth", "plain", route="appearance", batch_size=4)
        execution = summary["execution"]
        assert execution["batch_size_used"] == 1 and execution["prefix"] is None
        assert execution["fallbacks"][0]["what"] == "targets segmented one at a time"
        assert "appearance route does not batch" in execution["fallbacks"][0]["reason"]

    def test_a_sharded_run_sums_what_its_shards_ran(self, plugin_installed, with_bad_image, tiny_bundle_dir):
        dataset, demos, targets, bad_id = with_bad_image
        with scripted_bundle(tiny_bundle_dir, _answer):
            queued = segment_by_demonstration(demos, targets, "ground_truth", "split", route="reasoning",
                                              model=tiny_bundle_dir, batch_size=3, instances=False, shards=2,
                                              prefix_reuse=False)
            results = run_queued(dataset)
        assert [r.error for r in results] == [None, None]
        dataset.reload()
        summary = dataset.load_run_results(queued["run_key"]).summary
        assert summary["segmented"] == 5 and [f["sample_id"] for f in summary["failures"]] == [bad_id]
        execution = summary["execution"]
        assert execution["batch_size"] == 3 and execution["batch_size_used"] == 3
        (fallback,) = execution["fallbacks"]
        bad_shard = next(r.result["index"] for r in results if r.result["failures"])
        assert fallback["shard"] == bad_shard and fallback["what"] == "batch of 3 retried one by one"
        assert execution["prefix"] == {"reuse": False, "hits": 0, "misses": 0, "unshared": {}}


# --- shard bookkeeping -----------------------------------------------------------------------------


URI = sh.operator_uri()


def run_queued(dataset):
    return DelegatedOperationService().execute_queued_operations(operator=URI, dataset_name=dataset.name)


@pytest.fixture
def nuclei(plugin_installed, nuclei_dataset):
    view = nuclei_dataset.load_saved_view("nuclei")
    return nuclei_dataset, view.match_tags("demo"), view.match_tags("demo", bool=False)


def sharded(demos, targets, field, shards, **kwargs):
    return segment_by_demonstration(demos, targets, "ground_truth", field, route="appearance", shards=shards, **kwargs)


def params_of(op_id):
    return dict(DelegatedOperationService().get(ObjectId(op_id)).context.request_params["params"])


def record_of(dataset, run_id, index=0):
    return shard_store.execution_store(dataset).get(shard_store.record_key(run_id, index))


def lock_doc(dataset, field):
    return fod.get_db_conn()[COLLECTION].find_one({"_id": lock_id(dataset.name, field)})


def finished(dataset, field):
    from conceptseg.runs.records import list_runs

    dataset.reload()
    run = next(r for r in list_runs(dataset) if r["pred_field"] == field)
    return run if run["finished"] else None


class _BeforeNextUpdate:
    """The records' collection, running ``step`` just before the next update reaches the database:
    the moment between any check a writer made and its write."""

    def __init__(self, step):
        self.collection, self.step = shard_store.records_collection(), step

    def update_one(self, *args, **kwargs):
        step, self.step = self.step, None
        if step is not None:
            step()
        return self.collection.update_one(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.collection, name)


def before_next_update(monkeypatch, step):
    proxy = _BeforeNextUpdate(step)
    monkeypatch.setattr(shard_store, "records_collection", lambda: proxy)


def claimed_elsewhere(dataset, queued, heartbeat_age=None):
    """The run's one shard claimed by a worker on another host, which wrote its record (and went silent)."""
    (op_id,) = queued["operations"]
    DelegatedOperationService().set_running(ObjectId(op_id))
    worker = shard_worker.Shard(dataset, queued["run_id"], 0, op_id, params_of(op_id)["ticket"])
    assert worker.write(op_id=op_id, state="running", host="gpu-node-7", pid=4242)
    if heartbeat_age is not None:
        assert shard_store.update_record(dataset._doc.id, queued["run_id"], 0, dict(heartbeat=shard_store.db_time() - heartbeat_age))
    return op_id, worker


class TestCompareAndSet:
    def test_a_requeue_between_a_stale_workers_check_and_write_wins(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets, "race", 1)
        old, stale = claimed_elsewhere(dataset, queued, heartbeat_age=120)
        requeued = []
        before_next_update(monkeypatch, lambda: requeued.extend(sw.requeue_dead(dataset, "race")))
        assert not stale.write(state="completed", segmented=13)  # the re-queue landed just before: nothing written
        monkeypatch.undo()
        (new,) = requeued
        record = record_of(dataset, queued["run_id"])
        assert record["op_id"] == new["op_id"] != old and record["state"] == "queued" and record["attempt"] == 2
        assert stale.superseded and not stale.write()  # and it stays out
        # the stale worker, started again on its old operation, ends at once and writes no label
        result = shard_worker.run_shard(dataset, params_of(old), op_id=old)
        assert result["ended"] == "superseded"
        dataset.reload()
        assert not dataset.has_field("race") or len(dataset.exists("race")) == 0
        (done,) = run_queued(dataset)
        assert done.error is None and done.result["segmented"] == 13
        assert finished(dataset, "race")["segmented"] == 13

    def test_a_worker_that_writes_before_the_fence_keeps_its_shard(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets, "alive", 1)
        old, worker = claimed_elsewhere(dataset, queued, heartbeat_age=120)
        assert sw.shard_status(dataset, "alive")["shards"][0]["dead"].startswith("no heartbeat for 12")
        before_next_update(monkeypatch, worker.write)  # its heartbeat lands after the judgement, before the fence
        assert sw.requeue_dead(dataset, "alive") == []
        monkeypatch.undo()
        record = record_of(dataset, queued["run_id"])
        assert record["op_id"] == old and record["attempt"] == 1 and not worker.superseded
        assert DelegatedOperationService().get(ObjectId(old)).run_state == "running"

    def test_two_requeues_of_one_dead_shard_queue_one_attempt(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets, "twice", 1)
        claimed_elsewhere(dataset, queued, heartbeat_age=120)
        inner = []
        before_next_update(monkeypatch, lambda: inner.extend(sw.requeue_dead(dataset, "twice")))
        outer = sw.requeue_dead(dataset, "twice")  # judged dead too, but the other caller fenced first
        monkeypatch.undo()
        assert len(inner) == 1 and outer == []
        assert len(DelegatedOperationService().get_queued_operations(operator=URI, dataset_name=dataset.name)) == 1


class TestRecordBeforeQueue:
    def test_a_worker_that_claims_at_once_finds_its_record_and_keeps_it(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        real, seen = sh.queue_operation, []

        def queue_and_run_at_once(dataset_, params, label):
            seen.append(record_of(dataset_, params["run_id"], params["index"]))
            op_id = real(dataset_, params, label)
            service = DelegatedOperationService()  # a worker polling the queue claims it before we return
            assert service.execute_operation(service.get(ObjectId(op_id))).error is None
            return op_id

        monkeypatch.setattr(sh, "queue_operation", queue_and_run_at_once)
        queued = sharded(demos, targets, "eager", 2)
        monkeypatch.undo()
        assert [r["op_id"] for r in seen] == ["queueing", "queueing"] and all(r["ticket"] for r in seen)
        records = shard_store.shard_records(dataset, queued["run_id"])
        assert [r["state"] for r in records] == ["completed", "completed"]  # not put back to "queued"
        assert [r["op_id"] for r in records] == queued["operations"]
        assert finished(dataset, "eager")["segmented"] == 13
        assert segment_by_demonstration(demos, targets, "ground_truth", "eager", route="appearance",
                                        overwrite=True)["segmented"] == 13  # and the field is free

    def test_a_queueing_that_fails_part_way_leaves_the_rest_requeueable(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        real, calls = sh.queue_operation, []

        def second_fails(dataset_, params, label):
            calls.append(params["index"])
            if params["index"] == 1:
                raise RuntimeError("not primary")
            return real(dataset_, params, label)

        monkeypatch.setattr(sh, "queue_operation", second_fails)
        with pytest.raises(ConceptSegError, match="Queueing shard 2 of 2 failed"):
            sharded(demos, targets, "half", 2)
        monkeypatch.undo()
        status = sw.shard_status(dataset, "half")["shards"]
        assert status[0]["dead"] is None and "queueing failed: RuntimeError: not primary" in status[1]["dead"]
        with pytest.raises(FieldLockedError):  # shard 1 is queued: the run holds the field
            segment_by_demonstration(demos, targets, "ground_truth", "half", route="appearance", overwrite=True)
        (requeued,) = sw.requeue_dead(dataset, "half")  # its targets were kept with its record
        assert requeued["index"] == 1
        assert [r.error for r in run_queued(dataset)] == [None, None]
        assert finished(dataset, "half")["segmented"] == 13


class TestStuckRequeue:
    def _failed(self, dataset, demos, targets, field):
        queued = sharded(demos, targets, field, 1)
        (op_id,) = queued["operations"]
        service = DelegatedOperationService()
        service.set_running(ObjectId(op_id))
        service.set_failed(ObjectId(op_id), result=ExecutionResult(error="out of memory"))
        return queued, op_id

    def test_a_requeue_whose_queueing_fails_puts_the_record_back_and_holds_nothing(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        queued, old = self._failed(dataset, demos, targets, "refused")

        def refuse(*args, **kwargs):
            raise RuntimeError("not primary")

        monkeypatch.setattr(sw, "queue_operation", refuse)
        with pytest.raises(ConceptSegError, match="Re-queueing shard 1 failed .*not primary"):
            sw.requeue_dead(dataset, "refused")
        monkeypatch.undo()
        record = record_of(dataset, queued["run_id"])
        assert record["op_id"] == old and record["attempt"] == 1 and "not primary" in record["error"]
        assert is_stale(lock_doc(dataset, "refused"))  # no placeholder keeps the field locked
        (requeued,) = sw.requeue_dead(dataset, "refused")  # and it can be re-queued once queueing works
        assert not is_stale(lock_doc(dataset, "refused"))
        assert [r.error for r in run_queued(dataset)] == [None]
        assert finished(dataset, "refused")["segmented"] == 13

    def test_a_requeue_interrupted_before_queueing_is_found_stuck_and_recovered(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        queued, _ = self._failed(dataset, demos, targets, "stuck")

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt  # Ctrl-C (or kill -9) between the fence and the queue

        monkeypatch.setattr(sw, "queue_operation", interrupted)
        with pytest.raises(KeyboardInterrupt):
            sw.requeue_dead(dataset, "stuck")
        monkeypatch.undo()
        run_id = queued["run_id"]
        assert record_of(dataset, run_id)["op_id"] == "requeueing"
        assert not is_stale(lock_doc(dataset, "stuck"))  # a moment ago: it may still be queueing
        assert sw.shard_status(dataset, "stuck")["shards"][0]["dead"] is None
        shard_store.update_record(dataset._doc.id, run_id, 0, dict(pending_since=shard_store.db_time() - 2 * shard_store.STALE_AFTER))
        assert is_stale(lock_doc(dataset, "stuck"))  # stuck: the field is not locked forever
        (row,) = sw.shard_status(dataset, "stuck")["shards"]
        assert row["dead"].startswith("its re-queueing never reached the queue")
        (requeued,) = sw.requeue_dead(dataset, "stuck")
        assert record_of(dataset, run_id)["attempt"] == 3
        assert [r.error for r in run_queued(dataset)] == [None]
        assert finished(dataset, "stuck")["segmented"] == 13

    def test_a_requeue_interrupted_after_queueing_is_finished_by_its_worker(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        queued, _ = self._failed(dataset, demos, targets, "unnamed")

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt  # after the operation was queued, before the record named it

        monkeypatch.setattr(sw, "settle", interrupted)
        with pytest.raises(KeyboardInterrupt):
            sw.requeue_dead(dataset, "unnamed")
        monkeypatch.undo()
        assert record_of(dataset, queued["run_id"])["op_id"] == "requeueing"
        shard_store.update_record(dataset._doc.id, queued["run_id"], 0, dict(pending_since=shard_store.db_time() - 2 * shard_store.STALE_AFTER))
        (row,) = sw.shard_status(dataset, "unnamed")["shards"]
        assert row["op_state"] == "queued" and row["dead"] is None  # found by its ticket, however old
        assert not is_stale(lock_doc(dataset, "unnamed"))
        (result,) = run_queued(dataset)
        assert result.error is None and record_of(dataset, queued["run_id"])["op_id"] == row["op_id"]
        assert finished(dataset, "unnamed")["segmented"] == 13


class TestDatabaseClock:
    def test_the_database_clock_is_read(self):
        assert abs(shard_store.db_time() - time.time()) < 5  # one machine here: the clocks agree

    def test_a_worker_with_a_clock_two_hours_behind_is_alive(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets, "skew", 1)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 7200)  # this host's clock is two hours behind
        claimed_elsewhere(dataset, queued)
        monkeypatch.setattr(time, "time", lambda: real() + 7200)  # the watcher's, two hours ahead
        (row,) = sw.shard_status(dataset, "skew", stale_after=60)["shards"]
        monkeypatch.undo()
        assert row["dead"] is None and 0 <= row["heartbeat_age"] < 30

    def test_a_heartbeat_old_by_the_database_clock_is_dead(self, nuclei):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets, "silent", 1)
        claimed_elsewhere(dataset, queued, heartbeat_age=120)
        (row,) = sw.shard_status(dataset, "silent", stale_after=60)["shards"]
        assert row["dead"].startswith("no heartbeat for 12")

    def test_a_claim_never_written_ages_from_when_it_was_first_seen(self, nuclei):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets, "mute", 1)
        (op_id,) = queued["operations"]
        DelegatedOperationService().set_running(ObjectId(op_id))  # claimed; the worker died before writing
        assert sw.shard_status(dataset, "mute", stale_after=60)["shards"][0]["dead"] is None
        record = record_of(dataset, queued["run_id"])
        assert record["claim_seen_op"] == op_id and abs(record["claim_seen_at"] - shard_store.db_time()) < 30
        shard_store.update_record(dataset._doc.id, queued["run_id"], 0, dict(claim_seen_at=shard_store.db_time() - 120))
        (row,) = sw.shard_status(dataset, "mute", stale_after=60)["shards"]
        assert row["dead"].startswith("claimed but silent for 12")
        (requeued,) = sw.requeue_dead(dataset, "mute", stale_after=60)
        assert DelegatedOperationService().get(ObjectId(op_id)).run_state == "failed"
        assert [r.error for r in run_queued(dataset)] == [None]


class TestSmaller:
    @pytest.mark.parametrize("poll", ["-1", "nan", "inf"])
    def test_worker_poll_below_zero_is_one_sentence(self, capsys, poll):
        assert cli.main(["worker", "--poll", poll, "--exit-when-idle"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --poll must be a finite number of seconds, 0 or more") and err.count("\n") == 1

    def test_sharded_queueing_refuses_an_output_directory_it_cannot_write(self, nuclei, tmp_path):
        dataset, demos, targets = nuclei
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        with pytest.raises(ConceptSegError, match="mask output directory .* cannot be written"):
            sharded(demos, targets, "nowhere", 2, output_dir=str(blocker / "masks"))
        assert not DelegatedOperationService().get_queued_operations(operator=URI, dataset_name=dataset.name)
        dataset.reload()
        assert not [k for k in dataset.list_runs() if "nowhere" in k]  # nothing recorded either
