"""Nothing lost, round two (issue 21): delete-run and where mask files live.

Each case runs a real segmentation on tiny images and checks, before and after, the labels,
the mask files and the run records a careless user would otherwise lose.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import cv2
import fiftyone as fo
import numpy as np
import pytest

import conceptseg
from conceptseg import cli
from conceptseg.runs import jobs
from conceptseg.runs import review
from conceptseg.runs import records as runs
from conceptseg.runs.delete import RunBusyError, delete_run
from conceptseg.datasets import two_classes
from conceptseg.errors import FieldError
from conceptseg.runs.outputs import KINDS, PREDICTIONS, REVIEWED, conceptseg_root, mask_dir, path_component

CLI = [sys.executable, "-m", "conceptseg.cli"]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _cli_subprocess(*args):
    """The CLI in another process (its own FiftyOne connection), as a second user would run it."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), timeout=300)


def _segment(dataset, pred_field="pred", **kwargs):
    nuclei = dataset.load_saved_view("nuclei")
    return jobs.segment_by_demonstration(
        demonstrations=nuclei.match_tags("demo"), targets=nuclei, mask_field="ground_truth",
        pred_field=pred_field, route="appearance", **kwargs)


def _files(dataset, field):
    return sorted(p for p in dataset.values(f"{field}.mask_path") if p)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _one_sentence(err: str, *words):
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def _loads_whole(name):
    """Every sample of the dataset loads (a document with a key the schema lacks would raise)."""
    dataset = fo.load_dataset(name)
    dataset.reload()
    return [s.id for s in dataset.iter_samples()]


# --- 1. refused while a live process writes the field ---------------------------------------


class TestRefusedWhileWritten:
    def test_a_run_writing_the_field_is_named_and_loses_nothing(self, nuclei_dataset):
        """delete-run from another process while this process's run writes the field: refused, the run ends whole."""
        refused = []

        def delete_midway(done, total):
            if done == 6:
                refused.append(_cli_subprocess("delete-run", "--dataset", nuclei_dataset.name,
                                               "--pred-field", "pred"))

        summary = _segment(nuclei_dataset, progress=delete_midway)

        assert refused[0].returncode == 2
        _one_sentence(refused[0].stderr, "Cannot delete run 'conceptseg_pred'",
                      f"pid {os.getpid()} on {socket.gethostname()}", "segment_by_demonstration")
        assert summary["segmented"] == 13 and not summary["failures"]  # the run was not disturbed
        dataset = fo.load_dataset(nuclei_dataset.name)
        dataset.reload()
        assert dataset.list_runs() == ["conceptseg_pred"]
        files = _files(dataset, "pred")
        assert len(files) == 13 and all(os.path.isfile(p) for p in files)
        assert len(_loads_whole(dataset.name)) == 17
        # once the run is over, the same command deletes it
        done = _cli_subprocess("delete-run", "--dataset", dataset.name, "--pred-field", "pred", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["files"] == 13 and not any(os.path.exists(p) for p in files)

    def test_a_lock_held_by_another_live_process_is_named(self, nuclei_dataset, capsys):
        _segment(nuclei_dataset)
        files = _files(nuclei_dataset, "pred")
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time\n"
             "from conceptseg.runs.locks import field_lock\n"
             "with field_lock(sys.argv[1], 'pred', 'segment_by_demonstration'):\n"
             "    print('held', flush=True)\n"
             "    time.sleep(300)\n",
             nuclei_dataset.name],
            stdout=subprocess.PIPE, text=True, env=_env())
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(RunBusyError, match=f"pid {holder.pid} on {socket.gethostname()}"):
                delete_run(nuclei_dataset, "pred")
            assert cli.main(["delete-run", "--dataset", nuclei_dataset.name, "--pred-field", "pred"]) == 2
            _one_sentence(capsys.readouterr().err, f"pid {holder.pid}", "still running", "Wait for it")
            nuclei_dataset.reload()
            assert nuclei_dataset.list_runs() == ["conceptseg_pred"] and _files(nuclei_dataset, "pred") == files
            assert all(os.path.isfile(p) for p in files)
        finally:
            holder.kill()
            holder.wait()
        # its holder gone, the lock is stale: the deletion goes through
        assert delete_run(nuclei_dataset, "pred")["files"] == 13
        assert not nuclei_dataset.has_field("pred")

    def test_a_live_shard_worker_is_named_and_a_dead_one_is_not(self, plugin_installed, nuclei_dataset):
        import psutil
        from bson import ObjectId
        from fiftyone.operators.delegated import DelegatedOperationService

        from conceptseg.runs.shards import queue as sh
        from conceptseg.runs.shards import store as shard_store

        view = nuclei_dataset.load_saved_view("nuclei")
        queued = jobs.segment_by_demonstration(view.match_tags("demo"), view.match_tags("demo", bool=False),
                                               "ground_truth", "sharded", route="appearance", shards=1)
        (op_id,) = queued["operations"]
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        try:
            DelegatedOperationService().set_running(ObjectId(op_id))  # the worker claimed the shard ...
            store, key = shard_store.execution_store(nuclei_dataset), shard_store.record_key(queued["run_id"], 0)
            store.set(key, dict(store.get(key), op_id=op_id, state="running", host=socket.gethostname(),
                                pid=worker.pid, pid_started=psutil.Process(worker.pid).create_time(),
                                heartbeat=time.time()))  # ... and is writing
            with pytest.raises(RunBusyError, match=f"worker pid {worker.pid} on {socket.gethostname()}"):
                delete_run(nuclei_dataset, "sharded")
            assert queued["run_key"] in nuclei_dataset.list_runs()
        finally:
            worker.kill()
            worker.wait()
        report = delete_run(nuclei_dataset, "sharded")  # its worker is dead: nothing writes the field
        assert report["run_keys"] == [queued["run_key"]] and nuclei_dataset.list_runs() == []
        import fiftyone.core.odm.database as fod

        from conceptseg.runs.locks import COLLECTION, lock_id

        assert fod.get_db_conn()[COLLECTION].find_one({"_id": lock_id(nuclei_dataset.name, "sharded")}) is None

    def test_a_run_on_another_field_does_not_stop_the_deletion(self, nuclei_dataset):
        _segment(nuclei_dataset, "a")
        reports = []

        def delete_a(done, total):
            if done == 3:
                reports.append(_cli_subprocess("delete-run", "--dataset", nuclei_dataset.name, "--pred-field", "a",
                                               "--json"))

        assert _segment(nuclei_dataset, "b", progress=delete_a)["segmented"] == 13
        assert reports[0].returncode == 0, reports[0].stderr
        report = json.loads(reports[0].stdout)
        assert report["fields"] == ["a", "a_instances"] and report["files"] == 13


@pytest.mark.parametrize("field", ["$x", "a.b", "", "..", "pred\n", "a" * 5000])
def test_hostile_field_names_are_one_sentence(nuclei_dataset, capsys, field):
    _segment(nuclei_dataset)
    assert cli.main(["delete-run", "--dataset", nuclei_dataset.name, "--pred-field", field]) == 2
    _one_sentence(capsys.readouterr().err, "No conceptseg run wrote", "runs here write: pred")
    assert len(nuclei_dataset.exists("pred")) == 13


# --- 2. only the run's labels go ------------------------------------------------------------


def _users_own_labels(dataset, field, tmp_path):
    """The user's own Segmentation labels in ``field`` on the demonstrations and the quokka (never targets)."""
    mine = {}
    for sample in dataset.match_tags("demo").concat(dataset.match(fo.ViewField("concept") == "animal")):
        path = str(tmp_path / f"mine_{sample.id}.png")
        cv2.imwrite(path, (sample.ground_truth.get_mask() > 0).astype(np.uint8))
        sample[field] = fo.Segmentation(mask_path=path)
        sample.save()
        mine[sample.id] = (path, _digest(path))
    return mine


def _gt_files(dataset, mask_of, tmp_path):
    """The targets' ground truth as mask files of the user's (as an imported dataset has them)."""
    os.makedirs(tmp_path / "gt", exist_ok=True)
    for sample in dataset.match_tags("demo", bool=False):
        path = str(tmp_path / "gt" / f"{sample.id}.png")
        cv2.imwrite(path, mask_of(sample))
        sample.gt = fo.Segmentation(mask_path=path)
        sample.save()


class TestOnlyTheRunsLabels:
    def test_users_labels_in_the_same_field_survive(self, nuclei_dataset, tmp_path, capsys):
        mine = _users_own_labels(nuclei_dataset, "mine", tmp_path)
        argv = ["segment", "--dataset", nuclei_dataset.name, "--demo-tag", "demo", "--mask-field", "ground_truth",
                "--pred-field", "mine", "--view", "nuclei", "--route", "appearance", "--overwrite"]
        assert cli.main(argv) == 0
        nuclei_dataset.reload()
        run_files = [p for p in _files(nuclei_dataset, "mine") if p not in {v[0] for v in mine.values()}]
        assert len(run_files) == 13 and len(nuclei_dataset.exists("mine")) == 17
        capsys.readouterr()

        assert cli.main(["delete-run", "--dataset", nuclei_dataset.name, "--pred-field", "mine"]) == 0
        out = capsys.readouterr().out
        assert "13 label(s)" in out and "kept 'mine' (4 label(s) the run did not write)" in out, out

        nuclei_dataset.reload()
        assert nuclei_dataset.has_field("mine") and not nuclei_dataset.has_field("mine_instances")
        kept = {s.id: s.mine.mask_path for s in nuclei_dataset.exists("mine")}
        assert kept == {i: p for i, (p, _) in mine.items()}  # exactly the user's, untouched
        assert all(_digest(p) == d for p, d in mine.values())
        assert not any(os.path.exists(p) for p in run_files)
        assert nuclei_dataset.list_runs() == [] and len(_loads_whole(nuclei_dataset.name)) == 17
        assert "mine" in nuclei_dataset.mask_targets  # the field stays, its classes with it

    def test_labels_of_an_earlier_round_under_the_same_key_go_too(self, name, tmp_path):
        """After accept + rerun the accepted targets keep round 1's labels (whose record was replaced): all go."""
        dataset, _ = two_classes.build(name, str(tmp_path / "media"))
        _gt_files(dataset, lambda sample: np.zeros((128, 128), np.uint8), tmp_path)
        jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", classes=["red"],
                                      route="appearance")
        first = dataset.get_run_info("conceptseg_pred").config.run_id
        accepted = [t["id"] for t in review.review(dataset, "pred")["targets"]][:2]
        review.accept(dataset, "pred", accepted)
        review.rerun(dataset, "pred")
        dataset.reload()
        latest = dataset.get_run_info("conceptseg_pred").config.run_id
        assert {dataset[i].pred.run_id for i in accepted} == {first} != {latest}
        files = _files(dataset, "pred")
        truth = [dataset[i].gt.mask_path for i in accepted]

        report = delete_run(dataset, "pred")

        assert report["fields"] == ["pred", "pred_instances"] and not dataset.has_field("pred")
        assert not any(os.path.exists(p) for p in files)
        assert all(os.path.isfile(p) for p in truth)  # the accepted ground truth stays


# --- 3. predictions and ground truth never share a folder -----------------------------------


class TestFolders:
    def test_a_prediction_field_named_like_the_old_reviewed_folder_cannot_reach_accepted_masks(self, name, tmp_path):
        dataset, truth = two_classes.build(name, str(tmp_path / "media"))
        _gt_files(dataset, lambda sample: truth[sample.id]["blue"].astype(np.uint8) * 2, tmp_path)
        jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", classes=["red"],
                                      route="appearance")
        accepted = [t["id"] for t in review.review(dataset, "pred")["targets"]][:3]
        review.accept(dataset, "pred", accepted)
        dataset.reload()
        truth_files = {i: dataset[i].gt.mask_path for i in accepted}
        before = {i: _digest(p) for i, p in truth_files.items()}
        assert all(set(np.unique(dataset[i].gt.get_mask())) == {0, 1, 2} for i in accepted)

        # "gt_reviewed" was the folder accept wrote into; no --overwrite: accepted targets hold no gt_reviewed label
        jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "gt_reviewed", classes=["blue"],
                                      route="appearance")
        dataset.reload()
        predicted = _files(dataset, "gt_reviewed")
        assert {i: _digest(p) for i, p in truth_files.items()} == before  # not one byte rewritten
        assert all(set(np.unique(dataset[i].gt.get_mask())) == {0, 1, 2} for i in accepted)  # no class lost
        truth_dirs = {os.path.dirname(p) for p in truth_files.values()}
        pred_dirs = {os.path.dirname(p) for p in predicted}
        assert truth_dirs == {mask_dir(name, REVIEWED, "gt")}
        assert pred_dirs == {mask_dir(name, PREDICTIONS, "gt_reviewed")}
        assert not set(truth_files.values()) & set(predicted)
        # deleting that run leaves the ground truth alone
        delete_run(dataset, "gt_reviewed")
        assert {i: _digest(p) for i, p in truth_files.items()} == before

    @pytest.mark.parametrize("field", ["gt", "gt_reviewed", "reviewed-masks", "..", ".", "a/../../b", "/abs", "%2E"])
    def test_no_field_name_reaches_another_folder(self, field):
        root = os.path.realpath(conceptseg_root())
        dirs = {kind: os.path.realpath(mask_dir("data/set", kind, field)) for kind in KINDS}
        for kind, directory in dirs.items():
            # one dataset folder, one kind folder, one field folder: three components below the root, nothing above
            assert os.path.relpath(directory, root).split(os.sep) == [
                path_component("data/set"), kind, path_component(field)]
        assert dirs[PREDICTIONS] != dirs[REVIEWED]
        others = {"gt", "gt_reviewed", "reviewed-masks", "..", ".", "a/../../b", "/abs", "%2E", "a", "b"} - {field}
        for other in others:  # the escape is one-to-one: two fields never share a folder
            assert mask_dir("data/set", PREDICTIONS, other) != mask_dir("data/set", PREDICTIONS, field)

    def test_a_run_in_the_old_layout_is_deleted_where_it_is(self, nuclei_dataset):
        from conceptseg.runs.outputs import legacy_prediction_dir

        old = legacy_prediction_dir(nuclei_dataset.name, "pred")
        _segment(nuclei_dataset, output_dir=old)  # what a run of the earlier version wrote
        files = _files(nuclei_dataset, "pred")
        assert {os.path.dirname(p) for p in files} == {old}
        assert delete_run(nuclei_dataset, "pred")["files"] == 13
        assert not os.path.exists(old)


# --- 4. a file another dataset references stays ---------------------------------------------


class TestSharedFiles:
    def test_a_clone_keeps_its_masks_until_its_own_run_is_deleted(self, nuclei_dataset):
        _segment(nuclei_dataset, "a")
        files = _files(nuclei_dataset, "a")
        clone = nuclei_dataset.clone(nuclei_dataset.name + "-clone")
        try:
            assert _files(clone, "a") == files  # a clone shares the mask files
            report = delete_run(nuclei_dataset, "a")
            assert report["files"] == 0 and not nuclei_dataset.has_field("a")
            assert all(os.path.isfile(p) for p in files)
            assert all(s.a.get_mask().shape == (128, 128) for s in clone.exists("a"))
            if "conceptseg_a" in clone.list_runs():  # the clone's own copy of the run
                assert delete_run(clone, "a")["files"] == 13
                assert not any(os.path.exists(p) for p in files)
        finally:
            fo.delete_dataset(clone.name)

    def test_a_frame_label_or_a_detection_elsewhere_keeps_its_file(self, nuclei_dataset, name):
        _segment(nuclei_dataset, "a")
        files = _files(nuclei_dataset, "a")
        other = fo.Dataset(name)
        video = fo.Sample(filepath="/nowhere/clip.mp4")
        video.frames[3]["borrowed"] = fo.Segmentation(mask_path=files[0])
        image = fo.Sample(filepath="/nowhere/photo.png",
                          dets=fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0, 0, 1, 1],
                                                                      mask_path=files[1])]))
        other.add_samples([video])
        more = fo.Dataset(name + "-img")
        try:
            more.add_sample(image)
            assert delete_run(nuclei_dataset, "a")["files"] == 11
            assert os.path.isfile(files[0]) and os.path.isfile(files[1])
            assert not any(os.path.exists(p) for p in files[2:])
        finally:
            fo.delete_dataset(more.name)

    def test_the_reference_check_asks_each_reference_path_once_whatever_the_number_of_files(
            self, nuclei_dataset, monkeypatch):
        from fiftyone.core.odm import get_db_conn
        from pymongo.collection import Collection

        _segment(nuclei_dataset, "a")
        clone = nuclei_dataset.clone(nuclei_dataset.name + "-clone")
        try:
            files = _files(nuclei_dataset, "a")
            paths = sum(len(set(runs._file_paths_in_schema(d.get("sample_fields"))))
                        + len(set(runs._file_paths_in_schema(d.get("frame_fields"))))
                        for d in get_db_conn().datasets.find({"sample_collection_name": {"$regex": "^samples\\."}}))
            calls = []
            real = Collection.distinct

            def counting(self, key, *args, **kwargs):
                calls.append((self.name, key))
                return real(self, key, *args, **kwargs)

            monkeypatch.setattr(Collection, "distinct", counting)
            missing = "/nowhere/not-referenced.png"  # keeps every dataset in the search
            assert runs.referenced_files(files + [missing]) == set(files)
            assert len(calls) == len(set(calls)) <= paths  # one query per reference path, not per file
            one = len(calls)
            calls.clear()
            assert runs.referenced_files(files[:1] + [missing]) == set(files[:1])
            assert len(calls) == one
            assert (clone._sample_collection_name, "a.mask_path") in calls  # the clone was asked too
        finally:
            fo.delete_dataset(clone.name)


# --- 9. video: the run's frame labels and their PNGs go -------------------------------------


def _write_video(path, frames):
    import eta.core.video as etav

    height, width = frames[0].shape[:2]
    with etav.FFmpegVideoWriter(path, 5, (width, height), out_opts=["-c:v", "libx264rgb", "-crf", "0"]) as writer:
        for frame in frames:
            writer.write(frame)


@pytest.fixture
def videos(name, tmp_path):
    """Three 8-frame clips of a drifting red disc; the first is the demonstration (frames 1, 4, 7 labelled)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("video needs ffmpeg (scripts/setup.sh)")
    rng = np.random.default_rng(0)
    dataset = fo.Dataset(name)
    for v in range(3):
        images, masks = [], []
        for i in range(8):
            image = np.clip(rng.normal(128, 10, (96, 128, 3)), 0, 255).astype(np.uint8)
            disc = np.zeros((96, 128), np.uint8)
            if v < 2:
                cv2.circle(disc, (30 + 4 * i, 40), 12, 1, -1)
                image[disc > 0] = (220, 40, 40)
            images.append(image)
            masks.append(disc)
        path = str(tmp_path / f"clip{v}.mp4")
        _write_video(path, images)
        sample = fo.Sample(filepath=path, tags=["demo"] if v == 0 else [])
        if v == 0:
            for n in (1, 4, 7):
                sample.frames[n]["gt"] = fo.Segmentation(mask=masks[n - 1])
        dataset.add_sample(sample)
    return dataset


def _frame_files(dataset, field):
    return sorted(p for p in dataset.values(f"frames.{field}.mask_path", unwind=True) if p)


class TestVideo:
    def test_frame_labels_and_their_pngs_go_and_the_field_can_be_segmented_again(self, videos):
        dataset = videos
        jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", route="appearance")
        files = _frame_files(dataset, "pred")
        assert len(files) == 21 and all(os.path.isfile(p) for p in files)  # 24 frames, 3 demonstrations

        report = delete_run(dataset, "pred")

        dataset.reload()
        assert report["files"] == 21 and report["labels"]["pred"] == 21
        assert not any(os.path.exists(p) for p in files)
        assert not dataset.has_frame_field("pred") and not dataset.has_frame_field("pred_instances")
        assert "frames.pred" not in dataset.mask_targets and dataset.list_runs() == []
        again = jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", route="appearance")
        assert again["segmented"] == 21  # no --overwrite needed: nothing was left behind

    def test_users_frame_labels_in_the_same_field_survive(self, videos):
        dataset = videos
        demo = dataset.match_tags("demo").first()
        for n in (1, 4, 7):  # the user's own labels on the demonstration frames
            demo.frames[n]["pred"] = fo.Segmentation(mask=demo.frames[n]["gt"].mask.copy(), note="mine")
        demo.save()
        jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", route="appearance")
        files = _frame_files(dataset, "pred")

        report = delete_run(dataset, "pred")

        dataset.reload()
        assert report["kept"] == {"pred": 3} and not any(os.path.exists(p) for p in files)
        kept = [(s.id, n) for s in dataset for n, f in s.frames.items() if f["pred"] is not None]
        assert kept == [(demo.id, 1), (demo.id, 4), (demo.id, 7)]
        assert all(dataset[demo.id].frames[n]["pred"]["note"] == "mine" for n in (1, 4, 7))
        assert dataset.has_frame_field("pred") and not dataset.has_frame_field("pred_instances")


# --- the state the old bug left: documents with keys the schema lost ------------------------


class TestLabelsTheSchemaLost:
    def test_delete_run_cleans_them_and_the_dataset_works_again(self, nuclei_dataset, capsys):
        from fiftyone.core.odm import get_db_conn

        _segment(nuclei_dataset)
        files = _files(nuclei_dataset, "pred")
        coll = get_db_conn()[nuclei_dataset._sample_collection_name]
        kept = {d["_id"]: (d["pred"], d["pred_instances"]) for d in coll.find({"pred": {"$ne": None}})}
        # What the old delete-run did while the run still wrote: the fields and the record went ...
        nuclei_dataset.delete_sample_fields(["pred", "pred_instances"])
        nuclei_dataset.delete_run("conceptseg_pred")
        for _id, (pred, inst) in kept.items():  # ... and the run's last saves put the keys back
            coll.update_one({"_id": _id}, {"$set": {"pred": pred, "pred_instances": inst}})
        with pytest.raises(Exception):
            _loads_whole(nuclei_dataset.name)  # every later load of those samples fails

        assert cli.main(["delete-run", "--dataset", nuclei_dataset.name, "--pred-field", "pred"]) == 0
        assert "removed labels a deleted run left in 'pred': 13 label(s)" in capsys.readouterr().out

        assert len(_loads_whole(nuclei_dataset.name)) == 17
        assert not any(os.path.exists(p) for p in files)
        assert coll.count_documents({"$or": [{"pred": {"$exists": True}}, {"pred_instances": {"$exists": True}}]}) == 0
        assert _segment(fo.load_dataset(nuclei_dataset.name))["segmented"] == 13  # segment works again

    def test_labels_left_by_a_record_deleted_elsewhere_are_found(self, nuclei_dataset, tmp_path):
        """FiftyOne's own delete_run (or a deletion cut short) leaves the labels: delete-run still finds them."""
        mine = _users_own_labels(nuclei_dataset, "pred", tmp_path)
        _segment(nuclei_dataset)
        files = [p for p in _files(nuclei_dataset, "pred") if p not in {v[0] for v in mine.values()}]
        nuclei_dataset.delete_run("conceptseg_pred")

        report = delete_run(nuclei_dataset, "pred")

        assert report["labels"] == {"pred": 13, "pred_instances": 13} and report["kept"] == {"pred": 4}
        assert report["files"] == 13 and not any(os.path.exists(p) for p in files)
        assert {s.pred.mask_path for s in nuclei_dataset.exists("pred")} == {v[0] for v in mine.values()}
        with pytest.raises(runs.RunNotFoundError):  # nothing of a run is left: the user's labels are theirs
            delete_run(nuclei_dataset, "pred")


def _masks_in_the_database(dataset, field):
    """sample id -> (mask file, its bytes' digest) of ``field``'s labels, read from MongoDB itself
    (this process's dataset object may not know the field)."""
    from fiftyone.core.odm import get_db_conn

    out = {}
    for doc in get_db_conn()[dataset._sample_collection_name].find({field: {"$ne": None}}, {field: 1}):
        with open(doc[field]["mask_path"], "rb") as f:
            out[str(doc["_id"])] = (doc[field]["mask_path"], hashlib.sha256(f.read()).hexdigest())
    return out


# --- a dataset object loaded before another process wrote (a notebook beside a terminal) -------


class TestAnotherProcessWroteSinceTheDatasetWasLoaded:
    """The user's ``dataset`` was loaded before a command in another process (a terminal, a delegated
    worker, a killed run) added ``pred`` and its record; a run from that object must see them."""

    def _segment_elsewhere(self, dataset):
        done = _cli_subprocess("segment", "--dataset", dataset.name, "--view", "nuclei", "--demo-tag", "demo",
                               "--mask-field", "ground_truth", "--pred-field", "pred", "--route", "appearance")
        assert done.returncode == 0, done.stderr
        assert "pred" not in dataset.get_field_schema()  # this object has not seen it yet
        written = _masks_in_the_database(dataset, "pred")
        assert len(written) == 13
        return written

    def test_a_new_run_into_the_field_is_refused_and_nothing_is_overwritten(self, nuclei_dataset):
        before = self._segment_elsewhere(nuclei_dataset)
        with pytest.raises(FieldError, match=r"'pred' already has labels on 13 target"):
            _segment(nuclei_dataset)
        assert _masks_in_the_database(nuclei_dataset, "pred") == before

    def test_resume_skips_what_the_other_process_wrote(self, nuclei_dataset):
        before = self._segment_elsewhere(nuclei_dataset)
        summary = _segment(nuclei_dataset, resume=True)
        assert (summary["skipped"], summary["segmented"]) == (13, 0)
        assert _masks_in_the_database(nuclei_dataset, "pred") == before

    def test_review_verbs_see_the_run_the_other_process_recorded(self, nuclei_dataset):
        written = self._segment_elsewhere(nuclei_dataset)
        target = sorted(written)[0]
        assert sorted(t["id"] for t in review.review(nuclei_dataset, "pred")["targets"]) == sorted(written)
        assert review.accept(nuclei_dataset, "pred", [target], replace=True)["accepted"] == [target]
        sample = nuclei_dataset[target]
        assert review.ACCEPTED_TAG in sample.tags and sample.pred.review == "accepted"
        assert np.array_equal(sample.ground_truth.get_mask() > 0, cv2.imread(written[target][0], 0) > 0)

    def test_evaluate_scores_what_the_other_process_wrote(self, nuclei_dataset):
        written = self._segment_elsewhere(nuclei_dataset)
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        result = conceptseg.evaluate(nuclei, "pred", "ground_truth")
        assert sorted(result["samples"]) == sorted(written)
        assert sorted(result["missing_pred"]) == sorted(nuclei.match_tags("demo").values("id"))  # not segmented
        assert result["metrics"]["iou"] > 0.5

    def test_the_run_list_shows_the_run_the_other_process_recorded(self, nuclei_dataset):
        self._segment_elsewhere(nuclei_dataset)
        (run,) = runs.list_runs(nuclei_dataset)
        assert run["pred_field"] == "pred" and run["finished"]

    def test_without_another_process_the_callers_samples_keep_their_unsaved_edits(self, nuclei_dataset):
        _segment(nuclei_dataset, pred_field="first")  # this process's own changes: fields and a record
        sample = nuclei_dataset.first()  # a Sample: FiftyOne keeps it, and a reload would reset it
        sample["concept"] = "edited, not saved"
        _segment(nuclei_dataset, pred_field="second")
        result = conceptseg.evaluate(nuclei_dataset.load_saved_view("nuclei"), "second", "ground_truth")
        assert result["metrics"]["iou"] > 0.5 and len(runs.list_runs(nuclei_dataset)) == 2
        assert sample["concept"] == "edited, not saved"  # nothing was reloaded under it
