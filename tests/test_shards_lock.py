"""A run spread over workers holds its output field from queueing until its last shard ends."""

import time

import fiftyone.core.odm.database as fod
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionResult

from conceptseg import cli
from conceptseg.runs.shards import queue as sh
from conceptseg.runs.shards import store as shard_store
from conceptseg.runs.shards import watch as sw
from conceptseg.runs.jobs import segment_by_demonstration
from conceptseg.runs.locks import COLLECTION, FieldLockedError, field_lock, lock_id
from conceptseg.runs.delete import delete_run


@pytest.fixture
def nuclei(plugin_installed, nuclei_dataset):
    view = nuclei_dataset.load_saved_view("nuclei")
    return nuclei_dataset, view.match_tags("demo"), view.match_tags("demo", bool=False)


def plain(demos, targets, field, **kwargs):
    return segment_by_demonstration(demos, targets, "ground_truth", field, route="appearance", **kwargs)


def run_queued(dataset):
    return DelegatedOperationService().execute_queued_operations(operator=sh.operator_uri(), dataset_name=dataset.name)


def lock_doc(dataset, field):
    return fod.get_db_conn()[COLLECTION].find_one({"_id": lock_id(dataset.name, field)})


def segment_cli(dataset, field, *extra):
    return ["segment", "--dataset", dataset.name, "--demo-tag", "demo", "--mask-field", "ground_truth",
            "--pred-field", field, "--view", "nuclei", "--route", "appearance", *extra]


class TestShardedRunHoldsItsField:
    def test_a_plain_run_is_refused_in_one_sentence_while_shards_are_queued(self, nuclei, capsys):
        dataset, demos, targets = nuclei
        queued = plain(demos, targets, "held", shards=2)
        held = lock_doc(dataset, "held")
        assert held["run_id"] == queued["run_id"] and held["dataset_id"] == str(dataset._doc.id)
        assert cli.main(segment_cli(dataset, "held", "--overwrite")) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert "still queued or running" in err and "conceptseg_held" in err and "delete-run" in err
        dataset.reload()
        assert not dataset.has_field("held") or dataset.count("held") == 0  # the refused run wrote nothing

    def test_a_plain_run_is_allowed_once_the_shards_finish(self, nuclei):
        dataset, demos, targets = nuclei
        plain(demos, targets, "done", shards=2)
        assert [r.error for r in run_queued(dataset)] == [None, None]
        assert lock_doc(dataset, "done") is None  # the last shard's aggregate released it
        again = plain(demos, targets, "done", overwrite=True)
        assert again["segmented"] == 13 and lock_doc(dataset, "done") is None

    def test_a_plain_run_is_allowed_after_the_sharded_run_is_deleted(self, nuclei):
        dataset, demos, targets = nuclei
        plain(demos, targets, "dropped", shards=2)
        delete_run(dataset, "dropped")
        assert lock_doc(dataset, "dropped") is None
        assert plain(demos, targets, "dropped")["segmented"] == 13
        assert [r.result["ended"] for r in run_queued(dataset)] == ["run deleted", "run deleted"]
        dataset.reload()
        assert dataset.count("dropped") == 13  # the old run's shards wrote nothing over the new labels

    def test_a_run_deleted_behind_its_back_no_longer_holds_the_field(self, nuclei):
        dataset, demos, targets = nuclei
        queued = plain(demos, targets, "behind", shards=1)
        dataset.delete_run(queued["run_key"])  # FiftyOne's own deletion: the lock document stays ...
        assert lock_doc(dataset, "behind") is not None
        assert plain(demos, targets, "behind", overwrite=True)["segmented"] == 13  # ... and counts as free

    def test_a_dead_shard_requeued_keeps_the_field_held(self, nuclei):
        dataset, demos, targets = nuclei
        queued = plain(demos, targets, "dead", shards=1)
        (op_id,) = queued["operations"]
        DelegatedOperationService().set_running(ObjectId(op_id))  # a worker elsewhere claimed it and went silent
        store, key = shard_store.execution_store(dataset), shard_store.record_key(queued["run_id"], 0)
        store.set(key, dict(store.get(key), state="running", host="gpu-node-7", pid=4242,
                            heartbeat=time.time() - 600))
        with pytest.raises(FieldLockedError, match="still queued or running"):
            plain(demos, targets, "dead", overwrite=True)
        (requeued,) = sw.requeue_dead(dataset, "dead")
        assert DelegatedOperationService().get(ObjectId(op_id)).run_state == "failed"
        with pytest.raises(FieldLockedError, match="still queued or running"):
            plain(demos, targets, "dead", overwrite=True)
        (result,) = run_queued(dataset)
        assert result.error is None and result.result["segmented"] == 13
        assert lock_doc(dataset, "dead") is None
        assert plain(demos, targets, "dead", overwrite=True)["segmented"] == 13

    def test_a_failed_shard_frees_the_field_and_requeueing_it_takes_the_field_back(self, nuclei):
        dataset, demos, targets = nuclei
        queued = plain(demos, targets, "failed", shards=1)
        (op_id,) = queued["operations"]
        service = DelegatedOperationService()
        service.set_running(ObjectId(op_id))
        service.set_failed(ObjectId(op_id), result=ExecutionResult(error="out of memory"))
        assert lock_doc(dataset, "failed")["run_id"] == queued["run_id"]  # left behind, yet no shard can write
        with field_lock(dataset.name, "failed", "segment_by_demonstration"):  # so another run may take it
            with pytest.raises(FieldLockedError, match="being written by another run"):
                sw.requeue_dead(dataset, "failed")  # the re-queued shard would write under that run
            assert service.get(ObjectId(op_id)).run_state == "failed"  # nothing was re-queued
        (requeued,) = sw.requeue_dead(dataset, "failed")
        assert lock_doc(dataset, "failed")["run_id"] == queued["run_id"]
        with pytest.raises(FieldLockedError, match="still queued or running"):
            plain(demos, targets, "failed", overwrite=True)
        (result,) = run_queued(dataset)
        assert result.error is None and lock_doc(dataset, "failed") is None
