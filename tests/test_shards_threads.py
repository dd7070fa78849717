"""A shard worker uses its share of the cores, and the thread budget limits every pool it names."""

import os
import socket
import time

import cv2
import psutil
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from threadpoolctl import threadpool_info

from conceptseg import cli
from conceptseg import threads
from conceptseg.runs.shards import queue as sh
from conceptseg.runs.shards import worker as shard_worker
from conceptseg.runs.shards import store as shard_store
from conceptseg.runs.shards import watch as sw
from conceptseg.runs.jobs import segment_by_demonstration


@pytest.fixture
def nuclei(plugin_installed, nuclei_dataset):
    view = nuclei_dataset.load_saved_view("nuclei")
    return nuclei_dataset, view.match_tags("demo"), view.match_tags("demo", bool=False)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    yield
    threads.reset()


class TestBudget:
    def test_set_threads_limits_opencv_and_the_blas_and_openmp_pools_and_reset_gives_them_back(self, no_env):
        before_cv2 = cv2.getNumThreads()
        assert threads.set_threads(1) == 1 and threads.budget() == 1
        assert cv2.getNumThreads() == 1
        pools = threadpool_info()
        assert pools and all(p["num_threads"] == 1 for p in pools)
        threads.reset()
        assert threads.budget() == threads.cores() and cv2.getNumThreads() == before_cv2

    def test_the_environment_fixes_the_budget(self, monkeypatch):
        monkeypatch.setenv(threads.ENV, "3")
        assert threads.explicit() and threads.budget() == 3
        monkeypatch.setenv(threads.ENV, "0")  # not a budget: ignored
        assert not threads.explicit() and threads.budget() == threads.cores()

    def test_the_forest_shares_out_large_images_only(self, no_env):
        threads.set_threads(4)
        assert threads.forest_jobs(None, 128 * 128) == 1  # dispatch would cost more than the trees
        assert threads.forest_jobs(None, 512 * 512) == 4
        assert threads.forest_jobs(2, 128 * 128) == 2  # an explicit setting wins


class TestShardShare:
    def test_a_shard_takes_the_cores_divided_among_this_runs_shards_running_here(self, nuclei, no_env):
        dataset, demos, targets = nuclei
        queued = segment_by_demonstration(demos, targets, "ground_truth", "share", route="appearance", shards=2)
        ops = DelegatedOperationService().get_queued_operations(operator=sh.operator_uri(), dataset_name=dataset.name)
        params = {str(op.id): op.context.request_params["params"] for op in ops}
        first = params[queued["operations"][0]]
        store, other = shard_store.execution_store(dataset), shard_store.record_key(queued["run_id"], 1)
        me = psutil.Process()  # shard 2 runs in a live process on this host (this one stands in for it)
        store.set(other, dict(store.get(other), state="running", host=socket.gethostname(), pid=me.pid,
                              pid_started=me.create_time(), heartbeat=time.time()))
        seen = []
        result = shard_worker.run_shard(dataset, first, progress=lambda done, total: seen.append(threads.budget()))
        assert set(seen) == {max(1, threads.cores() // 2)} and result["threads"] == max(1, threads.cores() // 2)
        assert result["cpu_seconds"] > 0
        assert threads.budget() == threads.cores()  # given back after the shard

    def test_conceptseg_worker_threads_fixes_every_shards_count(self, nuclei, monkeypatch):
        dataset, demos, targets = nuclei
        segment_by_demonstration(demos, targets, "ground_truth", "fixed", route="appearance", shards=1)
        monkeypatch.setenv(threads.ENV, "")  # so that what the worker sets is undone after the test
        assert cli.main(["worker", "--dataset", dataset.name, "--threads", "1", "--exit-when-idle"]) == 0
        assert os.environ[threads.ENV] == "1"
        (record,) = shard_store.shard_records(dataset, sw.shard_status(dataset, "fixed")["run_id"])
        assert record["state"] == "completed" and record["threads"] == 1

    def test_worker_threads_below_one_is_refused(self, capsys):
        assert cli.main(["worker", "--threads", "0", "--exit-when-idle"]) == 2
        assert "--threads must be at least 1" in capsys.readouterr().err
