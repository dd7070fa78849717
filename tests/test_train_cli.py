"""``conceptseg train``: stage 1 then stage 2 on procedural concepts, and the bundle it makes segments."""

import contextlib
import io
import json
import os
import shutil
import uuid

import fiftyone as fo
import pytest

from conceptseg import cli
from conceptseg.datasets import import_dataset
from conceptseg.training.procedural import generate, write_folder

CONCEPTS = ["circle", "square", "red object"]


def procedural_dataset(root: str, per_concept: int, concepts=CONCEPTS) -> fo.Dataset:
    """``per_concept`` 96 px images of each concept, imported with fields concept, level, ground_truth."""
    name = f"train-cli-{uuid.uuid4().hex[:8]}"
    import_dataset("folder", write_folder(root, generate(concepts, per_concept=per_concept, size=96)), name)
    return fo.load_dataset(name)


def run(*args: str) -> tuple[int, str, str]:
    """``conceptseg ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def train_args(dataset, model: str, out: str, *extra: str) -> list[str]:
    return ["train", "--dataset", dataset.name, "--concept-field", "concept", "--mask-field", "ground_truth",
            "--model", model, "--out", out, "--cpu", *extra]


def metric_lines(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """3 concepts × 4 images (3 train, 1 test each), shared by the module's training runs."""
    dataset = procedural_dataset(str(tmp_path_factory.mktemp("shapes")), per_concept=4)
    yield dataset
    fo.delete_dataset(dataset.name)


@pytest.fixture(scope="module")
def stage1(shapes, tiny_bundle_dir, tmp_path_factory):
    """(out dir, JSON summary) of two stage-1 steps from the tiny bundle."""
    out = str(tmp_path_factory.mktemp("stage1") / "bundle")
    code, stdout, stderr = run(*train_args(shapes, tiny_bundle_dir, out, "--stage", "1", "--steps", "2", "--json"))
    assert code == 0, stderr
    return out, json.loads(stdout)


@pytest.fixture(scope="module")
def stage2(shapes, stage1, tmp_path_factory):
    """(out dir, JSON summary) of two LoRA Meta-GRPO steps on the stage-1 bundle."""
    out = str(tmp_path_factory.mktemp("stage2") / "bundle")
    code, stdout, stderr = run(*train_args(shapes, stage1[0], out, "--stage", "2", "--steps", "2",
                                           "--group-size", "2", "--max-new-tokens", "16", "--json"))
    assert code == 0, stderr
    return out, json.loads(stdout)


class TestStages:
    def test_stage1_writes_a_bundle_and_one_metrics_line_per_step(self, shapes, stage1):
        out, summary = stage1
        assert os.path.isfile(os.path.join(out, "bundle.json"))
        lines = metric_lines(out)
        assert [m["step"] for m in lines] == [1, 2] and {m["stage"] for m in lines} == {1}
        assert all(m["mask_loss"] >= 0 for m in lines)
        assert summary["bundle"] == os.path.abspath(out) and summary["steps"] == 2 and summary["stage"] == 1
        assert summary["resumed_from"] is None and summary["last"]["step"] == 2
        assert summary["episodes"]["concepts"] == 3 and summary["episodes"]["episodes"] == 9  # the train samples
        assert summary["left_out"] == {"without_concept": 0, "without_mask": 0}
        assert summary["run_key"] in shapes.list_runs()

    def test_stage2_trains_the_stage1_bundle(self, stage2):
        out, summary = stage2
        assert os.path.isfile(os.path.join(out, "bundle.json"))
        assert os.path.isdir(os.path.join(out, "adapter"))  # LoRA is the default
        lines = metric_lines(out)
        assert [m["step"] for m in lines] == [1, 2] and {m["stage"] for m in lines} == {2}
        assert all("reward" in m and "kl" in m for m in lines)
        assert summary["stage"] == 2 and summary["steps"] == 2
        json.dumps(summary, allow_nan=False)  # strict JSON: unscorable means are null, not NaN

    def test_trained_bundle_segments_with_the_reasoning_route(self, shapes, stage2):
        circles = shapes.match({"concept": "circle"})
        circles.match_tags("train").tag_samples("demo")
        shapes.save_view("circle_test", circles.match_tags("test"))
        code, stdout, stderr = run("segment", "--dataset", shapes.name, "--demo-tag", "demo",
                                   "--mask-field", "ground_truth", "--pred-field", "trained", "--view", "circle_test",
                                   "--route", "reasoning", "--model", stage2[0], "--json")
        assert code == 0, stderr
        summary = json.loads(stdout)
        assert summary["route"] == "reasoning" and summary["segmented"] == 1 and summary["failures"] == []
        assert shapes.match_tags("test").match({"concept": "circle"}).exists("trained").count() == 1

    def test_rerun_resumes_and_prints_progress_and_a_summary(self, shapes, stage1, tmp_path):
        out = str(tmp_path / "resumed")
        shutil.copytree(stage1[0], out)
        code, stdout, stderr = run(*train_args(shapes, stage1[0], out, "--stage", "1", "--steps", "3"))
        assert code == 0, stderr
        assert "step 3/3" in stderr and "step 1/3" not in stderr  # steps 1-2 came from the checkpoint
        assert "stage 1: 3 steps, resumed from step 2; bundle " + os.path.abspath(out) in stdout
        assert "last step: loss" in stdout and "mask_loss" in stdout
        assert ("left out: 0 concepts with fewer than two samples, 0 samples without a concept, 0 without a mask"
                in stdout)
        assert [m["step"] for m in metric_lines(out)] == [1, 2, 3]


class TestBadInput:
    @pytest.fixture
    def small(self, tmp_path):
        dataset = procedural_dataset(str(tmp_path / "small"), per_concept=3, concepts=CONCEPTS[:2])
        yield dataset
        fo.delete_dataset(dataset.name)

    def test_unknown_concept_field_is_named(self, small, tmp_path):
        args = train_args(small, "unused", str(tmp_path / "out"), "--stage", "1")
        args[args.index("concept")] = "kind"
        code, _, stderr = run(*args)
        assert code == 2
        assert "concept field 'kind' does not exist" in stderr
        assert not os.path.exists(tmp_path / "out")

    def test_a_field_without_masks_is_refused(self, small, tmp_path):
        for sample in small:
            sample["shape"] = fo.Classification(label=sample.concept)
            sample.save()
        args = train_args(small, "unused", str(tmp_path / "out"), "--stage", "1")
        args[args.index("ground_truth")] = "shape"
        code, _, stderr = run(*args)
        assert code == 2
        assert "'shape' holds Classification; it must be a Segmentation, Detections (with instance masks, or boxes) or Polylines" in stderr

    def test_one_sample_per_concept_makes_no_episodes(self, tmp_path):
        single = procedural_dataset(str(tmp_path / "single"), per_concept=1)
        try:
            code, _, stderr = run(*train_args(single, "unused", str(tmp_path / "out"), "--stage", "2"))
        finally:
            fo.delete_dataset(single.name)
        assert code == 2
        assert "no concept in 'concept' has two or more train samples" in stderr

    def test_unknown_dataset_and_saved_view(self, small, tmp_path):
        code, _, stderr = run("train", "--stage", "1", "--dataset", "no-such", "--concept-field", "concept",
                              "--mask-field", "ground_truth", "--model", "m", "--out", str(tmp_path))
        assert code == 2 and "No dataset named 'no-such'" in stderr
        code, _, stderr = run(*train_args(small, "m", str(tmp_path), "--stage", "1", "--view", "nope"))
        assert code == 2 and "no saved view 'nope'" in stderr

    def test_settings_out_of_range(self, small, tmp_path):
        code, _, stderr = run(*train_args(small, "m", str(tmp_path), "--stage", "2", "--group-size", "1"))
        assert code == 2 and "group_size >= 2" in stderr
        code, _, stderr = run(*train_args(small, "m", str(tmp_path), "--stage", "1", "--demonstrations", "5"))
        assert code == 2 and "--demonstrations must be 1 to 4" in stderr


class TestArguments:
    def parse(self, *extra):
        return cli.build_parser().parse_args(["train", "--stage", "2", "--dataset", "d", "--concept-field", "c",
                                              "--mask-field", "m", "--model", "x", "--out", "o", *extra])

    def test_lora_by_default_full_on_request_never_both(self):
        assert self.parse().lora is True and self.parse("--lora").lora is True
        assert self.parse("--full").lora is False
        with pytest.raises(SystemExit):
            self.parse("--lora", "--full")

    def test_defaults(self):
        args = self.parse()
        assert (args.group_size, args.test_tag, args.steps, args.batch_size, args.lr) == (8, "test", 100, 1, None)

    def test_stage_is_required_and_1_or_2(self):
        parser = cli.build_parser()
        base = ["train", "--dataset", "d", "--concept-field", "c", "--mask-field", "m", "--model", "x", "--out", "o"]
        for extra in ([], ["--stage", "3"]):
            with pytest.raises(SystemExit):
                parser.parse_args(base + extra)
