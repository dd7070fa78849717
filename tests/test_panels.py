"""The panels' logic through FiftyOne's executor: on_load and callbacks, empty states included."""

import json
import os
from urllib.parse import unquote

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionError
from fiftyone.operators.registry import OperatorRegistry

from conceptseg.install import PLUGIN_NAME

RULES = f"{PLUGIN_NAME}/concept_rules"
EVALUATION = f"{PLUGIN_NAME}/concept_evaluation"
SEGMENT = f"{PLUGIN_NAME}/segment_by_demonstration"
EVALUATE = f"{PLUGIN_NAME}/evaluate_concept_segmentation"


def call_panel(uri, dataset, method="on_load", state=None, current_sample=None, request=None, **params):
    """Runs one panel event; returns (state after it, panel data, rendered schema, other requests).

    ``request`` adds to the request what the App sends besides (its selection, its session context).
    """
    result = foo.execute_operator(
        uri, dataset=dataset, current_sample=current_sample, **(request or {}),
        # The App sends the panel's state as params["panel_state"] (ExecutionContext reads it there).
        params={"__method__": method, "panel_id": "p1", "panel_state": dict(state or {}), **params},
    )
    assert result.error is None, result.error  # never the App's error box
    state, data, schema, others = dict(state or {}), {}, None, []
    for request in result.executor.to_json()["requests"]:
        name, body = request["operator_uri"], request["params"]
        if name == "patch_panel_state":
            state.update(body["state"])
        elif name == "patch_panel_data":
            data.update(body["data"])
        elif name == "show_panel_output":
            schema = body["output"]
        else:
            others.append(request)
    if schema:
        # The App shows a component's same-named state or data instead of its default text.
        shadowed = [name for name, prop in schema["type"]["properties"].items()
                    if prop["view"]["name"] == "MarkdownView" and (name in state or name in data)]
        assert not shadowed, f"markdown hidden by panel state or data of the same name: {shadowed}"
    return state, data, schema, others


def texts(schema) -> str:
    """Every string in the rendered schema (markdown defaults, labels), for text assertions."""
    return json.dumps(schema)


@pytest.fixture(scope="module")
def evaluated(plugin_installed, demo_files, tmp_path_factory):
    """The demo dataset with a segmentation run on the nuclei and its evaluation."""
    from conceptseg import demo

    dataset = demo.build_dataset("panels-evaluated", media_dir=str(tmp_path_factory.mktemp("media")))
    nuclei = dataset.load_saved_view("nuclei")
    foo.execute_operator(
        SEGMENT, dataset=dataset, view=nuclei, selected=nuclei.match_tags("demo").values("id"),
        params=dict(demo_source="selected", mask_field="ground_truth", pred_field="pred",
                    view_target="CURRENT_VIEW", concept="nucleus"),
    )
    foo.execute_operator(
        EVALUATE, dataset=dataset, view=nuclei,
        params=dict(pred_field="pred", gt_field="ground_truth", eval_key="ev", view_target="CURRENT_VIEW"),
    )
    yield dataset
    dataset.delete()


@pytest.fixture
def run_without_evaluation(plugin_installed, nuclei_dataset):
    """A fresh demo dataset with one segmentation run (field ``gone``) and no evaluation."""
    nuclei = nuclei_dataset.load_saved_view("nuclei")
    foo.execute_operator(
        SEGMENT, dataset=nuclei_dataset, view=nuclei, selected=nuclei.match_tags("demo").values("id"),
        params=dict(demo_source="selected", mask_field="ground_truth", pred_field="gone", view_target="CURRENT_VIEW"),
    )
    return nuclei_dataset


def rebuilt_view(dataset, request):
    """The view a set_view request would load in the App (rebuilt from its serialized stages)."""
    return fo.DatasetView._build(dataset, request["params"]["view"])


def request_named(requests, name):
    matches = [r for r in requests if r["operator_uri"] == name]
    assert len(matches) == 1, [r["operator_uri"] for r in requests]
    return matches[0]


class TestRegistration:
    def test_both_panels_register_without_errors(self, plugin_installed):
        registry = OperatorRegistry()
        panels = {op.uri for op in registry.list_operators(type="panel") if op.uri.startswith(PLUGIN_NAME)}
        assert panels == {RULES, EVALUATION}
        assert registry.list_errors() == []


class TestConceptRulesPanel:
    def test_grid_shows_rule_route_verification_and_demonstrations(self, evaluated):
        state, data, schema, _ = call_panel(RULES, evaluated)
        config = evaluated.get_run_info("conceptseg_pred").config
        assert state["runs"] == ["conceptseg_pred"] and state["run_key"] == "conceptseg_pred"
        rendered = texts(schema)
        assert config.rule in rendered
        assert "**Route:** appearance" in rendered
        assert f"{config.verification:.3f} (verified)" in rendered
        assert config.reason in rendered
        assert "Open a sample" in rendered  # no current sample in the grid
        # Thumbnails: the App's relative media route for each demonstration, in order.
        demos = evaluated.select(config.demonstration_ids, ordered=True).values("filepath")
        urls = list(data["demos"].values())
        assert [unquote(u.split("filepath=", 1)[1]) for u in urls] == demos
        assert all(u.startswith("/media?filepath=") for u in urls)
        assert "open_worst" in rendered and "show_pred_gt" in rendered

    def test_modal_sample_shows_its_own_label_attributes(self, evaluated):
        state, *_ = call_panel(RULES, evaluated)
        target = evaluated.exists("pred").first()
        state, _, schema, _ = call_panel(RULES, evaluated, "on_change_current_sample", state, target.id)
        assert state["sample"]["route"] == "appearance"
        assert state["sample"]["cost"] == pytest.approx(target.pred.cost)
        rendered = texts(schema)
        assert "**This sample**" in rendered and "**Reasoning:**" in rendered and "**Answer:**" in rendered
        assert f"**Cost:** {target.pred.cost:.3f} s" in rendered

    @pytest.mark.parametrize("event", ["on_change_current_sample", "on_change_selected"])
    def test_an_event_before_the_modals_on_load_state_landed_still_shows_the_run(self, evaluated, event):
        # The App marks the modal's panel loaded when on_load's reply arrives but applies its state patches
        # later, so the selection or sample event of a modal opened by Review can carry the empty state from
        # before on_load (the browser journey saw on_change_selected so, about 1 run in 3), and land last.
        # It must choose the run itself, or the modal says "No ConceptSeg run" and its fingerprint keeps the
        # timer from ever correcting it.
        target = evaluated.exists("pred").first()
        state, _, schema, _ = call_panel(RULES, evaluated, event, {}, target.id, value=[target.id])
        assert state["run_key"] == "conceptseg_pred" and state["runs"] == ["conceptseg_pred"]
        assert state["notice"] is None and state["fingerprint"]
        assert state["sample"]["route"] == "appearance"
        assert "No ConceptSeg run" not in texts(schema) and "**This sample**" in texts(schema)

    def test_an_action_sent_with_the_state_from_before_on_load_acts_on_the_run(self, evaluated):
        # The same window: a button event whose state has no run yet reads the run from the dataset.
        target = evaluated.exists("pred").first()
        state, _, schema, requests = call_panel(RULES, evaluated, "show_prediction_vs_gt", {}, target.id)
        assert request_named(requests, "set_active_fields")["params"]["fields"] == ["pred", "ground_truth"]
        assert state["run_key"] == "conceptseg_pred" and "**This sample**" in texts(schema)

    def test_reasoning_words_on_a_label_are_shown(self, evaluated):
        state, *_ = call_panel(RULES, evaluated)
        target = evaluated.exists("pred").first()
        before = target.pred.copy()
        # What the reasoning route writes on each label (its per-image rule, thinking, answer).
        target.pred.rule, target.pred.reasoning, target.pred.answer = "bright ovals", "they glow", "the nuclei"
        target.save()
        try:
            _, _, schema, _ = call_panel(RULES, evaluated, "on_change_current_sample", state, target.id)
        finally:
            target.pred = before
            target.save()
        rendered = texts(schema)
        assert "**Rule:** bright ovals" in rendered
        assert "**Reasoning:** they glow" in rendered and "**Answer:** the nuclei" in rendered

    def test_sample_without_prediction_says_why(self, evaluated):
        state, *_ = call_panel(RULES, evaluated)
        demo_id = evaluated.match_tags("demo").first().id
        quokka_id = evaluated.match({"concept": "animal"}).first().id
        _, _, schema, _ = call_panel(RULES, evaluated, "on_change_current_sample", state, demo_id)
        assert "one of the run's demonstrations" in texts(schema)
        _, _, schema, _ = call_panel(RULES, evaluated, "on_change_current_sample", state, quokka_id)
        assert "has no prediction in 'pred': it was not in the run's target view" in texts(schema)

    def test_prediction_vs_ground_truth_sets_active_fields(self, evaluated):
        state, *_ = call_panel(RULES, evaluated)
        _, _, _, requests = call_panel(RULES, evaluated, "show_prediction_vs_gt", state)
        assert request_named(requests, "set_active_fields")["params"]["fields"] == ["pred", "ground_truth"]

    def test_worst_samples_come_first(self, evaluated):
        state, *_ = call_panel(RULES, evaluated)
        _, _, _, requests = call_panel(RULES, evaluated, "open_worst", state)
        view = rebuilt_view(evaluated, request_named(requests, "set_view"))
        ious = view.values("ev_concept_iou")
        assert len(ious) == 13 and ious == sorted(ious)

    def test_no_runs_explains_what_to_do(self, plugin_installed, nuclei_dataset):
        state, _, schema, _ = call_panel(RULES, nuclei_dataset)
        assert state["runs"] == []
        assert "No ConceptSeg run on this dataset yet" in texts(schema)

    def test_run_without_evaluation_offers_no_ranking(self, run_without_evaluation):
        _, _, schema, _ = call_panel(RULES, run_without_evaluation)
        rendered = texts(schema)
        assert "open_worst" not in rendered and "to rank its worst samples" in rendered

    def test_run_whose_field_was_deleted_says_so(self, run_without_evaluation):
        run_without_evaluation.delete_sample_field("gone")
        state, _, schema, _ = call_panel(RULES, run_without_evaluation)
        assert state["run_key"] == "conceptseg_gone"
        assert "The field 'gone' that run 'conceptseg_gone' wrote no longer exists" in texts(schema)


class TestConceptEvaluationPanel:
    def test_bars_histogram_and_routes(self, evaluated):
        state, data, schema, _ = call_panel(EVALUATION, evaluated)
        metrics = evaluated.load_run_results("ev").metrics
        assert state["group_field"] == "concept"
        assert [t["name"] for t in data["bars"]] == ["Fω", "Sα", "IoU"]
        for trace, key in zip(data["bars"], ("wfm", "sm", "iou")):
            assert trace["x"] == ["nucleus"] and trace["y"] == [pytest.approx(metrics[key])]
        assert sum(data["histogram"][0]["y"]) == 13
        assert state["routes"] == [{"route": "appearance", "count": 13, "cost": pytest.approx(
            evaluated.mean("pred.cost"))}]
        rendered = texts(schema)
        assert rendered.count('"PlotlyView"') == 3
        assert "concept_evaluation#on_bar_click" in rendered
        assert "| appearance | 13 |" in rendered

    def test_levels_group_the_bars_in_benchmark_order(self, evaluated):
        scored = evaluated.exists("ev_concept_iou")
        levels = ["CR", "CI", "CD"] * 5
        scored.set_values("level", levels[: len(scored)])
        try:
            state, data, *_ = call_panel(EVALUATION, evaluated)
            expected = [scored.match({"level": lv}).mean("ev_concept_iou") for lv in ("CI", "CD", "CR")]
        finally:
            evaluated.delete_sample_field("level")
        assert state["group_field"] == "level"
        assert data["bars"][2]["x"] == ["CI", "CD", "CR"]
        assert data["bars"][2]["y"] == pytest.approx(expected)

    def test_clicking_a_bar_filters_to_that_group(self, evaluated):
        state, *_ = call_panel(EVALUATION, evaluated)
        _, _, _, requests = call_panel(EVALUATION, evaluated, "on_bar_click", state, x="nucleus")
        view = rebuilt_view(evaluated, request_named(requests, "set_view"))
        assert view.count() == 13 and view.distinct("concept") == ["nucleus"]

    def test_clicking_a_histogram_bin_filters_to_its_ious(self, evaluated):
        state, data, *_ = call_panel(EVALUATION, evaluated)
        hist = data["histogram"][0]
        i = max(range(len(hist["y"])), key=lambda k: hist["y"][k])
        _, _, _, requests = call_panel(EVALUATION, evaluated, "on_histogram_click", state, x=hist["x"][i])
        view = rebuilt_view(evaluated, request_named(requests, "set_view"))
        assert view.count() == hist["y"][i]
        assert all(abs(v - hist["x"][i]) <= 0.05 + 1e-9 for v in view.values("ev_concept_iou"))

    def test_no_evaluations_explains_what_to_do(self, run_without_evaluation):
        state, _, schema, _ = call_panel(EVALUATION, run_without_evaluation)
        assert state["evals"] == []
        assert "No concept evaluation on this dataset yet" in texts(schema)

    def test_deleted_metric_fields_are_reported(self, run_without_evaluation):
        foo.execute_operator(
            EVALUATE, dataset=run_without_evaluation,
            params=dict(pred_field="gone", gt_field="ground_truth", eval_key="ev2", view_target="DATASET"),
        )
        run_without_evaluation.delete_sample_field("ev2_concept_wfm")
        _, _, schema, _ = call_panel(EVALUATION, run_without_evaluation)
        assert "Evaluation 'ev2' has nothing to plot: fields ev2_concept_wfm were deleted" in texts(schema)


# Part of the context the App sends with every event (and SDK callers do not).
FROM_APP = {"sample_selection_style": {"default": "checkmark", "alt": "checkmark"}}


def names(requests) -> list[str]:
    return [r["operator_uri"] for r in requests]


class TestPanelsStayTrue:
    """An open panel shows what any process did to the dataset, without the user switching anything."""

    def test_both_panels_poll_with_a_timer(self, run_without_evaluation):
        for uri in (RULES, EVALUATION):
            _, _, schema, _ = call_panel(uri, run_without_evaluation)
            timer = schema["type"]["properties"]["refresh_timer"]["view"]
            assert timer["name"] == "TimerView" and timer["on_interval"] == f"{uri}#check_fresh"

    def test_a_tick_with_nothing_new_sends_nothing(self, run_without_evaluation):
        state, *_ = call_panel(RULES, run_without_evaluation)
        after, _, schema, others = call_panel(RULES, run_without_evaluation, "check_fresh", state)
        assert after == state and schema is None and others == []

    def test_an_evaluation_elsewhere_shows_in_both_open_panels(self, run_without_evaluation):
        from conceptseg.runs.evaluation import evaluate

        dataset = run_without_evaluation
        rules, _, schema, _ = call_panel(RULES, dataset)
        assert "to rank its worst samples" in texts(schema)
        evaluation, *_ = call_panel(EVALUATION, dataset)
        assert evaluation["evals"] == []
        evaluate(dataset.load_saved_view("nuclei"), "gone", "ground_truth", eval_key="ev")  # another process, say
        rules, _, schema, _ = call_panel(RULES, dataset, "check_fresh", rules)
        assert rules["eval_key"] == "ev" and "open_worst" in texts(schema)
        evaluation, data, schema, _ = call_panel(EVALUATION, dataset, "check_fresh", evaluation)
        assert evaluation["eval_key"] == "ev" and sum(data["histogram"][0]["y"]) == 13

    def test_a_new_run_or_evaluation_is_shown_a_rerun_keeps_the_choice(self, run_without_evaluation):
        from conceptseg.runs.evaluation import evaluate
        from conceptseg.runs.jobs import segment_by_demonstration

        dataset = run_without_evaluation
        nuclei = dataset.load_saved_view("nuclei")
        evaluate(nuclei, "gone", "ground_truth", eval_key="first")
        evaluation, *_ = call_panel(EVALUATION, dataset)
        rules, *_ = call_panel(RULES, dataset)
        segment_by_demonstration(nuclei.match_tags("demo"), nuclei, "ground_truth", "newer", route="appearance")
        evaluate(nuclei, "newer", "ground_truth", eval_key="second")
        rules, *_ = call_panel(RULES, dataset, "check_fresh", rules)
        evaluation, *_ = call_panel(EVALUATION, dataset, "check_fresh", evaluation)
        assert rules["run_key"] == "conceptseg_newer" and evaluation["eval_key"] == "second"
        # Chosen by the user, then re-run: the panel stays on it and shows its new record.
        rules, *_ = call_panel(RULES, dataset, "on_change_run", rules, value="conceptseg_gone")
        segment_by_demonstration(nuclei.match_tags("demo"), nuclei, "ground_truth", "gone", route="appearance",
                                 overwrite=True)
        rules, *_ = call_panel(RULES, dataset, "check_fresh", rules)
        assert rules["run_key"] == "conceptseg_gone" and rules["run"]["pred_field"] == "gone"


class TestReviewMode:
    def _targets(self, dataset, field="gone"):
        from conceptseg.runs import review

        return [t["id"] for t in review.review(dataset, field)["targets"]]

    def test_k_of_n_in_doubt_order(self, run_without_evaluation):
        dataset = run_without_evaluation
        order = self._targets(dataset)
        state, *_ = call_panel(RULES, dataset)
        state, _, schema, _ = call_panel(RULES, dataset, "on_change_current_sample", state, order[2])
        assert state["sample"]["walk"] == {"k": 3, "n": 13, "open": 13, "status": None,
                                           "doubt": pytest.approx(state["sample"]["doubt"])}
        assert "**Review:** 3 of 13 by doubt \\u00b7 13 still open" in texts(schema)

    def test_the_prediction_to_judge_is_drawn_in_the_panel(self, run_without_evaluation):
        import base64

        import cv2
        import numpy as np

        dataset = run_without_evaluation
        target = self._targets(dataset)[0]
        state, *_ = call_panel(RULES, dataset)
        state, data, schema, _ = call_panel(RULES, dataset, "on_change_current_sample", state, target)
        assert state["sample"]["picture"] and "judge_img" in schema["type"]["properties"]
        head, encoded = data["judge_img"].split(",", 1)
        assert head == "data:image/png;base64"
        picture = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB).astype(int)
        predicted = dataset[target].gone.get_mask() > 0
        assert picture.shape[:2] == predicted.shape  # 128 px tiles: under 320 px, kept at their size
        shown = cv2.resize(predicted.astype(np.uint8), picture.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        # Tinted pixels are orange-ish (red well over blue); the rest keep the grey image (red == blue).
        orange = picture[..., 0] - picture[..., 2] > 60
        assert shown.mean() > 0.05 and (orange == shown).mean() > 0.99
        # A demonstration has no prediction: no picture, the text says why.
        demo = dataset.match_tags("demo").first().id
        state, data, schema, _ = call_panel(RULES, dataset, "on_change_current_sample", state, demo)
        assert data["judge_img"] is None and "judge_img" not in schema["type"]["properties"]

    def test_review_by_doubt_opens_the_first_open_target_on_the_runs_field(self, run_without_evaluation):
        dataset = run_without_evaluation
        order = self._targets(dataset)
        state, *_ = call_panel(RULES, dataset)
        _, _, _, requests = call_panel(RULES, dataset, "open_review", state)
        assert names(requests) == ["set_active_fields", "set_view", "open_sample"] or \
            names(requests) == ["reload_dataset", "set_active_fields", "set_view", "open_sample"]
        assert request_named(requests, "open_sample")["params"]["id"] == order[0]
        assert request_named(requests, "set_active_fields")["params"]["fields"] == ["gone", "ground_truth"]
        assert rebuilt_view(dataset, request_named(requests, "set_view")).values("id") == order
        dataset.reload()
        assert list(dataset.app_config.active_fields.paths) == ["gone", "ground_truth"]  # what the modal shows

    def test_accept_and_reject_move_on_to_the_next_open_target(self, run_without_evaluation):
        from conceptseg.runs import review

        dataset = run_without_evaluation
        order = self._targets(dataset)
        view = dataset.select(order, ordered=True)
        state, _, schema, _ = call_panel(RULES, dataset, current_sample=order[0])
        # Its ground truth shows the class already: plain Accept says so, Accept and replace takes its place.
        buttons = schema["type"]["properties"]["review_actions"]["type"]["properties"]
        assert buttons["accept_current"]["view"]["disabled"] and not buttons["accept_replacing"]["view"]["disabled"]
        assert ("This sample has ground truth of the concept's class already: Accept and replace puts the prediction "
                "in its place.") in texts(schema)
        state, _, _, requests = call_panel(RULES, dataset, "accept_replacing", state, order[0], request={"view": view})
        assert request_named(requests, "notify")["params"]["message"].startswith(
            "Accepted 1 sample: its prediction is now ground truth in 'ground_truth' as 'concept', in place of the "
            "class's earlier ground truth on 1 sample")
        assert request_named(requests, "open_sample")["params"]["id"] == order[1]
        assert state["review"]["accepted"] == 1
        state, _, _, requests = call_panel(RULES, dataset, "reject_current", state, order[1], request={"view": view})
        assert request_named(requests, "open_sample")["params"]["id"] == order[2]
        assert review.REJECTED_TAG in dataset[order[1]].tags
        # Back on the accepted one: both buttons are disabled, with the reason.
        state, _, schema, _ = call_panel(RULES, dataset, "on_change_current_sample", state, order[0])
        assert state["sample"]["walk"]["status"] == "accepted" and state["sample"]["walk"]["open"] == 11
        buttons = schema["type"]["properties"]["review_actions"]["type"]["properties"]
        assert buttons["accept_current"]["view"]["disabled"] and buttons["reject_current"]["view"]["disabled"]
        assert "Cannot accept or reject: this sample is accepted already" in texts(schema)
        assert not buttons["rerun"]["view"]["disabled"]  # something new to learn from

    def test_a_demonstration_cannot_be_accepted_and_says_why(self, run_without_evaluation):
        dataset = run_without_evaluation
        demo = dataset.match_tags("demo").first().id
        state, _, schema, _ = call_panel(RULES, dataset, current_sample=demo)
        buttons = schema["type"]["properties"]["review_actions"]["type"]["properties"]
        assert buttons["accept_current"]["view"]["disabled"]
        assert "this sample is a demonstration of this run" in buttons["accept_current"]["view"]["title"]
        assert buttons["rerun"]["view"]["disabled"]  # nothing accepted yet
        # Forced anyway (an old App page): one notification, never the panel's error box.
        _, _, schema, requests = call_panel(RULES, dataset, "accept_current", state, demo)
        notify = request_named(requests, "notify")["params"]
        assert notify["variant"] == "error" and "only segmented targets can be accepted" in notify["message"]
        assert schema is not None  # the panel still renders

    def test_rerun_from_the_app_runs_the_operator_with_its_progress(self, run_without_evaluation):
        dataset = run_without_evaluation
        state, *_ = call_panel(RULES, dataset)
        _, _, _, requests = call_panel(RULES, dataset, "rerun", state, request=FROM_APP)
        trigger = request_named(requests, f"{PLUGIN_NAME}/rerun_review")
        assert trigger["params"] == {"pred_field": "gone"}

    def test_rerun_with_nothing_new_is_one_sentence(self, run_without_evaluation):
        dataset = run_without_evaluation
        # The form refuses it before Execute (the panel's button is disabled, with the reason) ...
        with pytest.raises(ExecutionError, match="Nothing was accepted, corrected or rejected as absent since round 1"):
            foo.execute_operator(f"{PLUGIN_NAME}/rerun_review", dataset=dataset, params={"pred_field": "gone"},
                                 **FROM_APP)
        # ... and what only the engine can know ends the dialog in one sentence, no progress left.
        foo.execute_operator(f"{PLUGIN_NAME}/accept_targets", dataset=dataset, selected=[self._targets(dataset)[0]],
                             params={"pred_field": "gone", "replace": True})
        missing = dataset.match_tags("demo").first().filepath
        os.remove(missing)
        result = foo.execute_operator(f"{PLUGIN_NAME}/rerun_review", dataset=dataset, params={"pred_field": "gone"},
                                      **FROM_APP)
        assert result.error is None
        requests = result.executor.to_json()["requests"]
        notify = request_named(requests, "notify")["params"]
        assert notify == {"message": f"Image file not found: {missing}. Check the sample's filepath.",
                          "variant": "error"}
        assert names(requests)[-2:] == ["show_output", "notify"]  # the dialog says it too, no progress left
