"""Evaluation over FiftyOne datasets: stored masks in, metrics equal to the references out."""

import json

import cv2
import fiftyone as fo
import numpy as np
import py_sod_metrics as psm
import pytest

from conceptseg import cli
from conceptseg.runs import evaluation
from conceptseg.runs import jobs
from conceptseg.errors import EmptyViewError, FieldError


def _case_a():
    gt = np.zeros((64, 64), np.uint8)
    gt[16:48, 16:48] = 1
    pred = np.zeros((64, 64), np.uint8)
    pred[20:52, 20:52] = 1
    return pred, gt


def _case_b():
    yy, xx = np.mgrid[0:48, 0:64]
    gt = (((yy - 24) ** 2 + (xx - 32) ** 2) <= 144).astype(np.uint8)
    pred = np.zeros((48, 64), np.uint8)
    pred[10:40, 18:44] = 1
    return pred, gt


@pytest.fixture
def ab_dataset(tmp_path):
    """Two samples with the oracle cases A and B of metrics.md, masks stored as files."""
    dataset = fo.Dataset()
    for name, (pred, gt) in {"a": _case_a(), "b": _case_b()}.items():
        image = str(tmp_path / f"{name}.png")
        cv2.imwrite(image, np.full(gt.shape, 128, np.uint8))
        cv2.imwrite(str(tmp_path / f"{name}_gt.png"), gt * 255)  # 0/255 ground truth
        cv2.imwrite(str(tmp_path / f"{name}_pred.png"), pred)  # 0/1 prediction
        dataset.add_sample(
            fo.Sample(
                filepath=image,
                gt=fo.Segmentation(mask_path=str(tmp_path / f"{name}_gt.png")),
                pred=fo.Segmentation(mask_path=str(tmp_path / f"{name}_pred.png")),
                name=name,
            )
        )
    yield dataset
    dataset.delete()


class TestHandValues:
    def test_giou_ciou_and_fgbg_miou(self, ab_dataset):
        report = evaluation.evaluate(ab_dataset, "pred", "gt")
        m = report["metrics"]
        assert m["giou"] == pytest.approx(0.5918167231235514, abs=1e-9)
        assert m["ciou"] == pytest.approx(0.5985330073349633, abs=1e-9)
        by_name = dict(zip(ab_dataset.values("name"), ab_dataset.values("id")))
        assert report["samples"][by_name["a"]]["miou"] == pytest.approx(0.7376628, abs=1e-6)
        assert report["samples"][by_name["b"]]["miou"] == pytest.approx(0.7169105, abs=1e-6)
        assert report["samples"][by_name["a"]]["mae"] == pytest.approx(0.1171875, abs=1e-9)

    def test_per_sample_fields_and_stored_run(self, ab_dataset):
        evaluation.evaluate(ab_dataset, "pred", "gt", eval_key="ev")
        assert ab_dataset.values("ev_concept_iou") == pytest.approx([784 / 1264, 440 / 781])
        assert "ev" in ab_dataset.list_runs()
        stored = ab_dataset.load_run_results("ev")
        assert stored.metrics["ciou"] == pytest.approx(0.5985330073349633, abs=1e-9)
        assert ab_dataset.get_run_info("ev").config.gt_field == "gt"


class TestJsonEqualsPysodmetrics:
    def test_cli_json_matches_direct_calls_on_the_stored_masks(self, nuclei_dataset, capsys):
        nuclei_dataset.persistent = True
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        jobs.segment_by_demonstration(nuclei.match_tags("demo"), nuclei, "ground_truth", "pred")
        code = cli.main(["evaluate", "--dataset", nuclei_dataset.name, "--pred-field", "pred",
                         "--gt-field", "ground_truth", "--view", "nuclei", "--json"])
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        assert set(out) == {"metrics", "samples"}
        assert {"iou", "giou", "ciou", "wfm", "sm", "mae", "dice"} <= set(out["metrics"])
        assert len(out["samples"]) == 13

        sm, wfm, mae, em = psm.Smeasure(), psm.WeightedFmeasure(), psm.MAE(), psm.Emeasure()
        inter = union = 0
        for sample in nuclei.exists("pred"):
            pred = (sample.pred.get_mask() > 0).astype(np.uint8) * 255
            gt = (sample.ground_truth.get_mask() > 0).astype(np.uint8) * 255
            for m in (sm, wfm, mae, em):
                m.step(pred=pred, gt=gt)
            inter += np.logical_and(pred, gt).sum()
            union += np.logical_or(pred, gt).sum()
            one = psm.WeightedFmeasure()
            one.step(pred=pred, gt=gt)
            assert out["samples"][sample.id]["wfm"] == pytest.approx(one.get_results()["wfm"], abs=1e-9)
        metrics = out["metrics"]
        assert metrics["sm"] == pytest.approx(sm.get_results()["sm"], abs=1e-6)
        assert metrics["wfm"] == pytest.approx(wfm.get_results()["wfm"], abs=1e-6)
        assert metrics["mae"] == pytest.approx(mae.get_results()["mae"], abs=1e-6)
        assert metrics["em"] == pytest.approx(float(np.mean(em.get_results()["em"]["curve"])), abs=1e-6)
        assert metrics["ciou"] == pytest.approx(inter / union, abs=1e-9)
        assert metrics["iou"] >= 0.8


class TestProtocolAndMissing:
    def test_paper_protocol_scores_at_600(self, ab_dataset):
        native = evaluation.evaluate(ab_dataset, "pred", "gt")["metrics"]
        paper = evaluation.evaluate(ab_dataset, "pred", "gt", eval_key="ev600", size=600)["metrics"]
        # nearest-neighbour upscaling keeps the shapes, so IoU barely moves
        assert paper["iou"] == pytest.approx(native["iou"], abs=0.02)
        assert paper["iou"] != native["iou"]

    def test_missing_ground_truth_is_listed_not_scored(self, ab_dataset):
        sample = ab_dataset.first()
        sample.gt = None
        sample.save()
        report = evaluation.evaluate(ab_dataset, "pred", "gt")
        assert report["missing_gt"] == [sample.id]
        assert list(report["samples"]) == [ab_dataset.last().id]
        assert ab_dataset.first()["eval_pred_concept_iou"] is None

    def test_missing_prediction_is_listed(self, ab_dataset):
        sample = ab_dataset.first()
        sample.pred = None
        sample.save()
        assert evaluation.evaluate(ab_dataset, "pred", "gt")["missing_pred"] == [sample.id]

    def test_detections_ground_truth(self, ab_dataset):
        for sample in ab_dataset:
            sample["gt_inst"] = fo.Detections(
                detections=[fo.Detection.from_mask(sample.gt.get_mask() > 0, label="x")]
            )
            sample.save()
        a = evaluation.evaluate(ab_dataset, "pred", "gt_inst", eval_key="evd")["metrics"]
        b = evaluation.evaluate(ab_dataset, "pred", "gt", eval_key="evs")["metrics"]
        assert a["iou"] == pytest.approx(b["iou"], abs=1e-9)

    def test_bad_fields_and_empty_view(self, ab_dataset):
        with pytest.raises(FieldError, match="'nope' does not exist"):
            evaluation.evaluate(ab_dataset, "nope", "gt")
        with pytest.raises(FieldError, match="holds StringField|holds"):
            evaluation.evaluate(ab_dataset, "name", "gt")
        with pytest.raises(EmptyViewError):
            evaluation.evaluate(ab_dataset.limit(0), "pred", "gt")


class TestEvaluationKeyIsSafe:
    def test_key_of_another_run_is_refused(self, ab_dataset):
        ab_dataset.register_run("mine", ab_dataset.init_run(method="someone.else"))
        with pytest.raises(FieldError, match="belongs to another run"):
            evaluation.evaluate(ab_dataset, "pred", "gt", eval_key="mine")
        assert ab_dataset.get_run_info("mine").config.method == "someone.else"

    def test_foreign_fields_with_the_same_names_are_refused(self, ab_dataset):
        ab_dataset.set_values("k_concept_iou", ["note", "note"])
        with pytest.raises(FieldError, match="k_concept_iou"):
            evaluation.evaluate(ab_dataset, "pred", "gt", eval_key="k")
        assert ab_dataset.values("k_concept_iou") == ["note", "note"]

    def test_rerun_replaces_its_own_fields(self, ab_dataset):
        evaluation.evaluate(ab_dataset, "pred", "gt", eval_key="k")
        evaluation.evaluate(ab_dataset, "pred", "gt", eval_key="k", size=600)
        assert ab_dataset.get_run_info("k").config.size == 600
