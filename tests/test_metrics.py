"""Tests for conceptseg.metrics against pysodmetrics 1.6.2 and the oracle values of
shared/reference/metrics.md §5 (cases built here from §5.1; tolerances from §5.6)."""

from __future__ import annotations

import cv2
import numpy as np
import py_sod_metrics as psm
import pytest

from conceptseg.metrics import (
    PAPER_SIZE,
    aggregate,
    binarize,
    fg_bg_miou,
    resize_mask,
    score_sample,
)

# Oracle numbers are printed decimals of pysodmetrics runs (§5.2); 1e-12 absorbs only the
# last printed digit. Comparisons with pysodmetrics called here are exact (§5.6).
ORACLE_TOL = 1e-12


def case_a() -> tuple[np.ndarray, np.ndarray]:
    """Returns (gt, pred) of case A: a 32² square and the same square shifted by (+4, +4)."""
    gt = np.zeros((64, 64), np.uint8)
    gt[16:48, 16:48] = 255
    pred = np.zeros((64, 64), np.uint8)
    pred[20:52, 20:52] = 255
    return gt, pred


def case_b() -> tuple[np.ndarray, np.ndarray]:
    """Returns (gt, pred) of case B: a radius-12 disk and a 30×26 rectangle over it."""
    yy, xx = np.mgrid[0:48, 0:64]
    gt = (((yy - 24) ** 2 + (xx - 32) ** 2) <= 144).astype(np.uint8) * 255
    pred = np.zeros((48, 64), np.uint8)
    pred[10:40, 18:44] = 255
    return gt, pred


def case_c_soft() -> tuple[np.ndarray, np.ndarray]:
    """Returns (gt, pred) of case C_soft: A's gt and a soft map with a 100-valued band."""
    gt, _ = case_a()
    pred = np.zeros((64, 64), np.uint8)
    pred[20:52, 20:52] = 200
    pred[8:16, 8:56] = 100
    return gt, pred


def case_ellipse_512() -> tuple[np.ndarray, np.ndarray]:
    """Returns (gt, pred) of a 512² pair: a tilted ellipse and a dilated, shifted copy."""
    gt = np.zeros((512, 512), np.uint8)
    cv2.ellipse(gt, (250, 270), (140, 90), 30, 0, 360, 255, -1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    pred = np.roll(cv2.dilate(gt, kernel), (9, -6), axis=(0, 1))
    return gt, pred


def pysod_direct(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Runs pysodmetrics itself on (gt, pred) uint8 0/255 pairs, as the oracle script does."""
    sm, wfm, em, mae = psm.Smeasure(), psm.WeightedFmeasure(), psm.Emeasure(), psm.MAE()
    binary = dict(with_adaptive=False, with_dynamic=False, with_binary=True, sample_based=True)
    fm = psm.FmeasureV2(
        metric_handlers={"dice": psm.DICEHandler(**binary), "ber": psm.BERHandler(**binary)}
    )
    for gt, pred in pairs:
        for m in (sm, wfm, em, mae, fm):
            m.step(pred=pred, gt=gt)
    f = fm.get_results()
    return {
        "sm": sm.get_results()["sm"],
        "wfm": wfm.get_results()["wfm"],
        "em": np.mean(em.get_results()["em"]["curve"]),
        "mae": mae.get_results()["mae"],
        "dice": f["dice"]["binary"],
        "ber": f["ber"]["binary"],
    }


class TestBinarize:
    def test_bool_is_returned_as_is(self):
        mask = np.array([[True, False], [False, True]])
        assert binarize(mask) is mask

    def test_uint8_zero_one(self):
        mask = np.array([[0, 1], [1, 0]], np.uint8)
        np.testing.assert_array_equal(binarize(mask), mask == 1)

    def test_uint8_zero_255(self):
        mask = np.array([[0, 255], [255, 0]], np.uint8)
        np.testing.assert_array_equal(binarize(mask), mask == 255)

    def test_uint8_soft_map_cuts_at_half_of_255(self):
        mask = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
        assert binarize(mask).tolist() == [[False, False, False, True, True, True]]

    def test_uint16_instance_labels_are_foreground_where_nonzero(self):
        labels = np.array([[0, 1, 2], [300, 0, 65535]], np.uint16)
        assert binarize(labels).tolist() == [[False, True, True], [True, False, True]]

    def test_float_probabilities_use_the_threshold(self):
        probs = np.array([[0.0, 0.5, 0.51, 1.0]], np.float32)
        assert binarize(probs).tolist() == [[False, False, True, True]]
        assert binarize(probs, threshold=0.2).tolist() == [[False, True, True, True]]

    def test_float_logits_with_threshold_zero(self):
        logits = np.array([[-3.0, 0.0, 0.1, 7.5]])
        assert binarize(logits, threshold=0.0).tolist() == [[False, False, True, True]]

    def test_rejects_non_2d(self):
        with pytest.raises(ValueError, match="2-D"):
            binarize(np.zeros((4, 4, 3), np.uint8))


class TestResizeMask:
    def test_paper_protocol_gives_600_square_bool(self):
        _, pred = case_b()
        out = resize_mask(pred, PAPER_SIZE)
        assert out.shape == (600, 600) and out.dtype == bool

    def test_shape_with_itself_keeps_iou_one(self):
        gt, _ = case_b()
        scores = score_sample(gt, gt, size=PAPER_SIZE)
        assert scores["iou"] == 1.0
        assert scores["union"] > 0

    def test_height_width_tuple(self):
        gt, _ = case_a()
        assert resize_mask(gt, (30, 50)).shape == (30, 50)

    def test_nearest_upscale_repeats_pixels(self):
        mask = np.array([[True, False], [False, True]])
        np.testing.assert_array_equal(resize_mask(mask, 4), np.kron(mask, np.ones((2, 2), bool)))


class TestOracleCases:
    """score_sample on cases A and B against §5.2 (pysodmetrics) and §5.3 (by hand)."""

    @pytest.mark.parametrize(
        "case, expected",
        [
            (
                case_a,
                dict(sm=0.7529083809829703, wfm=0.7667643415609622, em=0.8852258852258841,
                     mae=0.1171875, dice=0.765625, ber=0.15625, iou=0.620253164556962),
            ),
            (
                case_b,
                dict(sm=0.7229593803407333, wfm=0.6603785779798985, em=0.7938103756323469,
                     mae=0.11100260416666667, dice=0.7207207207207207,
                     ber=0.06574800197540065, iou=0.5633802816901409),
            ),
        ],
        ids=["A", "B"],
    )
    def test_matches_oracle(self, case, expected):
        gt, pred = case()
        scores = score_sample(pred, gt)
        for key, value in expected.items():
            assert scores[key] == pytest.approx(value, abs=ORACLE_TOL), key

    def test_counts_of_case_a(self):
        gt, pred = case_a()
        scores = score_sample(pred, gt)
        assert (scores["intersection"], scores["union"]) == (784, 1264)
        assert scores["mae"] == pytest.approx(480 / 4096, abs=1e-9)


class TestMatchesPysodmetricsDirectly:
    @pytest.mark.parametrize("case", [case_a, case_b, case_ellipse_512], ids=["A", "B", "ellipse"])
    def test_equal_to_direct_call_on_same_masks(self, case):
        gt, pred = case()
        ours, theirs = score_sample(pred, gt), pysod_direct([(gt, pred)])
        for key in ("sm", "wfm", "em", "mae"):
            assert ours[key] == theirs[key], key
        for key in ("dice", "ber"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-8), key

    def test_zero_one_input_scores_like_zero_255(self):
        # pysodmetrics reads gt as `gt > 128`: a 0/1 gt fed to it directly is all background.
        # score_sample hides that, so every encoding of the same masks scores the same.
        gt, pred = case_b()
        reference = score_sample(pred, gt)
        zero_one = score_sample((pred // 255).astype(np.uint8), (gt // 255).astype(np.uint8))
        assert zero_one == reference
        assert score_sample(pred > 0, gt.astype(np.uint16)) == reference
        assert pysod_direct([(gt // 255, pred)])["wfm"] == 0.0

    def test_empty_gt_wfm_is_pysodmetrics_zero(self):
        gt = np.zeros((32, 32), np.uint8)
        pred = np.zeros((32, 32), np.uint8)
        pred[4:10, 4:10] = 255
        ours, theirs = score_sample(pred, gt), pysod_direct([(gt, pred)])
        assert ours["wfm"] == theirs["wfm"] == 0.0
        assert ours["sm"] == theirs["sm"]


class TestSoftPredictionsAreBinarised:
    # C_soft's §5.2 values score a soft map (pysodmetrics stretches 0..200 to 0..1, so the
    # 100 band counts 0.5). score_sample scores hard masks only, as the paper does: C_soft
    # binarises to exactly case A's prediction, so it must score as case A, not as C_soft.
    def test_c_soft_binarises_to_case_a_prediction(self):
        _, soft = case_c_soft()
        _, pred_a = case_a()
        np.testing.assert_array_equal(binarize(soft), pred_a > 0)

    def test_c_soft_scores_as_case_a(self):
        gt, soft = case_c_soft()
        _, pred_a = case_a()
        assert score_sample(soft, gt) == score_sample(pred_a, gt)

    def test_soft_oracle_differs_from_hard_score(self):
        gt, soft = case_c_soft()
        soft_mae = pysod_direct([(gt, soft)])["mae"]
        assert soft_mae == pytest.approx(0.1640625, abs=1e-9)
        assert score_sample(soft, gt)["mae"] == pytest.approx(0.1171875, abs=1e-9)


class TestIoU:
    def test_empty_on_empty_is_one(self):
        empty = np.zeros((16, 16), bool)
        scores = score_sample(empty, empty)
        assert scores["iou"] == 1.0
        assert scores["miou"] == 1.0

    def test_empty_prediction_on_nonempty_gt_is_zero(self):
        gt, _ = case_a()
        scores = score_sample(np.zeros_like(gt), gt)
        assert scores["iou"] == 0.0
        assert scores["intersection"] == 0 and scores["union"] == 1024

    def test_fg_bg_miou_of_paper(self):
        for case, expected in ((case_a, 0.7376628), (case_b, 0.7169105)):
            gt, pred = case()
            assert score_sample(pred, gt)["miou"] == pytest.approx(expected, abs=1e-6)
            assert fg_bg_miou(pred > 0, gt > 0) == pytest.approx(expected, abs=1e-6)

    def test_prediction_of_other_shape_is_resized_to_gt(self):
        gt, pred = case_a()
        big = resize_mask(pred, 128)
        scores = score_sample(big, gt)
        assert scores["iou"] == pytest.approx(784 / 1264, abs=1e-9)


class TestAggregate:
    def test_giou_and_ciou_of_a_and_b(self):
        out = aggregate([score_sample(p, g) for g, p in (case_a(), case_b())])
        assert out["giou"] == pytest.approx(0.5918167231235514, abs=1e-9)
        assert out["ciou"] == pytest.approx(0.5985330073349633, abs=1e-9)
        assert out["miou"] == pytest.approx((0.7376628 + 0.7169105) / 2, abs=1e-6)

    def test_means_equal_pysodmetrics_over_the_set(self):
        pairs = [case_a(), case_b()]
        out = aggregate(score_sample(p, g) for g, p in pairs)  # a generator is fine
        theirs = pysod_direct(pairs)
        for key in ("sm", "wfm", "em", "mae"):
            assert out[key] == theirs[key], key
        assert out["sm"] == pytest.approx(0.7379338806618518, abs=ORACLE_TOL)
        assert out["wfm"] == pytest.approx(0.7135714597704303, abs=ORACLE_TOL)

    def test_counts_are_not_averaged(self):
        gt, pred = case_a()
        out = aggregate([score_sample(pred, gt)])
        assert "intersection" not in out and "union" not in out

    def test_no_samples_gives_empty_dict(self):
        assert aggregate([]) == {}

    def test_all_empty_unions_give_ciou_one(self):
        empty = np.zeros((8, 8), bool)
        out = aggregate([score_sample(empty, empty), score_sample(empty, empty)])
        assert out["ciou"] == 1.0 and out["giou"] == 1.0

    def test_foreign_dict_is_refused_with_a_sentence(self):
        with pytest.raises(ValueError, match="score_sample"):
            aggregate([{"iou": 0.5}])
