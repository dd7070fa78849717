"""Segment-by-demonstration's form (counts, missing masks, estimate) and its live progress stream."""

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext

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
        # The dialog's progress gives way to the sentence (what was written where), also a notification.
        assert names[-3:] == ["reload_dataset", "show_output", "notify"]
        sentence = requests[-1]["params"]["message"]
        assert requests[-1]["params"]["variant"] == "success"
        assert sentence.startswith("Segmented 13 targets with the appearance route (verification 0.")
        assert sentence.endswith("into 'live' (instances in 'live_instances').")
        assert dialog_message(requests[-2]) == ("Success", sentence)
        assert len(nuclei_dataset.exists("live")) == 13

    def test_engine_errors_become_one_sentence_in_place_of_the_progress(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        # The form lets this through (overwrite ticked); the engine refuses to write over the masks.
        result = foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, selected=demos,
            params=run_params(view_target="DATASET", pred_field="ground_truth", overwrite=True),
            **FROM_APP,
        )
        assert result.error is None  # no traceback: the error is the user's to fix
        requests = result.executor.to_json()["requests"]
        notify = [r["params"] for r in requests if r["operator_uri"] == "notify"]
        assert [n["variant"] for n in notify] == ["error"]
        assert "is the demonstrations' mask field" in notify[0]["message"]
        # The dialog stopped at its first progress label; a failed run replaces it by the reason.
        assert [r["operator_uri"] for r in requests][-2:] == ["show_output", "notify"]
        assert dialog_message(requests[-2]) == ("Error", notify[0]["message"])

    def test_sdk_callers_get_the_summary_and_the_error(self, plugin_installed, nuclei_dataset):
        from fiftyone.operators.executor import ExecutionError

        demos = nuclei_dataset.match_tags("demo").values("id")
        result = foo.execute_operator(SEGMENT, dataset=nuclei_dataset, selected=demos,
                                      params=run_params(view_target="DATASET", instances=False))
        assert result.result["segmented"] == 14 and result.result["instances_field"] is None
        assert not nuclei_dataset.has_field("live_instances")  # the CLI's --no-instances
        with pytest.raises(ExecutionError, match="is the demonstrations' mask field"):
            foo.execute_operator(SEGMENT, dataset=nuclei_dataset, selected=demos, params=run_params(
                view_target="DATASET", pred_field="ground_truth", overwrite=True))


def dialog_message(request) -> tuple[str, str]:
    """(view, sentence) of a show_output request: what the operator's dialog shows."""
    assert request["operator_uri"] == "show_output"
    (prop,) = request["params"]["outputs"]["type"]["properties"].values()
    return prop["view"]["name"], prop["view"]["label"]


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


EVALUATE = f"{PLUGIN_NAME}/evaluate_concept_segmentation"
ACCEPT = f"{PLUGIN_NAME}/accept_targets"
REJECT = f"{PLUGIN_NAME}/reject_targets"
APPLY = f"{PLUGIN_NAME}/apply_concept"
SAVE = f"{PLUGIN_NAME}/save_concept"
QUERY = f"{PLUGIN_NAME}/segment_by_query"
RERUN = f"{PLUGIN_NAME}/rerun_review"


def props(uri, dataset, selected=(), view=None, current_sample=None, **params):
    """The properties of ``uri``'s form for this selection and params."""
    request = {"dataset_name": dataset.name, "selected": list(selected), "params": params,
               "current_sample": current_sample}
    if view is not None:
        request["view"] = view._serialize()
    return foo.get_operator(uri).resolve_input(ExecutionContext(request_params=request)).type.properties


def refused(prop) -> str:
    """The sentence a property is refused with (its error message, or its warning's label)."""
    assert prop.invalid, "the form lets it through"
    return prop.error_message or prop.view.label


@pytest.fixture
def segmented(plugin_installed, nuclei_dataset):
    """The demo dataset with a run on the nuclei (``predictions``) and an older one (``older``)."""
    from conceptseg.runs.jobs import segment_by_demonstration

    nuclei = nuclei_dataset.load_saved_view("nuclei")
    demos = nuclei.match_tags("demo")
    for field in ("older", "predictions"):
        segment_by_demonstration(demos, nuclei, "ground_truth", field, route="appearance")
    return nuclei_dataset


class TestRefusedInTheForm:
    """Every bad input the form can know about is refused before Execute, in one sentence."""

    def test_a_mask_field_without_masks_on_the_demonstrations(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo")
        nuclei_dataset.add_sample_field("empty", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
        notice = form(nuclei_dataset, demos.values("id"), mask_field="empty")["demo_count"]
        assert refused(notice) == ("None of the 3 demonstration(s) has a mask in 'empty': choose the field that "
                                   "holds their masks (a demonstration without one only teaches background).")
        assert not form(nuclei_dataset, demos.values("id"))["demo_count"].invalid

    @pytest.mark.parametrize("name", ["a.b", "my field", "1st", "frames.x"])
    def test_an_output_field_that_is_no_field_name(self, plugin_installed, nuclei_dataset, name):
        demos = nuclei_dataset.match_tags("demo").values("id")
        message = refused(form(nuclei_dataset, demos, pred_field=name)["pred_field"])
        assert message.startswith(f"The output field name {name!r} is not allowed: use letters, digits")
        assert refused(props(APPLY, nuclei_dataset, pred_field=name)["pred_field"]) == message
        assert refused(props(QUERY, nuclei_dataset, pred_field=name)["pred_field"]) == message

    def test_the_prototype_exemplar_and_reasoning_routes_without_a_model(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        assert refused(form(nuclei_dataset, demos, route="prototype")["model"]).startswith(
            "The prototype route needs a model with a SAM 2 segmenter")
        assert refused(form(nuclei_dataset, demos, route="exemplar")["model"]).startswith(
            "The exemplar route needs a model with SAM 3")
        assert refused(props(SAVE, nuclei_dataset, demos, route="exemplar", mask_field="ground_truth")["model"])
        for route in ("reasoning", "reasoning-fast"):
            assert refused(form(nuclei_dataset, demos, route=route)["model"]).startswith(
                "The reasoning routes need a model")
        assert refused(props(SAVE, nuclei_dataset, demos, route="prototype", mask_field="ground_truth")["model"])
        for route in ("auto", "appearance", "object"):
            assert not form(nuclei_dataset, demos, route=route)["model"].invalid

    @pytest.mark.parametrize("path", ["/no/such/bundle", "./bundle", "~/nowhere/bundle", "models/a/b"])
    def test_a_model_path_that_does_not_exist_is_no_hub_id(self, plugin_installed, nuclei_dataset, path):
        demos = nuclei_dataset.match_tags("demo").values("id")
        message = refused(form(nuclei_dataset, demos, route="prototype", model=path)["model"])
        assert message.startswith(f"There is no directory {path!r} on the machine that runs the App")
        assert refused(props(QUERY, nuclei_dataset, text="the nuclei", model=path)["model"]) == message

    def test_models_that_may_load_pass(self, plugin_installed, nuclei_dataset, tmp_path):
        demos = nuclei_dataset.match_tags("demo").values("id")
        for model in (str(tmp_path), "zhaoyuan666/ConceptSeg-R1-7B", "conceptseg-tiny-random"):
            assert not form(nuclei_dataset, demos, route="reasoning", model=model)["model"].invalid
        (tmp_path / "config.json").write_text("{}")
        assert refused(form(nuclei_dataset, demos, model=str(tmp_path / "config.json"))["model"]).endswith(
            "not a file in it.")
        assert refused(form(nuclei_dataset, demos, model="nonsense")["model"]).startswith("Unknown model 'nonsense'")

    def test_an_sdk_run_with_a_missing_model_path_is_one_sentence(self, plugin_installed, nuclei_dataset):
        from fiftyone.operators.executor import ExecutionError

        demos = nuclei_dataset.match_tags("demo").values("id")
        with pytest.raises(ExecutionError, match="There is no directory '/no/such/bundle'"):
            foo.execute_operator(SEGMENT, dataset=nuclei_dataset, selected=demos,
                                 params=run_params(view_target="DATASET", model="/no/such/bundle"))

    def test_evaluate_with_no_predictions_in_its_target(self, segmented):
        demos = segmented.match_tags("demo").values("id")
        target = props(EVALUATE, segmented, demos, target="selected")["target"]
        assert refused(target).startswith("None of the 3 target samples has a prediction in 'predictions'")
        quokka = segmented.match({"concept": "animal"}).values("id")
        assert refused(props(EVALUATE, segmented, quokka, target="selected")["target"]).startswith(
            "None of the 1 target samples has a prediction")

    def test_evaluate_with_a_key_that_is_no_field_name(self, segmented):
        assert refused(props(EVALUATE, segmented, eval_key="a.b")["eval_key"]).startswith(
            "The evaluation key field name 'a.b' is not allowed")

    def test_accepting_a_demonstration_or_a_sample_without_prediction(self, segmented):
        demo = segmented.match_tags("demo").first().id
        quokka = segmented.match({"concept": "animal"}).first().id
        target = segmented.exists("predictions").first().id
        form_of = lambda **kw: props(ACCEPT, segmented, pred_field="predictions", **kw)  # noqa: E731
        assert refused(form_of(current_sample=demo)["not_acceptable"]) == (
            "Cannot accept: this sample is a demonstration of this run (a demonstration's mask is its ground truth "
            "already).")
        assert refused(form_of(current_sample=quokka)["not_acceptable"]) == (
            "Cannot accept: this sample has no prediction of this run in 'predictions' (not one of its targets); "
            "only segmented targets can be accepted.")
        assert refused(form_of(selected=[target, demo, quokka])["not_acceptable"]).startswith(
            "Cannot accept: 1 of the 3 selected samples is a demonstration")
        # The target has ground truth of the class already: only with Replace ticked.
        assert refused(form_of(current_sample=target)["not_acceptable"]) == (
            "Cannot accept: this sample already has ground truth of the concept's class; tick 'Replace existing "
            "ground truth of this class' to replace it.")
        assert "not_acceptable" not in form_of(current_sample=target, replace=True)
        foo.execute_operator(ACCEPT, dataset=segmented, current_sample=target,
                             params={"pred_field": "predictions", "replace": True})
        assert refused(form_of(current_sample=target)["not_acceptable"]).startswith(
            "Cannot accept: this sample is accepted already")

    def test_rerun_with_nothing_new_to_learn_from(self, segmented):
        assert refused(props(RERUN, segmented, pred_field="predictions")["nothing_new"]) == (
            "Nothing was accepted, corrected or rejected as absent since round 1: accept some targets (or reject "
            "them as absent) first, so the re-run has something to learn from.")
        target = segmented.exists("predictions").first().id
        foo.execute_operator(ACCEPT, dataset=segmented, current_sample=target,
                             params={"pred_field": "predictions", "replace": True})
        assert "nothing_new" not in props(RERUN, segmented, pred_field="predictions")

    def test_applying_to_an_empty_target(self, plugin_installed, nuclei_dataset):
        empty = nuclei_dataset.match_tags("no such tag")
        count = props(APPLY, nuclei_dataset, view=empty, view_target="CURRENT_VIEW")["target_count"]
        assert refused(count) == "The target view holds no sample: choose another one."


class TestDefaults:
    def test_evaluate_lists_our_runs_newest_first_and_scores_the_runs_targets(self, segmented):
        demos = segmented.match_tags("demo").values("id")
        # The demonstrations still selected, as right after a run: the default target is the run's targets.
        form_ = props(EVALUATE, segmented, demos)
        assert form_["pred_field"].type.values == ["predictions", "older"]  # no _instances, no ground truth
        assert form_["pred_field"].default == "predictions" and form_["gt_field"].default == "ground_truth"
        assert form_["target"].default == "run" and not form_["target"].invalid
        assert form_["target_count"].view.label == "13 sample(s) with a prediction and ground truth."
        result = foo.execute_operator(EVALUATE, dataset=segmented, selected=demos,
                                      params={"pred_field": "predictions", "gt_field": "ground_truth"})
        assert result.error is None and result.result["scored"] == 13 and result.result["missing_pred"] == 0

    def test_evaluate_after_an_app_run_says_what_it_scored(self, segmented):
        result = foo.execute_operator(EVALUATE, dataset=segmented, params={
            "pred_field": "predictions", "gt_field": "ground_truth", "target": "run"}, **FROM_APP)
        notify = [r["params"] for r in result.executor.to_json()["requests"] if r["operator_uri"] == "notify"]
        assert notify[-1]["message"].startswith(
            "Scored 13 samples of 'predictions' as evaluation 'eval_predictions' (gIoU 0.")

    def test_the_concept_is_named_after_the_classes(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        # The nuclei's masks are 0/1 without class names; the demonstrations' concept field names them.
        assert form(nuclei_dataset, demos)["concept"].default == "nucleus"

    def test_the_clis_resize_and_instances_options(self, plugin_installed, nuclei_dataset):
        demos = nuclei_dataset.match_tags("demo").values("id")
        props_ = form(nuclei_dataset, demos, pred_field="mine")
        assert props_["resize_masks"].default is False and props_["instances"].default is True
        assert props_["instances"].view.label == "Also write instances to 'mine_instances'"


class TestTwoClassDefaults:
    @pytest.fixture
    def two_classes(self, name, tmp_path):
        from conceptseg.datasets import two_classes

        return two_classes.build(name, str(tmp_path / "media"))[0]

    def test_the_concept_is_the_picked_class(self, plugin_installed, two_classes):
        demos = two_classes.match_tags("demo").values("id")
        assert form(two_classes, demos, mask_field="gt", classes=["red"])["concept"].default == "red"
        assert form(two_classes, demos, mask_field="gt")["concept"].default is None  # the engine names it
