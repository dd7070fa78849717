"""Segment-by-demonstration's form (counts, missing masks, estimate) and its live progress stream."""

import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext, ExecutionError

from conceptseg.install import PLUGIN_NAME

SEGMENT = f"{PLUGIN_NAME}/segment_by_demonstration"
# Part of the context the App sends with every run (and SDK callers do not).
FROM_APP = {"sample_selection_style": {"default": "checkmark", "alt": "checkmark"}}


def context(dataset, selected=(), view=None, selected_labels=(), **params):
    """An execution context as the App sends it: dataset, view, selection and form params."""
    request = {"dataset_name": dataset.name, "selected": list(selected), "selected_labels": list(selected_labels),
               "params": params}
    if view is not None:
        request["view"] = view._serialize()
    return ExecutionContext(request_params=request)


def form(dataset, selected=(), view=None, selected_labels=(), **params):
    """The properties the operator's resolve_input builds for this selection and params."""
    params = {"mask_field": "ground_truth", "view_target": "DATASET", **params}
    ctx = context(dataset, selected, view, selected_labels, **params)
    return foo.get_operator(SEGMENT).resolve_input(ctx).type.properties


def run_params(**extra):
    return {"demo_source": "selected", "mask_field": "ground_truth", "pred_field": "live", **extra}


class TestForm:
    def test_selection_is_counted(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        notice = form(nuclei_dataset, demos)["demo_count"]
        assert notice.view.label == "3 demonstration(s), masks from 'ground_truth'."
        assert not notice.invalid

    def test_a_demonstration_without_mask_is_a_negative(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        unmasked = nuclei_dataset.match_tags("demo", bool=False).first()
        unmasked.ground_truth = None
        unmasked.save()
        notice = form(nuclei_dataset, demos + [unmasked.id])["demo_count"]
        assert not notice.invalid and "1 without a label there are negatives" in notice.view.label

    def test_tagged_demonstrations_are_counted(self, plugin_installed, nuclei_dataset):
        props = form(nuclei_dataset, demo_source="tag", demo_tag="demo")
        assert props["demo_count"].view.label.startswith("3 demonstration(s)")

    def test_demonstrations_alone_are_no_targets(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo")
        estimate = form(nuclei_dataset, demos.values("id"), view=demos, view_target="CURRENT_VIEW")["estimate"]
        assert estimate.invalid and estimate.view.label.startswith("No targets")

    def test_the_default_target_is_the_current_view(self, plugin_installed, nuclei_dataset):
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        demos = nuclei.match_tags("demo").values("id")
        ctx = context(nuclei_dataset, demos, view=nuclei, mask_field="ground_truth")
        target = foo.get_operator(SEGMENT).resolve_input(ctx).type.properties["view_target"]
        assert target.default == "CURRENT_VIEW"
        assert [c.value for c in target.view.choices] == ["DATASET", "CURRENT_VIEW"]  # no "Current selection"

    def test_estimate_counts_targets_without_demonstrations(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        label = form(nuclei_dataset, demos)["estimate"].view.label
        assert label.startswith("14 target(s). Estimate: ~14 targets × ~0.05 s (appearance)")  # 17 - 3 demos
        label = form(nuclei_dataset, demos, route="reasoning", model="some/bundle")["estimate"].view.label
        assert "per target with the model" in label
        label = form(nuclei_dataset, demos, route="object")["estimate"].view.label
        assert label.startswith("14 target(s). Estimate: ~14 targets × ~0.10 s (object) + ~3 s to fit and verify")


class TestLiveProgress:
    def test_app_runs_get_a_progress_stream(self, plugin_installed, nuclei_dataset):
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        result = foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, view=nuclei, selected=nuclei.match_tags("demo").values("id"),
            params=run_params(view_target="CURRENT_VIEW"), **FROM_APP,
        )
        # A generator's result is not kept by FiftyOne; what it yielded is in the requests.
        assert result.result is None
        requests = result.executor.to_json()["requests"]
        progress = [r["params"] for r in requests if r["operator_uri"] == "set_progress"]
        assert progress[0]["progress"] == 0.0 and progress[-1] == {"progress": 1.0, "label": "13/13 targets"}
        names = [r["operator_uri"] for r in requests]
        assert names[-2:] == ["reload_dataset", "notify"]
        assert requests[-1]["params"]["variant"] == "success"
        assert len(nuclei_dataset.exists("live")) == 13

    def test_engine_errors_become_an_error_notification(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        # The form lets this through (overwrite ticked); the engine refuses to write over the masks.
        result = foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, selected=demos,
            params=run_params(view_target="DATASET", pred_field="ground_truth", overwrite=True),
            **FROM_APP,
        )
        notify = [r["params"] for r in result.executor.to_json()["requests"] if r["operator_uri"] == "notify"]
        assert [n["variant"] for n in notify] == ["error"]
        assert "is the demonstrations' mask field" in notify[0]["message"]


TRAIN = f"{PLUGIN_NAME}/train_concept_policy"


@pytest.fixture
def shapes(tmp_path):
    """3 procedural concepts × 4 images (3 train, 1 test each) with concept, level, ground_truth."""
    import uuid

    import fiftyone as fo

    from conceptseg.datasets import import_dataset
    from conceptseg.training.procedural import generate, write_folder

    name = f"train-form-{uuid.uuid4().hex[:8]}"
    items = generate(["circle", "square", "red object"], per_concept=4, size=96)
    import_dataset("folder", write_folder(str(tmp_path / "shapes"), items), name)
    yield fo.load_dataset(name)
    fo.delete_dataset(name)


def train_form(dataset, **params):
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {"view_target": "DATASET", **params}})
    return foo.get_operator(TRAIN).resolve_input(ctx).type.properties


class TestTrainForm:
    def test_config_is_delegated_only(self, plugin_installed):
        config = foo.get_operator(TRAIN).config
        assert config.allow_delegated_execution and config.default_choice_to_delegated
        assert not config.allow_immediate_execution and not config.unlisted and config.dynamic

    def test_inputs_and_their_choices(self, plugin_installed, shapes):
        props = train_form(shapes)
        assert {"view_target", "concept_field", "mask_field", "model", "out_dir", "stage", "steps", "lora",
                "group_size", "test_tag", "episodes"} <= set(props)
        concepts = props["concept_field"].type.values  # string fields, not the media path
        assert {"concept", "level"} <= set(concepts) and "filepath" not in concepts
        assert props["concept_field"].default == "concept"
        assert props["mask_field"].type.values == ["ground_truth"]
        assert props["model"].required and props["out_dir"].required
        assert props["stage"].type.values == ["1", "2"] and props["stage"].default == "2"
        assert (props["group_size"].default, props["lora"].default, props["test_tag"].default) == (8, True, "test")
        assert props["episodes"].view.label == "9 train samples in 3 concepts make the episodes."

    def test_stage_1_has_no_rollout_settings(self, plugin_installed, shapes):
        props = train_form(shapes, stage="1")
        assert "lora" not in props and "group_size" not in props

    def test_no_concept_with_two_train_samples_is_invalid(self, plugin_installed, shapes):
        for concept in ("circle", "square", "red object"):
            shapes.match({"concept": concept}).match_tags("train").limit(2).tag_samples("test")
        episodes = train_form(shapes)["episodes"]
        assert episodes.invalid and episodes.view.label.startswith("No concept in 'concept' has two or more train")
        label = train_form(shapes, test_tag="none")["episodes"].view.label  # nothing held out now
        assert label == "12 train samples in 3 concepts make the episodes."

    def test_an_output_with_checkpoints_announces_the_resume(self, plugin_installed, shapes, tmp_path):
        (tmp_path / "out" / "checkpoints" / "step-000040").mkdir(parents=True)
        (tmp_path / "out" / "checkpoints" / "step-000040" / "trainer_state.pt").write_bytes(b"")
        (tmp_path / "out" / "checkpoints" / "step-000050").mkdir()  # interrupted while saving: not a resume point
        props = train_form(shapes, out_dir=str(tmp_path / "out"))
        assert props["resume"].view.label.endswith("holds checkpoints up to step 40: the run resumes from there.")
        assert "resume" not in train_form(shapes, out_dir=str(tmp_path / "elsewhere"))
