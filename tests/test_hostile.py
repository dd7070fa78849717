"""Hostile but realistic inputs (issue 17): nothing lost, nothing raw.

Each case checks what the user sees (exit status, one sentence on stderr, no traceback)
and that the data they had before is still there afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import cv2
import fiftyone as fo
import numpy as np
import pytest

from conceptseg import cli
from conceptseg.datasets import fixtures, import_dataset

CLI = [sys.executable, "-m", "conceptseg.cli"]


def default_sigint() -> None:
    """In a child before exec: SIGINT back to its default (the suite may run with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args, env=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env or os.environ)


def _refused(capsys, argv, *words):
    """The command exits 2 with one line on stderr holding ``words``, and no traceback."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _segment(dataset, *extra):
    return ["segment", "--dataset", dataset.name, "--demo-tag", "demo", "--mask-field", "ground_truth",
            "--pred-field", "pred", "--view", "nuclei", *extra]


def _mask_bytes(dataset):
    return {s.filepath: open(s.ground_truth.mask_path, "rb").read() for s in dataset if s.ground_truth}


class TestImport:
    def test_failed_overwrite_keeps_the_existing_dataset(self, demo_files, tmp_path, name, capsys):
        good = fixtures.write_folder(str(tmp_path / "good"), demo_files)
        assert cli.main(["import", "--format", "folder", good, "--dataset", name]) == 0
        before = fo.load_dataset(name)
        count, masks, old_paths = len(before), _mask_bytes(before), before.values("ground_truth.mask_path")
        bad = fixtures.write_folder(str(tmp_path / "bad"), demo_files)
        last = sorted(os.listdir(os.path.join(bad, "masks")))[-1]  # read after others were written
        cv2.imwrite(os.path.join(bad, "masks", last), np.ones((7, 9), np.uint8))
        _refused(capsys, ["import", "--format", "folder", bad, "--dataset", name, "--overwrite"], "is 9x7")
        after = fo.load_dataset(name)
        assert len(after) == count and _mask_bytes(after) == masks
        assert [d for d in fo.list_datasets() if d.startswith(name)] == [name]  # no temporary left
        # A valid overwrite replaces it, masks in a directory of their own.
        assert cli.main(["import", "--format", "folder", good, "--dataset", name, "--overwrite"]) == 0
        replaced = fo.load_dataset(name)
        assert len(replaced) == count and replaced.info["conceptseg_import"]["dataset"] == name
        assert set(replaced.values("ground_truth.mask_path")).isdisjoint(old_paths)
        assert [d for d in fo.list_datasets() if d.startswith(name)] == [name]

    def test_file_name_not_utf8_is_reported_not_a_crash(self, demo_files, tmp_path, name):
        root = fixtures.write_folder(str(tmp_path / "cells"), demo_files)
        first = sorted(os.listdir(os.path.join(root, "images")))[0]
        odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: a surrogate escape in Python
        for sub in ("images", "masks"):
            shutil.copy(os.path.join(root, sub, first), os.path.join(root, sub, odd))
        run = _cli("import", "--format", "folder", root, "--dataset", name, "--json")
        assert run.returncode == 0, run.stderr  # it was 139 (SIGSEGV in cv2.imwrite)
        report = json.loads(run.stdout)
        assert report["imported"] == 7 and len(report["invalid"]) == 2  # the image and its mask
        assert all("caf\\xe9.png" in i and "not valid UTF-8" in i for i in report["invalid"])
        assert len(fo.load_dataset(name)) == 7

    def test_mask_written_through_a_path_cv2_cannot_take(self, tmp_path):
        path = os.path.join(str(tmp_path), os.fsdecode(b"m\xe9"), "a.png")
        code = f"from conceptseg.datasets.base import write_mask; import numpy as np; write_mask(np.eye(4, dtype=bool), {path!r})"
        assert subprocess.run([sys.executable, "-c", code]).returncode == 0
        with open(path, "rb") as f:
            written = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_UNCHANGED)
        assert written.tolist() == np.eye(4, dtype=np.uint8).tolist()

    def test_empty_reasonseg_folder_is_an_error(self, tmp_path, name, capsys):
        (tmp_path / "empty").mkdir()
        _refused(capsys, ["import", "--format", "reasonseg", str(tmp_path / "empty"), "--dataset", name],
                 "Found no sample", "reasonseg layout")
        assert not fo.dataset_exists(name)

    def test_empty_source_does_not_replace_a_dataset(self, demo_files, tmp_path, name, capsys):
        root = fixtures.write_folder(str(tmp_path / "cells"), demo_files)
        import_dataset("folder", root, name)
        (tmp_path / "nothing" / "images").mkdir(parents=True)
        _refused(capsys, ["import", "--format", "folder", str(tmp_path / "nothing"), "--dataset", name,
                          "--overwrite"], "Found no sample")
        assert len(fo.load_dataset(name)) == 7


class TestBenchmark:
    def test_dataset_without_concept_or_query_records_nothing(self, demo_files, tmp_path, name, capsys):
        root = fixtures.write_folder(str(tmp_path / "cells"), demo_files)
        import_dataset("folder", root, name)
        dataset = fo.load_dataset(name)
        dataset.delete_sample_field("concept")
        _refused(capsys, ["benchmark", "--dataset", name], "concept or a query")
        assert fo.load_dataset(name).list_runs() == []


    def test_mask_directory_that_cannot_be_written_records_nothing(self, demo_files, tmp_path, name, capsys):
        from conceptseg.runs.names import default_output_dir

        root = fixtures.write_folder(str(tmp_path / "cells"), demo_files)
        import_dataset("folder", root, name)
        blocked = default_output_dir(fo.load_dataset(name), "benchmark_pred")
        os.makedirs(os.path.dirname(blocked), exist_ok=True)
        with open(blocked, "w") as f:
            f.write("a file where the masks would go")
        _refused(capsys, ["benchmark", "--dataset", name, "--route", "appearance"], "is a file")
        assert fo.load_dataset(name).list_runs() == []


class TestTinyBundleAndInstallPaths:
    def test_non_empty_directory_is_refused(self, tmp_path, capsys):
        out = tmp_path / "trained"
        out.mkdir()
        (out / "bundle.json").write_text('{"format": "conceptseg-bundle", "mine": true}')
        _refused(capsys, ["tiny-bundle", str(out)], "is not empty", "--overwrite")
        assert json.loads((out / "bundle.json").read_text())["mine"] is True

    def test_overwrite_or_empty_directory_passes_the_check(self, tmp_path):
        from conceptseg.runs.outputs import empty_or_overwrite

        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        assert empty_or_overwrite(str(tmp_path / "full"), True) == str(tmp_path / "full")
        assert empty_or_overwrite(str(tmp_path / "new"), False) == str(tmp_path / "new")

    def test_paths_that_are_files(self, tmp_path, capsys):
        afile = tmp_path / "afile"
        afile.write_text("not a directory")
        _refused(capsys, ["tiny-bundle", str(afile)], "is a file")
        _refused(capsys, ["tiny-bundle", str(afile / "sub")], "cannot be written")
        _refused(capsys, ["install-plugin", "--plugins-dir", str(afile)], "is a file")
        assert afile.read_text() == "not a directory"


class TestSegmentAndEvaluateInputs:
    def test_unknown_saved_view(self, nuclei_dataset, capsys):
        args = _segment(nuclei_dataset)
        args[args.index("nuclei")] = "nucleii"
        _refused(capsys, args, "no saved view 'nucleii'", "nuclei")
        _refused(capsys, ["evaluate", "--dataset", nuclei_dataset.name, "--pred-field", "ground_truth",
                          "--gt-field", "ground_truth", "--view", "nucleii"], "no saved view 'nucleii'")

    @pytest.mark.parametrize("size", ["0", "-3"])
    def test_evaluate_size_must_be_positive(self, nuclei_dataset, capsys, size):
        _refused(capsys, ["evaluate", "--dataset", nuclei_dataset.name, "--pred-field", "ground_truth",
                          "--gt-field", "ground_truth", "--size", size], "positive number of pixels")

    def test_eval_key_must_be_a_plain_name(self, nuclei_dataset, capsys):
        _refused(capsys, ["evaluate", "--dataset", nuclei_dataset.name, "--pred-field", "ground_truth",
                          "--gt-field", "ground_truth", "--eval-key", "a.b"], "'a.b'", "underscores")
        assert nuclei_dataset.list_runs() == [] and not nuclei_dataset.has_field("a")

    def test_train_learning_rate_nan(self, nuclei_dataset, tmp_path, capsys):
        _refused(capsys, ["train", "--stage", "1", "--dataset", nuclei_dataset.name, "--concept-field", "concept",
                          "--mask-field", "ground_truth", "--model", "conceptseg-tiny-random",
                          "--out", str(tmp_path / "out"), "--lr", "nan"], "positive number")
        assert not (tmp_path / "out").exists()

    def test_train_out_that_cannot_be_written(self, nuclei_dataset, tmp_path, capsys):
        (tmp_path / "afile").write_text("x")
        _refused(capsys, ["train", "--stage", "1", "--dataset", nuclei_dataset.name, "--concept-field", "concept",
                          "--mask-field", "ground_truth", "--model", "conceptseg-tiny-random",
                          "--out", str(tmp_path / "afile" / "out")], "is a file")

    def test_output_dir_that_cannot_be_written_writes_nothing(self, nuclei_dataset, tmp_path):
        from conceptseg.runs.jobs import segment_by_demonstration
        from conceptseg.runs.outputs import OutputDirError

        (tmp_path / "afile").write_text("x")
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        with pytest.raises(OutputDirError, match="cannot be written"):
            segment_by_demonstration(nuclei.match_tags("demo"), nuclei, "ground_truth", "pred",
                                     output_dir=str(tmp_path / "afile" / "masks"))
        assert nuclei_dataset.list_runs() == [] and not nuclei_dataset.has_field("pred")


class TestEvaluateTruth:
    def test_deleted_prediction_leaves_no_stale_metrics(self, nuclei_dataset, capsys):
        assert cli.main(_segment(nuclei_dataset, "--json")) == 0
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        from conceptseg.runs.evaluation import evaluate

        assert len(evaluate(nuclei, "pred", "ground_truth")["samples"]) == 13
        gone = nuclei.match_tags("demo", bool=False).first()
        gone.pred = None
        gone.save()
        report = evaluate(nuclei, "pred", "ground_truth")
        assert len(report["samples"]) == 12 and gone.id in report["missing_pred"]
        assert nuclei_dataset[gone.id].eval_pred_concept_iou is None
        stored = [v for v in nuclei_dataset.values("eval_pred_concept_iou") if v is not None]
        assert len(stored) == 12 and np.isclose(np.mean(stored), report["metrics"]["iou"])

    def test_several_ground_truth_values_get_a_notice(self, nuclei_dataset, tmp_path, capsys):
        sample = nuclei_dataset.match_tags("demo").first()
        labels = sample.ground_truth.get_mask().astype(np.uint8)
        labels[: labels.shape[0] // 2] *= 2  # two classes, 1 and 2
        path = str(tmp_path / "classes.png")
        cv2.imwrite(path, labels)
        sample["classes"] = fo.Segmentation(mask_path=path)
        sample.save()
        assert cli.main(["evaluate", "--dataset", nuclei_dataset.name, "--pred-field", "ground_truth",
                         "--gt-field", "classes", "--json"]) == 0
        out = capsys.readouterr()
        assert set(json.loads(out.out)) == {"metrics", "samples"}
        assert "several non-zero values" in out.err and "[1, 2]" in out.err
        single = cli.main(["evaluate", "--dataset", nuclei_dataset.name, "--pred-field", "classes",
                           "--gt-field", "ground_truth", "--eval-key", "other"])
        assert single == 0 and "several" not in capsys.readouterr().err


class TestLabels:
    def test_detections_carry_cost(self, nuclei_dataset):
        assert cli.main(_segment(nuclei_dataset)) == 0
        for sample in nuclei_dataset.load_saved_view("nuclei").match_tags("demo", bool=False):
            assert sample.pred_instances.cost >= 0 and sample.pred_instances.cost == pytest.approx(sample.pred.cost)


class TestLock:
    def test_second_run_on_the_same_field_is_refused_naming_the_first(self, nuclei_dataset, capsys):
        from conceptseg.runs.locks import COLLECTION, field_lock

        with field_lock(nuclei_dataset.name, "pred", "segment_by_demonstration"):
            err = _refused(capsys, _segment(nuclei_dataset), "being written by another run",
                           f"pid {os.getpid()} on {socket.gethostname()}")
            assert "segment_by_demonstration" in err
            assert nuclei_dataset.list_runs() == [] and not nuclei_dataset.has_field("pred")
        assert cli.main(_segment(nuclei_dataset)) == 0  # released
        import fiftyone.core.odm.database as fod

        assert fod.get_db_conn()[COLLECTION].count_documents({"dataset": nuclei_dataset.name}) == 0

    def test_lock_of_a_dead_run_is_taken_over(self, nuclei_dataset, caplog):
        import fiftyone.core.odm.database as fod

        from conceptseg.runs.locks import COLLECTION, lock_id

        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        fod.get_db_conn()[COLLECTION].insert_one(dict(
            _id=lock_id(nuclei_dataset.name, "pred"), dataset=nuclei_dataset.name, field="pred", token="old",
            pid=dead.pid, host=socket.gethostname(), process_started=0.0, started_at=0.0, what="x", command="x"))
        assert cli.main(_segment(nuclei_dataset)) == 0
        assert "no longer running" in caplog.text
        assert fod.get_db_conn()[COLLECTION].count_documents({"dataset": nuclei_dataset.name}) == 0

    def test_lock_on_another_host_is_not_taken(self, nuclei_dataset, capsys):
        import fiftyone.core.odm.database as fod

        from conceptseg.runs.locks import COLLECTION, lock_id, release

        fod.get_db_conn()[COLLECTION].insert_one(dict(
            _id=lock_id(nuclei_dataset.name, "pred"), dataset=nuclei_dataset.name, field="pred", token="t",
            pid=1, host="elsewhere", process_started=0.0, started_at=0.0, what="x", command="x"))
        _refused(capsys, _segment(nuclei_dataset), "on elsewhere", "python -m conceptseg.runs.locks --release")
        assert release(nuclei_dataset.name, "pred")


class TestCommandLine:
    def test_json_stdout_is_one_document_whatever_the_environment(self, nuclei_dataset):
        env = dict(os.environ)
        env["FIFTYONE_DATABASE_VALIDATION"] = "true"  # FiftyOne's version notice goes to stdout
        run = _cli(*_segment(nuclei_dataset, "--json"), env=env)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["segmented"] == 13  # the whole stdout parses

    def test_ctrl_c_says_how_to_resume(self, nuclei_dataset):
        # SIGINT's default handler in the child even when this suite runs with SIGINT ignored
        # (nohup, a background job): an ignored SIGINT is inherited, and Python then never
        # installs its KeyboardInterrupt handler
        proc = subprocess.Popen([*CLI, *_segment(nuclei_dataset)], stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)
        for line in proc.stderr:  # the first progress line: the run is writing labels
            if "targets" in line:
                proc.send_signal(signal.SIGINT)
                break
        err = proc.stderr.read()
        assert proc.wait() == 130, err
        assert "interrupted: run the same command with --resume" in err and "Traceback" not in err
        done = _cli(*_segment(nuclei_dataset, "--resume", "--json"))
        summary = json.loads(done.stdout)
        assert summary["skipped"] >= 1 and summary["skipped"] + summary["segmented"] == 13

    def test_help_shows_defaults_and_zoo_names(self, capsys):
        with pytest.raises(SystemExit):
            cli.main(["segment", "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "(default: 0.6)" in out and "(default: auto)" in out and "(default: None)" not in out
        assert "conceptseg-r1-7b" in out and "conceptseg-tiny-random" in out


class TestBundles:
    def test_damaged_weights_are_one_sentence(self, tiny_bundle_dir, tmp_path):
        from conceptseg.model.checkpoint import BundleError, load_bundle

        for damaged in ("translator.safetensors", os.path.join("policy", "model.safetensors")):
            copy = tmp_path / damaged.replace(os.sep, "_")
            shutil.copytree(tiny_bundle_dir, copy)
            with open(copy / damaged, "r+b") as f:
                f.truncate(os.path.getsize(copy / damaged) // 2)
            with pytest.raises(BundleError, match="truncated or damaged") as error:
                load_bundle(str(copy))
            assert damaged.split(os.sep)[0] in str(error.value)

    def test_saved_bundle_does_not_need_its_input(self, tiny_bundle_dir, tmp_path):
        from conceptseg.model.checkpoint import load_bundle, save_bundle

        source = tmp_path / "input"
        shutil.copytree(tiny_bundle_dir, source)
        bundle = load_bundle(str(source))
        out = save_bundle(str(tmp_path / "trained"), bundle.policy_path, bundle.translator, bundle.segmenter)
        shutil.rmtree(source)
        spec = json.loads((tmp_path / "trained" / "bundle.json").read_text())
        assert spec["policy"]["path"] == "policy"
        assert load_bundle(out).policy is not None

    def test_7b_says_what_it_needs_before_downloading(self, tmp_path, monkeypatch):
        import torch

        from conceptseg.model.checkpoint import BundleError
        from conceptseg.model.zoo import ANYWAY, download_zoo_bundle

        monkeypatch.delenv(ANYWAY, raising=False)
        target = tmp_path / "zoo" / "conceptseg-r1-7b"
        if not torch.cuda.is_available():
            with pytest.raises(BundleError, match="no CUDA GPU") as error:
                download_zoo_bundle("conceptseg-r1-7b", str(target))
            assert "24 GB" in str(error.value) and "gated facebook/sam3" in str(error.value)
            assert ANYWAY in str(error.value)
            assert os.listdir(tmp_path / "zoo") == []  # nothing downloaded, no partial directory


class TestDemo:
    def test_demo_rebuilds_an_existing_dataset_of_its_name(self, capsys):
        # tests/test_isolation.py runs this against a name the "user's" database also holds.
        name = os.environ.get("CONCEPTSEG_TEST_DEMO_NAME", "conceptseg-demo-test")
        fo.Dataset(name, persistent=True, overwrite=True).add_sample(fo.Sample(filepath="/nowhere/old.png"))
        try:
            assert cli.main(["demo", "--dataset", name]) == 0
            assert len(fo.load_dataset(name)) == 17 and "mean IoU" in capsys.readouterr().out
        finally:
            fo.delete_dataset(name)
