"""Runs users can manage: target view on record, list, delete (fields, files, nothing else), rename + resume."""

import json
import os
import subprocess
import sys

import fiftyone as fo
import pytest

from conceptseg import cli
from conceptseg.runs import jobs
from conceptseg.runs import records as runs
from conceptseg.runs.delete import delete_run
from conceptseg.runs.evaluation import evaluate


def _segment(dataset, pred_field="pred", **kwargs):
    nuclei = dataset.load_saved_view("nuclei")
    return jobs.segment_by_demonstration(
        demonstrations=nuclei.match_tags("demo"), targets=nuclei, mask_field="ground_truth",
        pred_field=pred_field, **kwargs)


def _files(dataset, field):
    return sorted(p for p in dataset.values(f"{field}.mask_path") if p)


def _cli_subprocess(*args):
    """The CLI in another process (its own FiftyOne connection), as a second user would run it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "conceptseg.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


class Interrupted(Exception):
    """Stands for Ctrl-C in the middle of a run."""


class TestRunRecord:
    def test_run_view_loads_the_targets(self, nuclei_dataset):
        _segment(nuclei_dataset)
        targets = nuclei_dataset.load_saved_view("nuclei").match_tags("demo", bool=False)
        view = nuclei_dataset.load_run_view("conceptseg_pred")
        assert sorted(view.values("id")) == sorted(targets.values("id"))  # 13: demonstrations excluded
        assert nuclei_dataset.get_run_info("conceptseg_pred").config.output_dir.endswith(os.path.join("conceptseg", nuclei_dataset.name, "predicted-masks", "pred"))

    def test_label_attributes_are_declared_for_the_sidebar(self, nuclei_dataset):
        _segment(nuclei_dataset)
        flat = nuclei_dataset.get_field_schema(flat=True)
        for name, kind in (("route", fo.StringField), ("verified", fo.BooleanField),
                           ("verification", fo.FloatField), ("cost", fo.FloatField)):
            assert isinstance(flat[f"pred.{name}"], kind)
            assert isinstance(flat[f"pred_instances.detections.{name}"], kind)
        # declared fields filter like any field: the App's sidebar runs these same queries
        assert nuclei_dataset.count_values("pred.route") == {"appearance": 13, None: 4}


class TestListRuns:
    def test_lists_route_verification_targets_failures_and_time(self, nuclei_dataset):
        _segment(nuclei_dataset, "a")
        _segment(nuclei_dataset, "b")
        listed = runs.list_runs(nuclei_dataset)
        assert [r["pred_field"] for r in listed] == ["b", "a"]  # newest first
        for r in listed:
            assert r["route"] == "appearance" and r["verified"] is True and r["verification"] >= 0.8
            assert r["targets"] == 13 and r["segmented"] == 13 and r["failures"] == 0
            assert r["finished"] and r["seconds"] > 0 and r["started"].endswith("+00:00")

    def test_cli_json_is_one_document(self, nuclei_dataset, capsys):
        _segment(nuclei_dataset, "a")
        assert cli.main(["runs", "--dataset", nuclei_dataset.name, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(r["run_key"], r["targets"], r["failures"]) for r in listed] == [("conceptseg_a", 13, 0)]
        assert cli.main(["runs", "--dataset", nuclei_dataset.name]) == 0
        table = capsys.readouterr().out
        assert "conceptseg_a" in table and "appearance" in table

    def test_an_interrupted_run_is_listed_as_unfinished(self, nuclei_dataset, capsys):
        def stop(done, total):
            if done == 5:
                raise Interrupted
        with pytest.raises(Interrupted):
            _segment(nuclei_dataset, progress=stop)
        (r,) = runs.list_runs(nuclei_dataset)
        assert r["finished"] is False and r["targets"] == 13 and r["seconds"] is None
        assert cli.main(["runs", "--dataset", nuclei_dataset.name]) == 0
        assert "unfinished" in capsys.readouterr().out


class TestDeleteRun:
    def test_deletes_record_fields_evaluations_and_files_of_that_run_only(self, nuclei_dataset):
        _segment(nuclei_dataset, "a")
        _segment(nuclei_dataset, "b")
        evaluate(nuclei_dataset, "a", "ground_truth", eval_key="ev_a")
        evaluate(nuclei_dataset, "b", "ground_truth", eval_key="ev_b")
        a_files, b_files = _files(nuclei_dataset, "a"), _files(nuclei_dataset, "b")
        gt = nuclei_dataset.values("ground_truth.mask_path")
        assert len(a_files) == 13 and all(os.path.isfile(p) for p in a_files)

        report = delete_run(nuclei_dataset, "a")

        assert report["run_keys"] == ["conceptseg_a"] and report["evaluations"] == ["ev_a"]
        assert report["files"] == 13
        assert not any(os.path.exists(p) for p in a_files)
        assert not os.path.exists(os.path.dirname(a_files[0]))  # its own, now empty, directory
        schema = nuclei_dataset.get_field_schema()
        assert not any(f.startswith(("a", "ev_a_")) for f in schema if f not in ("b",))
        assert sorted(nuclei_dataset.list_runs()) == ["conceptseg_b", "ev_b"]
        assert "a" not in nuclei_dataset.mask_targets and "b" in nuclei_dataset.mask_targets
        # the other run, its evaluation and the ground truth are untouched
        assert _files(nuclei_dataset, "b") == b_files and all(os.path.isfile(p) for p in b_files)
        assert len(nuclei_dataset.exists("b_instances")) == 13
        assert len(nuclei_dataset.exists("ev_b_concept_iou")) == 13
        assert nuclei_dataset.values("ground_truth.mask_path") == gt

    def test_a_file_outside_the_runs_directory_is_kept(self, nuclei_dataset, tmp_path):
        _segment(nuclei_dataset, "a")
        sample = nuclei_dataset.exists("a").first()
        mine = str(tmp_path / "my_mask.png")
        sample.a.export_mask(mine, update=True)  # the user pointed one label at a file of their own
        sample.save()
        delete_run(nuclei_dataset, "a")
        assert os.path.isfile(mine)

    def test_unknown_run_lists_the_runs(self, nuclei_dataset, capsys):
        _segment(nuclei_dataset, "b")
        with pytest.raises(runs.RunNotFoundError, match=r"No conceptseg run wrote 'nope'.*write: b"):
            delete_run(nuclei_dataset, "nope")
        assert cli.main(["delete-run", "--dataset", nuclei_dataset.name, "--pred-field", "nope"]) == 2
        assert "runs here write: b" in capsys.readouterr().err
        assert nuclei_dataset.list_runs() == ["conceptseg_b"] and len(nuclei_dataset.exists("b")) == 13

    def test_delete_while_another_run_writes(self, nuclei_dataset):
        """Run b is writing when another process deletes run a: only a goes, b finishes whole."""
        _segment(nuclei_dataset, "a")
        a_files = _files(nuclei_dataset, "a")
        deleted = []

        def delete_a_midway(done, total):
            if done == 6:
                deleted.append(_cli_subprocess("delete-run", "--dataset", nuclei_dataset.name,
                                               "--pred-field", "a", "--json"))

        summary = _segment(nuclei_dataset, "b", progress=delete_a_midway)
        assert deleted[0].returncode == 0, deleted[0].stderr
        assert json.loads(deleted[0].stdout)["fields"] == ["a", "a_instances"]
        assert summary["segmented"] == 13
        dataset = fo.load_dataset(nuclei_dataset.name)
        dataset.reload()
        assert not dataset.has_field("a") and not dataset.has_field("a_instances")
        assert dataset.list_runs() == ["conceptseg_b"] and "a" not in dataset.mask_targets
        assert not any(os.path.exists(p) for p in a_files)
        b_files = _files(dataset, "b")
        assert len(b_files) == 13 and all(os.path.isfile(p) for p in b_files)
        assert len(dataset.exists("b_instances")) == 13


class TestRenamedRunResumes:
    def test_resume_after_rename_finishes_the_same_run(self, nuclei_dataset):
        def stop(done, total):
            if done == 5:
                raise Interrupted
        with pytest.raises(Interrupted):
            _segment(nuclei_dataset, progress=stop)
        run_id = nuclei_dataset.get_run_info("conceptseg_pred").config.run_id
        nuclei_dataset.rename_run("conceptseg_pred", "nuclei_run")

        summary = _segment(nuclei_dataset, resume=True)

        assert summary["skipped"] == 5 and summary["segmented"] == 8 and summary["run_key"] == "nuclei_run"
        assert nuclei_dataset.list_runs() == ["nuclei_run"]
        labels = [l for l in nuclei_dataset.values("pred") if l is not None]
        assert len(labels) == 13 and {l.run_id for l in labels} == {run_id}
        assert {l.run_key for l in labels} == {"conceptseg_pred", "nuclei_run"}  # the key when written
        assert delete_run(nuclei_dataset, "pred")["run_keys"] == ["nuclei_run"]


class TestDeleteOperator:
    def test_form_lists_runs_and_execute_deletes(self, plugin_installed, nuclei_dataset):
        import fiftyone.operators as foo
        from fiftyone.operators.executor import ExecutionContext

        from conceptseg.install import PLUGIN_NAME

        uri = f"{PLUGIN_NAME}/delete_concept_run"
        _segment(nuclei_dataset, "a")
        _segment(nuclei_dataset, "b")
        ctx = ExecutionContext(request_params={"dataset_name": nuclei_dataset.name, "params": {}})
        prop = foo.get_operator(uri).resolve_input(ctx).type.properties["pred_field"]
        assert [c.value for c in prop.view.choices] == ["a", "b"] and not prop.invalid
        result = foo.execute_operator(uri, dataset=nuclei_dataset, params={"pred_field": "a"})
        assert result.error is None and result.result["files"] == 13
        assert nuclei_dataset.list_runs() == ["conceptseg_b"] and not nuclei_dataset.has_field("a")


class TestDelegatedProgress:
    class _Ctx:
        """What progress_callback reads of an operator context: delegated, and where progress goes."""

        delegated = True

        def __init__(self):
            self.updates = []

        def set_progress(self, progress, label):
            self.updates.append(label)

    @staticmethod
    def _forms():
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "operators", "_forms.py")
        spec = importlib.util.spec_from_file_location("conceptseg_forms", path)
        forms = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(forms)
        return forms

    def test_every_few_seconds_and_always_the_last(self):
        forms = self._forms()
        now = [0.0]
        ctx = self._Ctx()
        report = forms.progress_callback(ctx, every=3.0, clock=lambda: now[0])
        for done in range(1, 101):  # 100 targets, one every 0.25 s: 25 s in all
            now[0] = done * 0.25
            report(done, 100)
        # the first, then one per 3 s (12 targets), then the last: 10 updates, not 100
        assert ctx.updates == [f"{d}/100 samples" for d in [1, 13, 25, 37, 49, 61, 73, 85, 97, 100]]

    def test_immediate_runs_get_no_callback(self):
        ctx = self._Ctx()
        ctx.delegated = False
        assert self._forms().progress_callback(ctx) is None
