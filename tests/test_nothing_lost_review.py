"""Nothing lost in the labeling loop (issue 21: 8, 13 and its raw tracebacks; issue 22: 3 and 5).

- ``promote`` from a multi-class field takes only the concept's class;
- the loop's record is updated atomically: an accept during a re-run, and accepts from several
  processes at once, all land (real processes);
- accept never overwrites ground truth of the concept's class silently (``--replace``);
- a demonstration or a sample without a prediction is not acceptable (``review.acceptable``);
- a missing mask file, a class value an 8-bit mask cannot hold, a deleted prediction field:
  one sentence and exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import cv2
import fiftyone as fo
import numpy as np
import pytest

from conceptseg import cli
from conceptseg.runs import jobs
from conceptseg.runs import review
from conceptseg.runs.review.record import update_record
from conceptseg.datasets import two_classes as two_class_dataset
from conceptseg.errors import ConceptSegError
from conceptseg.testing.review_round import red_review_round

CLI = [sys.executable, "-m", "conceptseg.cli"]
PLUGIN = "@conceptseg/conceptseg-r1"


@pytest.fixture
def loop(name, tmp_path):
    """Two-class scenes; targets have blue squares labelled (gt value 2) but red discs not; "red" segmented into pred."""
    return red_review_round(name, str(tmp_path / "media"))


def _targets(dataset) -> list[str]:
    return dataset.match_tags("demo", bool=False).values("id")


def _args(verb, dataset, *extra):
    return [verb, "--dataset", dataset.name, "--pred-field", "pred", *extra]


def _refused(capfd, argv, *words):
    """The command exits 2 with one line on stderr (file-descriptor level) holding ``words``, no traceback."""
    capfd.readouterr()
    assert cli.main(list(argv)) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _ok(capfd, argv) -> str:
    capfd.readouterr()
    assert cli.main(list(argv)) == 0, capfd.readouterr().err
    return capfd.readouterr().out


def _accepted_everywhere(dataset) -> tuple[set, set]:
    """(ids the loop's record calls accepted, ids tagged accepted): they must agree."""
    return set(review.state(dataset, "pred")["accepted"]), set(dataset.match_tags(review.ACCEPTED_TAG).values("id"))


# ---- issue 21.8: promote from a multi-class field ------------------------------------------


def _two_class_mask(truth, sample_id) -> np.ndarray:
    seg = np.zeros((128, 128), np.uint8)
    seg[truth[sample_id]["red"]], seg[truth[sample_id]["blue"]] = 1, 2
    return seg


@pytest.mark.parametrize("with_targets", [True, False])
def test_promote_from_a_multi_class_segmentation_takes_only_the_concepts_class(loop, capfd, with_targets):
    dataset, truth = loop
    ids = _targets(dataset)[:2]
    for sample in dataset.select(ids):
        sample["fix"] = fo.Segmentation(mask=_two_class_mask(truth, sample.id))  # discs AND squares
        sample.gt = None  # no ground truth yet: nothing else keeps the squares out
        sample.save()
    if with_targets:  # classes named (values other than the mask field's, to be sure names are used)
        dataset.mask_targets = {**dataset.mask_targets, "fix": {1: "red", 2: "blue"}}
        dataset.save()
    out = json.loads(_ok(capfd, ["promote", "--dataset", dataset.name, "--pred-field", "pred", "--from-field", "fix",
                                 "--ids", ",".join(ids), "--json"]))
    assert out["promoted"] == ids and out["class"] == "red"
    for sample in dataset.select(ids):
        gt = sample.gt.get_mask()
        assert np.array_equal(gt > 0, truth[sample.id]["red"]) and (gt[gt > 0] == 1).all()  # no square became a disc


def test_promote_from_multi_class_detections_takes_only_the_concepts_class(loop, capfd):
    dataset, truth = loop
    target = _targets(dataset)[0]
    sample = dataset[target]
    sample["fixdets"] = two_class_dataset.detections({"red": truth[target]["red"], "blue": truth[target]["blue"]})
    sample.gt = None
    sample.save()
    _ok(capfd, ["promote", "--dataset", dataset.name, "--pred-field", "pred", "--from-field", "fixdets", "--ids", target])
    gt = dataset[target].gt.get_mask()
    assert np.array_equal(gt > 0, truth[target]["red"]) and (gt[gt > 0] == 1).all()


def test_promote_from_a_multi_class_field_without_the_concept_is_one_sentence(loop, capfd):
    dataset, truth = loop
    target = _targets(dataset)[0]
    before = dataset[target].gt.get_mask().copy()
    sample = dataset[target]
    sample["other"] = two_class_dataset.detections({"a": truth[target]["red"], "b": truth[target]["blue"]})
    sample.save()
    _refused(capfd, ["promote", "--dataset", dataset.name, "--pred-field", "pred", "--from-field", "other",
                     "--ids", target], "several classes", "'red'")
    assert np.array_equal(dataset[target].gt.get_mask(), before)
    assert review.state(dataset, "pred")["accepted"] == []


# ---- issue 21.13: the record is updated atomically -----------------------------------------


def test_a_write_between_read_and_write_is_not_lost(loop):
    """Compare-and-set: another writer lands between this one's read and write; both changes stay."""
    dataset, _ = loop
    first, second = _targets(dataset)[:2]
    interleaved = []

    def change(record):
        if not interleaved:  # the first attempt read the record; someone else writes now
            interleaved.append(True)
            update_record(dataset, "pred", lambda other: other["rejected"].append(second))
        record["accepted"].append(first)

    update_record(dataset, "pred", change)
    record = review.state(dataset, "pred")
    assert record["accepted"] == [first] and record["rejected"] == [second]
    assert dataset.info[review.INFO_KEY]["pred"]["accepted"] == [first]  # the in-memory dataset sees it


_RERUN_PAUSED = """
import os, sys, time
import fiftyone as fo
from conceptseg.runs import review

name, ready, go = sys.argv[1:4]

def pause(done, total):
    if not os.path.exists(ready):
        open(ready, "w").close()
        deadline = time.time() + 180
        while not os.path.exists(go) and time.time() < deadline:
            time.sleep(0.05)

out = review.rerun(fo.load_dataset(name), "pred", progress=pause)
print(out["round"])
"""


def test_accept_during_a_rerun_is_kept(loop, tmp_path, capfd):
    """Process A re-runs (paused while segmenting); process B accepts meanwhile; nothing is lost."""
    dataset, _ = loop
    targets = _targets(dataset)
    before, during, negative = targets[0], targets[1], targets[-1]  # the last shows no red
    review.accept(dataset, "pred", before)
    review.reject(dataset, "pred", negative, absent=True)
    ready, go = str(tmp_path / "ready"), str(tmp_path / "go")
    rerun = subprocess.Popen([sys.executable, "-c", _RERUN_PAUSED, dataset.name, ready, go],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not os.path.exists(ready):
            assert rerun.poll() is None, rerun.communicate()
            assert time.time() < deadline, "the re-run never started segmenting"
            time.sleep(0.1)
        accept = subprocess.run([*CLI, *_args("accept", dataset, "--ids", during)], capture_output=True, text=True)
        assert accept.returncode == 0, accept.stderr
    finally:
        open(go, "w").close()
        out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    dataset.reload()
    recorded, tagged = _accepted_everywhere(dataset)
    assert recorded == tagged == {before, during}  # was: 1 accepted in the record, 2 tagged
    rounds = review.review(dataset, "pred")["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert before in rounds[1]["demonstrations"] and during not in rounds[1]["demonstrations"]
    assert rounds[1]["accepted"] == 1 and rounds[1]["negatives"] == 1
    assert during not in {t["id"] for t in review.review(dataset, "pred")["targets"]}
    # A demonstration of round 2 (the negative, which has a prediction) is not acceptable.
    ok, reasons = review.acceptable(dataset, "pred", [negative])
    assert ok == [] and "is a demonstration" in reasons[negative]
    _refused(capfd, _args("accept", dataset, "--ids", negative), "Demonstrations of this run cannot be accepted")
    # The sample accepted meanwhile is learnt from in the next round.
    out = review.rerun(dataset, "pred")
    assert out["round"] == 3 and during in out["rounds"][-1]["demonstrations"]


_ACCEPT_AT_ONCE = """
import os, sys, time
import fiftyone as fo
from conceptseg.runs import review

name, sample_id, folder, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
dataset = fo.load_dataset(name)
review.state(dataset, "pred")  # everything loaded and connected before the start line
open(os.path.join(folder, sample_id), "w").close()
deadline = time.time() + 180
while len(os.listdir(folder)) < count and time.time() < deadline:
    time.sleep(0.001)
review.accept(dataset, "pred", sample_id)
"""


def test_accepts_from_several_processes_at_once_all_land(loop, tmp_path):
    dataset, _ = loop
    ids = _targets(dataset)[:3]
    folder = tmp_path / "start"
    folder.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _ACCEPT_AT_ONCE, dataset.name, i, str(folder), str(len(ids))],
                              stderr=subprocess.PIPE, text=True) for i in ids]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    dataset.reload()
    recorded, tagged = _accepted_everywhere(dataset)
    assert recorded == tagged == set(ids)


# ---- issue 22.5: accept never overwrites ground truth of the class silently ------------------


def test_accept_over_ground_truth_of_the_class_is_refused_then_replaced(loop, capfd):
    dataset, truth = loop
    target, other = _targets(dataset)[:2]
    sample = dataset[target]
    gt = sample.gt.get_mask().copy()
    old_red = np.zeros_like(gt, bool)
    old_red[:6, :6] = True  # the user's own "red" pixels, where no prediction is
    gt[old_red & (gt == 0)] = 1
    sample.gt = fo.Segmentation(mask=gt)
    sample.save()
    pred = dataset[target].pred.get_mask() > 0
    assert not (pred & old_red).any()
    _refused(capfd, _args("accept", dataset, "--ids", f"{other},{target}"), target, "already has ground truth of 'red'",
             "--replace")
    assert np.array_equal(dataset[target].gt.get_mask(), gt)  # nothing written, on either sample
    assert review.ACCEPTED_TAG not in dataset[other].tags and _accepted_everywhere(dataset) == (set(), set())
    out = _ok(capfd, _args("accept", dataset, "--ids", f"{other},{target}", "--replace"))
    assert f"replaced the earlier ground truth of 'red' on {target}" in out
    written = dataset[target].gt.get_mask()
    blue = truth[target]["blue"]
    assert np.array_equal(written == 1, pred & ~blue)  # the old red pixels are gone: replaced, not added to
    assert (written[blue] == 2).all()
    assert _accepted_everywhere(dataset) == ({other, target}, {other, target})


def _polylines(masks: dict) -> fo.Polylines:
    shapes = []
    for kind, mask in masks.items():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        h, w = mask.shape
        shapes += [fo.Polyline(label=kind, points=[[(float(x) / w, float(y) / h) for x, y in c[:, 0]]], closed=True,
                               filled=True) for c in contours if len(c) >= 3]
    return fo.Polylines(polylines=shapes)


@pytest.mark.parametrize("field", ["dets", "polys"])
def test_accept_into_labels_of_the_class_is_refused_then_replaced_not_duplicated(name, tmp_path, capfd, field):
    dataset, truth = two_class_dataset.build(name, str(tmp_path / "media"))  # every sample has red and blue labels
    if field == "polys":
        for sample in dataset:
            sample["polys"] = _polylines(truth[sample.id])
            sample.save()
    jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, field, "pred", classes=["red"], route="appearance")
    target = _targets(dataset)[0]
    items = "detections" if field == "dets" else "polylines"

    def labels(kind):
        return [i for i in getattr(dataset[target][field], items) if i.label == kind]

    old_red, blue = [i.id for i in labels("red")], [i.id for i in labels("blue")]
    assert old_red and blue
    _refused(capfd, _args("accept", dataset, "--ids", target), "already has ground truth of 'red'", "--replace")
    assert [i.id for i in labels("red")] == old_red and review.state(dataset, "pred")["accepted"] == []
    _ok(capfd, _args("accept", dataset, "--ids", target, "--replace"))
    red = labels("red")
    assert red and not {i.id for i in red} & set(old_red)  # replaced, not duplicated
    assert all(i["conceptseg_review"] for i in red)
    assert [i.id for i in labels("blue")] == blue


def test_promote_over_the_users_ground_truth_needs_replace_but_corrects_an_accept(loop, capfd):
    dataset, truth = loop
    accepted, users = _targets(dataset)[:2]
    review.accept(dataset, "pred", accepted)
    sample = dataset[users]
    sample.gt = fo.Segmentation(mask=_two_class_mask(truth, users))  # the user's own red already there
    sample.save()
    for sample_id in (accepted, users):
        sample = dataset[sample_id]
        sample["fix"] = fo.Segmentation(mask=truth[sample_id]["red"].astype(np.uint8))
        sample.save()
    promote = ["promote", "--dataset", dataset.name, "--pred-field", "pred", "--from-field", "fix"]
    _refused(capfd, [*promote, "--ids", f"{accepted},{users}"], users, "already has ground truth of 'red'")
    _ok(capfd, [*promote, "--ids", accepted])  # a correction of what the loop wrote itself
    assert np.array_equal(dataset[accepted].gt.get_mask() == 1, truth[accepted]["red"])
    _ok(capfd, [*promote, "--ids", users, "--replace"])
    assert _accepted_everywhere(dataset) == ({accepted, users}, {accepted, users})


def test_the_operator_form_has_the_replace_checkbox(plugin_installed, loop):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, ExecutionError

    dataset, truth = loop
    target = _targets(dataset)[0]
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "selected": [target],
                                           "params": {"pred_field": "pred"}})
    for op in ("accept_targets", "promote_corrections"):
        prop = foo.get_operator(f"{PLUGIN}/{op}").resolve_input(ctx).type.properties["replace"]
        assert prop.view.label == "Replace existing ground truth of this class" and prop.default is False
    sample = dataset[target]
    sample.gt = fo.Segmentation(mask=_two_class_mask(truth, target))
    sample.save()
    with pytest.raises(ExecutionError, match="already has ground truth of the concept's class; tick 'Replace"):
        foo.execute_operator(f"{PLUGIN}/accept_targets", dataset=dataset, selected=[target],
                             params={"pred_field": "pred"})
    result = foo.execute_operator(f"{PLUGIN}/accept_targets", dataset=dataset, selected=[target],
                                  params={"pred_field": "pred", "replace": True})
    assert result.error is None and result.result["replaced"] == [target]


# ---- issue 22.3: what can be accepted --------------------------------------------------------


def test_acceptable_says_why_without_reading_a_mask(loop, capfd, monkeypatch):
    dataset, _ = loop
    demo = dataset.match_tags("demo").first().id
    fresh, accepted, bare = _targets(dataset)[:3]
    review.accept(dataset, "pred", accepted)
    sample = dataset[bare]
    sample.pred = None
    sample.save()

    def no_mask_reads(*args, **kwargs):
        raise AssertionError("acceptable read a mask")

    monkeypatch.setattr(fo.Segmentation, "get_mask", no_mask_reads)
    ok, reasons = review.acceptable(dataset, "pred", [demo, fresh, accepted, bare, "nothex", "0" * 24])
    assert ok == [fresh]
    assert "is a demonstration" in reasons[demo]
    assert "is accepted already" in reasons[accepted]
    assert "has no prediction of this run in 'pred'" in reasons[bare]
    assert "not a sample id" in reasons["nothex"] and "not a sample of this dataset" in reasons["0" * 24]
    assert review.acceptable(dataset, "pred", []) == ([], {})
    monkeypatch.undo()
    _refused(capfd, _args("accept", dataset, "--ids", demo), "No prediction of this run in 'pred'", demo)
    _refused(capfd, _args("accept", dataset, "--ids", bare), "No prediction of this run in 'pred'", bare)


# ---- issue 21: raw tracebacks become one sentence --------------------------------------------


def test_accept_when_the_ground_truth_mask_file_is_missing(loop, capfd, tmp_path):
    dataset, _ = loop
    target, other = _targets(dataset)[:2]
    sample = dataset[target]
    path = str(tmp_path / "gt.png")
    cv2.imwrite(path, sample.gt.get_mask())
    sample.gt = fo.Segmentation(mask_path=path)
    sample.save()
    os.remove(path)
    _refused(capfd, _args("accept", dataset, "--ids", f"{other},{target}"), target, "ground-truth mask file", "is missing")
    assert _accepted_everywhere(dataset) == (set(), set())
    assert dataset[other].pred.to_dict().get("review") is None


def test_a_class_value_over_255_into_an_8_bit_mask(name, tmp_path, capfd):
    dataset, truth = two_class_dataset.build(name, str(tmp_path / "media"))
    for sample in dataset:
        wide = "demo" in sample.tags  # demonstrations are 16-bit masks, the targets' masks 8-bit
        seg = np.zeros((128, 128), np.uint16 if wide else np.uint8)
        if wide:
            seg[truth[sample.id]["red"]] = 300
        seg[truth[sample.id]["blue"]] = 2
        sample["gt16"] = fo.Segmentation(mask=seg)
        sample.save()
    dataset.mask_targets = {**dataset.mask_targets, "gt16": {300: "red", 2: "blue"}}
    dataset.save()
    jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt16", "pred", classes=["red"],
                                  route="appearance")
    target = _targets(dataset)[0]
    before = dataset[target].gt16.get_mask().copy()
    _refused(capfd, _args("accept", dataset, "--ids", target), "class value 300", "8-bit mask")
    assert np.array_equal(dataset[target].gt16.get_mask(), before) and dataset[target].gt16.get_mask().dtype == np.uint8
    assert review.state(dataset, "pred")["accepted"] == []


def test_review_and_rerun_after_the_prediction_field_was_deleted(loop, capfd):
    dataset, _ = loop
    target = _targets(dataset)[0]
    review.accept(dataset, "pred", target)  # so that a re-run would have something to learn from
    dataset.delete_sample_field("pred")
    _refused(capfd, _args("review", dataset, "--json"), "'pred'", "no longer on dataset")
    err = _refused(capfd, _args("rerun", dataset), "'pred'", "no longer on dataset")
    assert "accepted" not in err  # it said "every target is accepted"
    for verb in ("accept", "reject"):
        _refused(capfd, _args(verb, dataset, "--ids", _targets(dataset)[1]), "no longer on dataset")
    with pytest.raises(ConceptSegError, match="no longer on dataset"):
        review.acceptable(dataset, "pred", [target])
