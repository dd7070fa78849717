"""The ``conceptseg`` command line, in-process and as the installed console script."""

import json
import os
import shutil
import subprocess

import pytest

from conceptseg import cli


def _segment(dataset, *extra):
    return ["segment", "--dataset", dataset.name, "--demo-tag", "demo",
            "--mask-field", "ground_truth", "--pred-field", "pred", "--view", "nuclei", *extra]


class TestSegmentCommand:
    def test_json_summary(self, nuclei_dataset, capsys):
        assert cli.main(_segment(nuclei_dataset, "--json")) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["route"] == "appearance" and summary["segmented"] == 13
        assert summary["verification"] >= 0.8 and summary["failures"] == []

    def test_targets_default_to_every_untagged_sample(self, nuclei_dataset, capsys):
        args = _segment(nuclei_dataset, "--json")
        args.remove("--view"), args.remove("nuclei")
        assert cli.main(args) == 0
        assert json.loads(capsys.readouterr().out)["targets"] == 14  # 13 tiles + the quokka

    def test_existing_field_exits_2_with_the_fix(self, nuclei_dataset, capsys):
        assert cli.main(_segment(nuclei_dataset, "--json")) == 0
        capsys.readouterr()
        assert cli.main(_segment(nuclei_dataset)) == 2
        assert "--overwrite" in capsys.readouterr().err
        assert cli.main(_segment(nuclei_dataset, "--resume", "--json")) == 0
        assert json.loads(capsys.readouterr().out)["skipped"] == 13

    def test_overwrite_and_resume_exclude_each_other(self, nuclei_dataset):
        with pytest.raises(SystemExit):
            cli.main(_segment(nuclei_dataset, "--overwrite", "--resume"))

    def test_unknown_dataset_and_tag(self, nuclei_dataset, capsys):
        assert cli.main(["segment", "--dataset", "no-such", "--demo-tag", "demo",
                         "--mask-field", "ground_truth", "--pred-field", "p"]) == 2
        assert "No dataset named 'no-such'" in capsys.readouterr().err
        args = _segment(nuclei_dataset)
        args[args.index("demo")] = "nope"
        assert cli.main(args) == 2
        assert "tag 'nope'" in capsys.readouterr().err


class TestConsoleScript:
    def test_installed_command_segments_and_evaluates(self, nuclei_dataset):
        exe = shutil.which("conceptseg") or os.path.join(os.path.dirname(os.sys.executable), "conceptseg")
        run = lambda *args: subprocess.run([exe, *args], capture_output=True, text=True, env=os.environ)
        seg = run(*_segment(nuclei_dataset, "--json"))
        assert seg.returncode == 0, seg.stderr
        assert json.loads(seg.stdout)["segmented"] == 13
        ev = run("evaluate", "--dataset", nuclei_dataset.name, "--pred-field", "pred",
                 "--gt-field", "ground_truth", "--view", "nuclei", "--json")
        assert ev.returncode == 0, ev.stderr
        report = json.loads(ev.stdout)
        assert len(report["samples"]) == 13 and report["metrics"]["iou"] >= 0.8
