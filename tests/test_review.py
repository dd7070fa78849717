"""The labeling loop: review by doubt, accept, reject, promote corrections, re-run rounds."""

import json

import fiftyone as fo
import numpy as np
import pytest

from conceptseg.runs import jobs
from conceptseg.runs.names import run_key_for
from conceptseg.runs import review
from conceptseg.cli import main
from conceptseg.datasets import two_classes as two_class_dataset
from conceptseg.errors import ConceptSegError
from conceptseg.testing.review_round import red_review_round


@pytest.fixture
def loop(name, tmp_path):
    """Two-class scenes; targets have blue squares labelled but red discs not yet; "red" segmented into pred."""
    return red_review_round(name, str(tmp_path / "media"))


def _cli(capsys, *argv):
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_review_lists_targets_most_doubtful_first(loop, capsys):
    dataset, _ = loop
    out = json.loads(_cli(capsys, "review", "--dataset", dataset.name, "--pred-field", "pred", "--json"))
    doubts = [t["doubt"] for t in out["targets"]]
    assert len(doubts) == 9 and doubts == sorted(doubts, reverse=True)
    assert {t["id"] for t in out["targets"]} == set(dataset.match_tags("demo", bool=False).values("id"))
    assert all(0 <= d <= 1 for d in doubts) and out["round"] == 1 and out["accepted"] == 0


def test_accept_writes_the_class_into_the_mask_and_keeps_other_classes(loop, capsys):
    dataset, truth = loop
    ids = [t["id"] for t in review.review(dataset, "pred")["targets"]][-2:]
    _cli(capsys, "accept", "--dataset", dataset.name, "--pred-field", "pred", "--ids", ",".join(ids))
    for sample in dataset.select(ids):
        gt, pred = sample.gt.get_mask(), sample.pred.get_mask() > 0
        blue = truth[sample.id]["blue"]
        assert (gt[blue] == 2).all()  # the other class is untouched, even under the prediction
        assert ((gt == 1) == (pred & ~blue)).all()
        assert review.ACCEPTED_TAG in sample.tags and sample.pred["review"] == "accepted"
    listed = review.review(dataset, "pred")
    assert listed["accepted"] == 2 and not set(ids) & {t["id"] for t in listed["targets"]}
    with pytest.raises(ConceptSegError, match="Already accepted"):
        review.accept(dataset, "pred", ids[0])


def test_accepting_a_target_without_prediction_writes_nothing(loop):
    dataset, _ = loop
    demo = dataset.match_tags("demo").first()
    target = dataset.match_tags("demo", bool=False).first()
    before = target.gt.get_mask().copy()
    with pytest.raises(ConceptSegError, match=f"No prediction of this run in 'pred' on {demo.id}"):
        review.accept(dataset, "pred", [target.id, demo.id])
    assert np.array_equal(dataset[target.id].gt.get_mask(), before)
    assert main(["accept", "--dataset", dataset.name, "--pred-field", "pred", "--ids", "nosuchid"]) == 2


def test_accept_into_detections_adds_the_class_and_keeps_other_labels(name, tmp_path):
    dataset, truth = two_class_dataset.build(name, str(tmp_path / "media"))
    for sample in dataset.match_tags("demo", bool=False):
        sample.dets = two_class_dataset.detections({"blue": truth[sample.id]["blue"]})
        sample.save()
    jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "dets", "pred", classes=["red"], route="appearance")
    target = dataset.match_tags("demo", bool=False).first()
    blue_before = [d.bounding_box for d in target.dets.detections]
    review.accept(dataset, "pred", target.id)
    dets = dataset[target.id].dets.detections
    assert [d.bounding_box for d in dets if d.label == "blue"] == blue_before
    reds = [d for d in dets if d.label == "red"]
    assert len(reds) >= 1 and all(d["conceptseg_review"] for d in reds)


def test_reject_absent_makes_a_negative_and_rerun_learns_from_it(loop):
    dataset, _ = loop
    negative = dataset.match_tags("demo", bool=False).last()  # blue squares only
    shows_red = dataset.match_tags("demo", bool=False).first()
    review.accept(dataset, "pred", shows_red.id)
    with pytest.raises(ConceptSegError, match="show the concept"):
        review.reject(dataset, "pred", dataset.match_tags("demo").first().id, absent=True)
    review.reject(dataset, "pred", negative.id, absent=True)
    assert review.REJECTED_TAG in dataset[negative.id].tags
    out = review.rerun(dataset, "pred")
    assert out["round"] == 2 and out["demonstrations"] == 5 and out["negative_demonstrations"] == 1
    config = dataset.get_run_info(run_key_for("pred")).config
    assert {shows_red.id, negative.id} <= set(config.demonstration_ids)
    rounds = review.review(dataset, "pred")["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["accepted"] == 1 and rounds[1]["negatives"] == 1
    assert rounds[1]["verification"] == out["verification"]
    assert dataset[shows_red.id].pred["review"] == "accepted"  # accepted targets are not segmented again
    assert len(review.review(dataset, "pred")["targets"]) == 7


def test_rerun_with_nothing_accepted_says_so_and_does_nothing(loop, capsys):
    dataset, _ = loop
    before = dataset.values("pred.mask_path")
    assert main(["rerun", "--dataset", dataset.name, "--pred-field", "pred"]) == 2
    assert "Nothing was accepted" in capsys.readouterr().err
    assert dataset.values("pred.mask_path") == before
    assert review.review(dataset, "pred")["round"] == 1


def test_promote_names_ids_without_a_mask_and_promotes_the_rest(loop, capsys):
    dataset, truth = loop
    targets = dataset.match_tags("demo", bool=False)
    with_fix, without = targets.values("id")[:2], targets.values("id")[2]
    for sample in dataset.select(with_fix):
        sample["fix"] = fo.Segmentation(mask=truth[sample.id]["red"].astype(np.uint8))
        sample.save()
    out = json.loads(_cli(capsys, "promote", "--dataset", dataset.name, "--from-field", "fix",
                          "--ids", ",".join(with_fix + [without]), "--pred-field", "pred", "--json"))
    assert out["promoted"] == with_fix and list(out["missing"]) == [without]
    for sample in dataset.select(with_fix):
        gt = sample.gt.get_mask()
        assert np.array_equal(gt == 1, truth[sample.id]["red"]) and (gt[truth[sample.id]["blue"]] == 2).all()
    assert review.ACCEPTED_TAG not in dataset[without].tags
    with pytest.raises(ConceptSegError, match="Nothing to promote"):
        review.promote(dataset, "pred", "fix", [without])


def test_accept_into_an_rgb_segmentation(name, tmp_path):
    dataset, truth = two_class_dataset.build(name, str(tmp_path / "media"))
    for sample in dataset.match_tags("demo", bool=False):
        rgb = np.zeros((128, 128, 3), np.uint8)
        rgb[truth[sample.id]["blue"]] = (0, 0, 255)
        sample.gt_rgb = fo.Segmentation(mask=rgb)
        sample.save()
    jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt_rgb", "pred", classes=["red"],
                                  route="appearance")
    target = dataset.match_tags("demo", bool=False).first()
    review.accept(dataset, "pred", target.id)
    sample = dataset[target.id]
    rgb, pred = sample.gt_rgb.get_mask(), sample.pred.get_mask() > 0
    blue = truth[target.id]["blue"]
    assert (rgb[blue] == (0, 0, 255)).all()
    assert np.array_equal(np.all(rgb == (255, 0, 0), axis=2), pred & ~blue)


PLUGIN = "@conceptseg/conceptseg-r1"


def _panel(dataset, method="on_load", state=None, current_sample=None):
    import fiftyone.operators as foo

    result = foo.execute_operator(f"{PLUGIN}/concept_rules", dataset=dataset, current_sample=current_sample,
                                  params={"__method__": method, "panel_id": "p1", "panel_state": dict(state or {})})
    state, schema, others = dict(state or {}), None, []
    for request in result.executor.to_json()["requests"]:
        if request["operator_uri"] == "patch_panel_state":
            state.update(request["params"]["state"])
        elif request["operator_uri"] == "show_panel_output":
            schema = request["params"]["output"]
        elif request["operator_uri"] != "patch_panel_data":
            others.append(request)
    assert result.error is None, result.error
    return state, json.dumps(schema), others


def test_operators_accept_reject_and_rerun(plugin_installed, loop):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    dataset, _ = loop
    ids = [t["id"] for t in review.review(dataset, "pred")["targets"]]
    result = foo.execute_operator(f"{PLUGIN}/accept_targets", dataset=dataset, selected=ids[-1:],
                                  params={"pred_field": "pred"})
    assert result.error is None and result.result["accepted"] == ids[-1:]
    result = foo.execute_operator(f"{PLUGIN}/reject_targets", dataset=dataset, current_sample=ids[0],
                                  params={"pred_field": "pred"})
    assert result.error is None and review.REJECTED_TAG in dataset[ids[0]].tags
    result = foo.execute_operator(f"{PLUGIN}/rerun_review", dataset=dataset, params={"pred_field": "pred"})
    assert result.error is None and result.result["round"] == 2 and result.result["demonstrations"] == 4
    with pytest.raises(ExecutionError, match="Nothing was accepted"):
        foo.execute_operator(f"{PLUGIN}/rerun_review", dataset=dataset, params={"pred_field": "pred"})


def test_panel_opens_the_most_doubtful_accepts_and_shows_rounds(plugin_installed, loop):
    dataset, _ = loop
    state, rendered, _ = _panel(dataset)
    assert state["review"]["round"] == 1 and "Review by doubt" in rendered and "| 1 |" in rendered
    _, _, requests = _panel(dataset, "open_review", state)
    opened = [r for r in requests if r["operator_uri"] == "open_sample"][0]["params"]["id"]
    assert opened == review.review(dataset, "pred")["targets"][0]["id"] == state["review"]["most_doubtful"]
    state, rendered, _ = _panel(dataset, "accept_current", state, current_sample=opened)
    assert state["review"]["accepted"] == 1 and review.ACCEPTED_TAG in dataset[opened].tags
    state, rendered, _ = _panel(dataset, "rerun", state)
    assert state["review"]["round"] == 2 and [r["accepted"] for r in state["review"]["rounds"]] == [0, 1]
    assert "| 2 |" in rendered
