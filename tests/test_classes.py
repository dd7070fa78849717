"""A concept is one or more classes of a label field, on the label types FiftyOne users have."""

import cv2
import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

from conceptseg.runs import jobs
from conceptseg.datasets import two_classes as two_class_dataset
from conceptseg.errors import DemonstrationError, FieldError

@pytest.fixture
def two_classes(name, tmp_path):
    """12 scenes with red discs and blue squares (the last one blue only), GT in three label types."""
    return two_class_dataset.build(name, str(tmp_path / "media"))


def _scores(dataset, truth, field="pred"):
    """Per target: IoU with the red mask and the fraction of blue pixels predicted."""
    out = {}
    for sample in dataset.match_tags("demo", bool=False):
        pred = sample[field].get_mask() > 0
        red, blue = truth[sample.id]["red"], truth[sample.id]["blue"]
        union = (pred | red).sum()
        out[sample.id] = dict(
            iou=(pred & red).sum() / union if union else 1.0,
            blue=(pred & blue).sum() / blue.sum(),
            area=pred.mean(),
        )
    return out


def _segment(dataset, field, **kwargs):
    return jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, field, "pred", **kwargs)


@pytest.mark.parametrize("field,classes", [("gt", ["red"]), ("gt", ["1"]), ("gt_rgb", ["red"]),
                                           ("gt_rgb", ["#ff0000"]), ("dets", ["red"])])
def test_class_a_covers_a_and_not_b(two_classes, field, classes):
    dataset, truth = two_classes
    summary = _segment(dataset, field, classes=classes, route="appearance")
    assert summary["classes"] == ["red"] and summary["verified"]
    scores = _scores(dataset, truth)
    negative = dataset.match_tags("demo", bool=False).last().id
    positives = [s for k, s in scores.items() if k != negative]
    assert np.mean([s["iou"] for s in positives]) >= 0.8
    assert np.mean([s["blue"] for s in scores.values()]) < 0.05
    assert scores[negative]["area"] < 0.005  # only blue squares there: (almost) nothing predicted
    assert dataset.first().pred is None  # the first scene is a demonstration: never a target
    assert dataset.mask_targets["pred"] == {1: "red"}


def test_several_classes_make_one_concept(two_classes):
    dataset, truth = two_classes
    _segment(dataset, "gt", classes=["red", "blue"], route="appearance")
    for sample in dataset.match_tags("demo", bool=False):
        pred = sample.pred.get_mask() > 0
        both = truth[sample.id]["red"] | truth[sample.id]["blue"]
        assert (pred & both).sum() / (pred | both).sum() >= 0.8


def test_a_label_filter_on_the_view_is_the_concept(two_classes):
    dataset, truth = two_classes
    demos = dataset.match_tags("demo").filter_labels("dets", F("label") == "blue", only_matches=False)
    summary = jobs.segment_by_demonstration(demos, dataset, "dets", "pred", route="appearance")
    assert summary["classes"] == ["blue"]
    sample = dataset.match_tags("demo", bool=False).first()
    blue = truth[sample.id]["blue"]
    pred = sample.pred.get_mask() > 0
    assert (pred & blue).sum() / (pred | blue).sum() >= 0.8


def test_box_only_detections_are_filled_boxes_and_counted(two_classes):
    dataset, _ = two_classes
    for sample in dataset.match_tags("demo"):
        for det in sample.dets.detections:
            det.mask = None
        sample.save()
    summary = _segment(dataset, "dets", classes=["red"], route="appearance")
    assert summary["box_only_detections"] == 6
    assert dataset.get_run_info("conceptseg_pred").config.box_only_detections == 6


def test_polylines_are_filled(two_classes):
    dataset, truth = two_classes
    for sample in dataset.match_tags("demo"):
        lines = []
        for kind, mask in truth[sample.id].items():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            h, w = mask.shape
            for c in contours:
                pts = [[(x + 0.5) / w, (y + 0.5) / h] for x, y in c[:, 0]]
                lines.append(fo.Polyline(label=kind, points=[pts], closed=True, filled=True))
        sample["shapes"] = fo.Polylines(polylines=lines)
        sample.save()
    summary = _segment(dataset, "shapes", classes=["red"], route="appearance")
    assert summary["verified"] and summary["verification"] >= 0.8


class TestBadClasses:
    def test_multi_class_field_without_classes_lists_them(self, two_classes):
        with pytest.raises(FieldError, match="several classes on the demonstrations: blue, red"):
            _segment(two_classes[0], "gt")

    def test_class_no_demonstration_has(self, two_classes):
        dataset, _ = two_classes
        dataset.mask_targets = {"gt": {1: "red", 2: "blue", 3: "green"}}
        dataset.save()
        with pytest.raises(DemonstrationError, match="No demonstration shows class green.*present.*blue, red"):
            _segment(dataset, "gt", classes=["green"])
        with pytest.raises(DemonstrationError, match="No demonstration shows class cat.*blue, red"):
            _segment(dataset, "dets", classes=["cat"])

    def test_class_name_not_in_mask_targets(self, two_classes):
        with pytest.raises(FieldError, match="'cat' is not in the mask targets of 'gt' \\(1: red, 2: blue\\)"):
            _segment(two_classes[0], "gt", classes=["cat"])

    def test_classes_for_a_binary_field(self, two_classes):
        dataset, truth = two_classes
        for sample in dataset:
            sample["binary"] = fo.Segmentation(mask=truth[sample.id]["red"].astype(np.uint8))
            sample.save()
        with pytest.raises(FieldError, match="'binary' is binary.*leave classes out"):
            _segment(dataset, "binary", classes=["red"])
        assert _segment(dataset, "binary", route="appearance")["verified"]

    def test_nothing_written_on_refusal(self, two_classes):
        dataset, _ = two_classes
        with pytest.raises(FieldError):
            _segment(dataset, "gt")
        assert not dataset.has_field("pred") and "conceptseg_pred" not in dataset.list_runs()


def test_evaluate_scores_against_the_chosen_class(two_classes):
    from conceptseg.runs.evaluation import evaluate

    dataset, _ = two_classes
    _segment(dataset, "gt", classes=["red"], route="appearance")
    targets = dataset.match_tags("demo", bool=False)
    on_red = evaluate(targets, "pred", "gt", eval_key="on_red", classes=["red"])["metrics"]["iou"]
    on_all = evaluate(targets, "pred", "gt", eval_key="on_all")["metrics"]["iou"]
    assert on_red >= 0.8 and on_all < 0.6
    assert dataset.get_run_info("on_red").config.classes == ["red"]


def test_cli_classes(two_classes, capsys):
    from conceptseg.cli import main

    dataset, _ = two_classes
    args = ["segment", "--dataset", dataset.name, "--demo-tag", "demo", "--mask-field", "dets",
            "--pred-field", "pred", "--route", "appearance"]
    assert main(args) == 2
    assert "several classes on the demonstrations: blue, red" in capsys.readouterr().err
    assert main(args + ["--classes", "blue", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["classes"] == ["blue"]


class TestOperator:
    """The App's form: a class picker, selected labels as the concept, the current view's filters."""

    SEGMENT = "@conceptseg/conceptseg-r1/segment_by_demonstration"

    def _ctx(self, dataset, selected=(), selected_labels=(), view=None, **params):
        from fiftyone.operators.executor import ExecutionContext

        request = {"dataset_name": dataset.name, "selected": list(selected), "selected_labels": list(selected_labels),
                   "params": params}
        if view is not None:
            request["view"] = view._serialize()
        return ExecutionContext(request_params=request)

    def _form(self, dataset, **kwargs):
        import fiftyone.operators as foo

        return foo.get_operator(self.SEGMENT).resolve_input(self._ctx(dataset, **kwargs)).type.properties

    def _labels(self, dataset, field, label):
        out = []
        for sample in dataset.match_tags("demo"):
            for det in sample[field].detections:
                if det.label == label:
                    out.append({"label_id": det.id, "sample_id": sample.id, "field": field, "frame_number": None})
        return out

    def test_picker_lists_the_demonstrations_classes(self, plugin_installed, two_classes):
        dataset, _ = two_classes
        demos = dataset.match_tags("demo").values("id")
        for field in ("gt", "dets"):
            classes = self._form(dataset, selected=demos, mask_field=field)["classes"]
            assert [c.value for c in classes.view.choices] == ["blue", "red"] and classes.required
            assert classes.default is None

    def test_selected_labels_are_the_concept(self, plugin_installed, two_classes):
        dataset, _ = two_classes
        props = self._form(dataset, selected_labels=self._labels(dataset, "dets", "red"))
        assert props["mask_field"].default == "dets"
        assert props["classes"].default == ["red"]
        assert props["demo_count"].view.label.startswith("3 demonstration(s)")

    def test_labels_from_two_fields_are_refused(self, plugin_installed, two_classes):
        dataset, _ = two_classes
        for sample in dataset.match_tags("demo"):
            sample["dets2"] = sample.dets.copy()
            sample.save()
        picked = self._labels(dataset, "dets", "red") + self._labels(dataset, "dets2", "red")
        mask = self._form(dataset, selected_labels=picked)["mask_field"]
        assert mask.invalid and "2 fields (dets, dets2)" in mask.error_message

    def test_running_on_selected_labels(self, plugin_installed, two_classes):
        import fiftyone.operators as foo

        dataset, truth = two_classes
        result = foo.execute_operator(
            self.SEGMENT, dataset=dataset, selected_labels=self._labels(dataset, "dets", "blue"),
            params={"demo_source": "selected", "mask_field": "dets", "pred_field": "pred", "route": "appearance",
                    "view_target": "DATASET"},
        )
        assert result.result["classes"] == ["blue"] and result.result["segmented"] == 9
