"""A run spread over workers: shards queued as delegated operations, run by real workers, faults included."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService

from conceptseg.testing.db import terminate
from conceptseg.runs.shards import queue as sh
from conceptseg.runs.shards import worker as shard_worker
from conceptseg.runs.shards import store as shard_store
from conceptseg.runs.shards import watch as sw
from conceptseg.cli import main
from conceptseg.errors import ConceptSegError
from conceptseg.runs.names import default_output_dir
from conceptseg.runs.jobs import segment_by_demonstration
from conceptseg.runs.delete import delete_run
from conceptseg.runs.records import list_runs

URI = sh.operator_uri()


def wait_for(condition, timeout: float, what: str, every: float = 0.05):
    """Polls ``condition`` until it returns something truthy; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)  # a poll interval, not a synchronisation
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def masks(dataset, field):
    """{filepath-and-id order: mask} of the field's labels, read from their PNGs."""
    return {s.id: s[field].get_mask() for s in dataset.exists(field).select_fields(field)}


def finished(dataset, field):
    """The run writing ``field`` as `conceptseg runs` lists it, once it has finished (else None)."""
    dataset.reload()  # the workers wrote its results
    run = next(r for r in list_runs(dataset) if r["pred_field"] == field)
    return run if run["finished"] else None


def run_queued(dataset):
    """Executes every queued shard of the dataset in this process, like one worker would."""
    return DelegatedOperationService().execute_queued_operations(operator=URI, dataset_name=dataset.name)


@pytest.fixture
def nuclei(plugin_installed, nuclei_dataset):
    nuclei_dataset.persistent = True  # workers in other processes load it
    view = nuclei_dataset.load_saved_view("nuclei")
    return nuclei_dataset, view.match_tags("demo"), view.match_tags("demo", bool=False)


def sharded(demos, targets, field, shards, **kwargs):
    return segment_by_demonstration(demos, targets, "ground_truth", field, route="appearance", shards=shards, **kwargs)


class TestShardedRun:
    def test_split_is_round_robin_over_sorted_ids(self):
        assert sh.split_targets(["d", "a", "c", "b", "e"], 2) == [["a", "c", "e"], ["b", "d"]]

    def test_labels_equal_an_unsharded_run_and_the_record_aggregates(self, nuclei):
        dataset, demos, targets = nuclei
        plain = segment_by_demonstration(demos, targets, "ground_truth", "plain", route="appearance")
        queued = sharded(demos, targets, "split", 3)
        assert queued["queued"] and len(queued["operations"]) == 3 and queued["targets"] == 13
        assert not dataset.has_field("split") or len(dataset.exists("split")) == 0  # nothing segmented yet
        results = run_queued(dataset)
        assert [r.error for r in results] == [None, None, None]
        assert sorted(r.result["targets"] for r in results) == [4, 4, 5]
        a, b = masks(dataset, "plain"), masks(dataset, "split")
        assert a.keys() == b.keys() and len(a) == 13
        assert all(np.array_equal(a[k], b[k]) for k in a)
        label_p, label_s = dataset[next(iter(a))]["plain"], dataset[next(iter(a))]["split"]
        for attr in ("route", "verification", "verified", "rule"):
            assert label_p[attr] == label_s[attr]
        run = next(r for r in list_runs(dataset) if r["pred_field"] == "split")
        assert run["finished"] and run["targets"] == 13 and run["segmented"] == 13 and run["failures"] == 0
        assert run["seconds"] > 0 and run["shards"] == {"shards": 3, "completed": 3, "done": 13}
        summary = dataset.load_run_results(run["run_key"]).summary
        assert summary["verification"] == plain["verification"] and summary["shards"] == 3
        assert len(dataset.exists("split_instances")) == 13

    def test_more_shards_than_targets_are_clamped_with_a_note(self, nuclei):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets.limit(3), "few", 8)
        assert queued["shards"] == 3 and queued["shards_requested"] == 8
        assert "8 shards asked for 3 target(s)" in queued["note"]
        run_queued(dataset)
        assert len(dataset.exists("few")) == 3

    @pytest.mark.parametrize("bad", [0, -2, 1.5, "2"])
    def test_a_shard_count_below_one_is_refused(self, nuclei, bad):
        dataset, demos, targets = nuclei
        with pytest.raises(ConceptSegError, match="shards must be a whole number of at least 1"):
            sharded(demos, targets, "bad", bad)
        assert not DelegatedOperationService().get_queued_operations(operator=URI, dataset_name=dataset.name)

    def test_a_run_deleted_while_shards_are_queued_ends_them_without_writing(self, nuclei):
        dataset, demos, targets = nuclei
        sharded(demos, targets, "gone", 2)
        delete_run(dataset, "gone")
        results = run_queued(dataset)
        assert [r.result["ended"] for r in results] == ["run deleted", "run deleted"]
        dataset.reload()
        assert not dataset.has_field("gone") and not dataset.has_field("gone_instances")
        assert not os.path.exists(default_output_dir(dataset, "gone"))  # the saved demonstrations went too
        assert all("gone" not in r["pred_field"] for r in list_runs(dataset))

    def test_a_run_deleted_while_a_shard_runs_stops_it_and_takes_its_labels_back(self, nuclei):
        dataset, demos, targets = nuclei
        sharded(demos, targets, "late", 1)
        (op,) = DelegatedOperationService().get_queued_operations(operator=URI, dataset_name=dataset.name)
        params = op.context.request_params["params"]
        seen = []

        def progress(done, total):
            seen.append(done)
            if done == 3:  # the user deletes the run while this shard runs
                delete_run(dataset, "late")

        result = shard_worker.run_shard(dataset, params, op_id=None, progress=progress, heartbeat=0.0)
        assert seen == [1, 2, 3]  # the shard stopped at its next check
        assert result["ended"] == "run deleted" and result["segmented"] == 0
        dataset.reload()
        assert not dataset.has_field("late") and not dataset.has_field("late_instances")
        out_dir = default_output_dir(dataset, "late")
        assert not os.path.exists(out_dir) or not [f for f in os.listdir(out_dir) if f.endswith(".png")]

    def test_two_workers_claiming_the_same_shard_only_one_runs_it(self, nuclei):
        dataset, demos, targets = nuclei
        sharded(demos, targets, "once", 1)
        service = DelegatedOperationService()
        (op,) = service.get_queued_operations(operator=URI, dataset_name=dataset.name)
        start, outcomes = threading.Barrier(2), []

        def worker():
            start.wait()  # both hold the same QUEUED document, as two polling workers would
            outcomes.append(service.execute_operation(op))

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ran = [o for o in outcomes if o is not None]
        assert len(ran) == 1 and ran[0].error is None and ran[0].result["segmented"] == 13
        (record,) = shard_store.shard_records(dataset, sw.shard_status(dataset, "once")["run_id"])
        assert record["starts"] == 1 and record["state"] == "completed"
        assert len(dataset.exists("once")) == 13

    def test_a_worker_elsewhere_without_heartbeat_is_dead_and_requeue_dead_requeues_it(self, nuclei, capsys):
        dataset, demos, targets = nuclei
        queued = sharded(demos, targets, "far", 1)
        service = DelegatedOperationService()
        (op_id,) = queued["operations"]
        service.set_running(ObjectId(op_id))  # a worker on another machine claimed it ...
        store, key = shard_store.execution_store(dataset), shard_store.record_key(queued["run_id"], 0)
        record = dict(store.get(key), state="running", host="gpu-node-7", pid=4242, heartbeat=time.time())
        store.set(key, record)
        assert sw.shard_status(dataset, "far", stale_after=60)["shards"][0]["dead"] is None
        store.set(key, dict(record, heartbeat=time.time() - 120))  # ... and went silent two minutes ago
        (row,) = sw.shard_status(dataset, "far", stale_after=60)["shards"]
        assert row["dead"].startswith("no heartbeat for 12")
        assert main(["shards", "--dataset", dataset.name, "--pred-field", "far", "--requeue-dead", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        (requeued,) = out["requeued"]
        assert requeued["old_op_id"] == op_id and out["shards"][0]["state"] == "queued"
        assert service.get(ObjectId(op_id)).run_state == "failed"
        assert service.get(ObjectId(requeued["op_id"])).run_state == "queued"
        (result,) = run_queued(dataset)
        assert result.error is None and result.result["segmented"] == 13
        assert finished(dataset, "far")["segmented"] == 13

    def test_a_resumed_sharded_run_refuses_while_its_shards_are_queued(self, nuclei):
        dataset, demos, targets = nuclei
        sharded(demos, targets, "busy", 2)
        with pytest.raises(ConceptSegError, match="still queued or running"):
            sharded(demos, targets, "busy", 2, resume=True)


def launch_worker(log_path, dataset_name):
    """A worker process on the same database: `conceptseg worker`, FiftyOne's claim loop filtered to this dataset.

    (An unfiltered `fiftyone delegated launch` here could take other test sessions' operations:
    this machine's test runs may share one embedded MongoDB.)
    """
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "conceptseg.cli", "worker", "--dataset", dataset_name],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


class TestWorkers:
    @pytest.fixture
    def many(self, nuclei):
        """The 13 nuclei targets, each added 9 more times (130 targets: a shard lasts several seconds)."""
        dataset, demos, targets = nuclei
        paths = targets.values("filepath")
        dataset.add_samples([fo.Sample(filepath=p) for p in paths * 9])
        return dataset, demos, dataset.match_tags("demo", bool=False).match(fo.ViewField("filepath").is_in(paths))

    def test_two_workers_and_one_killed_mid_shard_lose_nothing(self, many, tmp_path):
        dataset, demos, targets = many
        assert len(targets) == 130
        queued = sharded(demos, targets, "pred", 2)
        workers = [launch_worker(tmp_path / f"worker{i}.log", dataset.name) for i in range(2)]
        try:
            def status():
                return sw.shard_status(dataset, "pred")["shards"]

            def running():
                rows = status()
                return rows if all(r["pid"] for r in rows) else None

            rows = wait_for(running, 180, "both shards running")
            assert {r["pid"] for r in rows} == {w.pid for w in workers}  # one shard each
            victim = next(w for w in workers if w.pid == rows[0]["pid"])
            op = DelegatedOperationService().get(ObjectId(rows[0]["op_id"]))
            own = dataset.select(op.context.request_params["params"]["target_ids"]).match(
                fo.ViewField("pred.run_id") == queued["run_id"])
            wait_for(lambda: len(own) >= 5, 180, "five labels of shard 1 written")
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kept = len(own)  # what the killed worker saved; the re-queued shard must skip exactly these
            dead = wait_for(lambda: [r for r in status() if r["dead"]], 30, "the dead shard to show")
            assert dead[0]["index"] == 0 and "is gone" in dead[0]["dead"]
            requeued = sw.requeue_dead(dataset, "pred")
            assert [r["index"] for r in requeued] == [0]
            assert sw.requeue_dead(dataset, "pred") == []  # nothing dead any more
            survivor = next(w for w in workers if w is not victim)
            wait_for(lambda: finished(dataset, "pred"), 300, "the run to finish")
            assert survivor.poll() is None
        finally:
            for w in workers:
                terminate(w)
        records = {r["index"]: r for r in shard_store.shard_records(dataset, queued["run_id"])}
        assert records[0]["attempt"] == 2 and records[0]["resumed"] == kept >= 5  # finished targets not redone
        assert records[0]["segmented"] + records[0]["resumed"] == records[0]["targets"] == 65
        assert len(dataset.exists("pred")) == 130
        run = finished(dataset, "pred")
        assert run["segmented"] == 130 and run["failures"] == 0


class TestCli:
    def test_segment_with_shards_then_the_shards_table(self, nuclei, capsys):
        dataset, demos, targets = nuclei
        args = ["segment", "--dataset", dataset.name, "--demo-tag", "demo", "--mask-field", "ground_truth",
                "--pred-field", "cli", "--view", "nuclei", "--route", "appearance", "--shards", "2"]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "queued 2 shard(s) of 13 target(s)" in out and "fiftyone delegated launch" in out
        assert main(["shards", "--dataset", dataset.name, "--pred-field", "cli", "--json"]) == 0
        table = json.loads(capsys.readouterr().out)
        assert [r["state"] for r in table["shards"]] == ["queued", "queued"]
        run_queued(dataset)
        assert main(["runs", "--dataset", dataset.name]) == 0
        assert "2/2 shards" in capsys.readouterr().out
