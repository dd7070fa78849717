"""Doubt per target: defined per route, in [0, 1], on every predicted label."""

import dataclasses

import numpy as np
import pytest

from conceptseg.routes.doubt import (WEIGHTS, box_doubt, boundary_doubt, check_doubt, combine, margin_doubt, mask_box,
                                     probability_doubt, reasoning_doubt, score_doubt)
from conceptseg.routes.appearance import AppearanceRoute
from conceptseg.types import Demonstration


def test_probability_doubt_is_zero_when_every_tree_agrees_and_one_at_the_threshold():
    crisp = np.zeros((32, 32), np.float32)
    crisp[8:16, 8:16] = 1.0
    assert probability_doubt(crisp) == 0.0
    assert probability_doubt(np.full((32, 32), 0.5, np.float32) + 1e-3) == pytest.approx(1.0, abs=0.01)
    assert probability_doubt(np.zeros((32, 32), np.float32)) == 0.0  # confidently absent
    near_miss = np.full((32, 32), 0.4, np.float32)  # nothing predicted, but almost
    assert probability_doubt(near_miss) == pytest.approx(0.8)
    soft = crisp * 0.7
    assert 0.0 < probability_doubt(soft) < probability_doubt(crisp * 0.55)


def test_margin_doubt_falls_as_the_predicted_region_stands_out():
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    clear = np.where(mask, 0.8, 0.0).astype(np.float32)
    faint = np.where(mask, 0.05, 0.0).astype(np.float32)
    inverted = np.where(mask, 0.0, 0.3).astype(np.float32)
    assert margin_doubt(clear, mask, 0.0) < 0.01
    assert margin_doubt(clear, mask, 0.0) < margin_doubt(faint, mask, 0.0) < margin_doubt(inverted, mask, 0.0)
    assert margin_doubt(inverted, mask, 0.0) > 0.99
    empty = np.zeros_like(mask)
    assert margin_doubt(np.full((32, 32), -0.5, np.float32), empty, 0.0) < margin_doubt(
        np.full((32, 32), -0.01, np.float32), empty, 0.0)


def test_check_doubt():
    assert check_doubt(None) == 1.0 and check_doubt(1.0) == 0.0 and check_doubt(0.25) == 0.75


def test_appearance_doubt_is_higher_on_a_target_unlike_the_demonstrations(nuclei_tiles):
    route = AppearanceRoute()
    route.fit([Demonstration(t[1], t[2], t[0]) for t in nuclei_tiles[:3]])
    image = nuclei_tiles[5][1]
    _, like = route.segment_with_details(image)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.25, image.shape), 0, 1).astype(np.float32)
    _, unlike = route.segment_with_details(noisy)
    assert 0.0 <= like["doubt"] < unlike["doubt"] <= 1.0


AGREEING = "[0, 0, 599, 599]"  # the tiny random SAM 2 speckles the whole tile: its mask's box is the tile
ASTRAY = "[0, 0, 99, 99]"  # a corner the mask's box is far from


def _answer(box: str) -> str:
    return f"<think>t</think><rule>r</rule><check>[0, 0, 299, 299]</check><bbox>{box}</bbox><answer>a</answer>"


def _disk(size: int = 64, blur: float = 0.0) -> np.ndarray:
    """A probability map: a disk of radius size/4 in the middle, its edge blurred by ``blur`` pixels."""
    import cv2

    yy, xx = np.mgrid[:size, :size]
    disk = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (size / 4) ** 2).astype(np.float32)
    return cv2.GaussianBlur(disk, (0, 0), blur) if blur else disk


class TestReasoningTerms:
    def test_boundary_doubt_grows_as_the_border_softens(self):
        crisp, soft, softer = _disk(), _disk(blur=1.5), _disk(blur=4.0)
        assert boundary_doubt(crisp) == 0.0
        assert 0.0 < boundary_doubt(soft) < boundary_doubt(softer) < 1.0
        # Only the band across the border counts: a large crisp interior does not dilute it.
        assert boundary_doubt(soft) == pytest.approx(boundary_doubt(_disk(256, blur=1.5), width=3), abs=0.05)
        assert boundary_doubt(np.zeros((32, 32), np.float32)) == 0.0  # nothing, not even a near miss
        assert boundary_doubt(np.full((32, 32), 0.4, np.float32)) == pytest.approx(0.8)  # a near miss
        assert boundary_doubt(np.full((32, 32), 0.9, np.float32)) == pytest.approx(0.2)  # all image, no border

    def test_box_doubt_is_one_minus_the_iou_with_the_masks_box(self):
        mask = np.zeros((64, 64), bool)
        mask[16:48, 16:48] = True
        assert mask_box(mask) == (16, 16, 47, 47) and mask_box(~np.ones_like(mask)) is None
        assert box_doubt((16, 16, 47, 47), mask) == 0.0
        assert box_doubt((0, 0, 31, 31), mask) == pytest.approx(6 / 7)  # 16² shared of 32² + 32² - 16²
        assert box_doubt(None, mask) == 1.0  # asked for, none parseable
        assert box_doubt((16, 16, 47, 47), np.zeros_like(mask)) == 1.0  # a box, no mask

    def test_score_doubt(self):
        assert score_doubt(0.9) == pytest.approx(0.1) and score_doubt(1.2) == 0.0 and score_doubt(-0.1) == 1.0
        assert score_doubt(float("nan")) == 1.0

    def test_combine_leaves_missing_terms_out_and_renormalises(self):
        assert combine({"check": 0.2, "box": 0.6}) == pytest.approx(0.4)
        assert combine({"check": 0.2, "box": 0.6, "segmenter": None}) == pytest.approx(0.4)
        assert combine({"check": 0.2, "boundary": 0.8}) == pytest.approx((0.2 + 0.5 * 0.8) / 1.5)  # boundary: 0.5
        assert combine({"segmenter": 0.3}) == pytest.approx(0.3)
        assert combine({}) == 1.0  # nothing to go on
        assert combine({name: 0.0 for name in WEIGHTS}) == 0.0 and combine({name: 1.0 for name in WEIGHTS}) == 1.0

    def test_each_term_moves_the_doubt_the_right_way(self):
        soft = _disk(blur=1.5)
        box = mask_box(soft > 0.5)
        base = dict(checked=True, check_iou=0.6, score=0.7, box_asked=True, box=box)
        doubt, terms = reasoning_doubt(soft, **base)
        assert set(terms) == {"check", "segmenter", "box", "boundary"} and 0.0 < doubt < 1.0
        assert reasoning_doubt(soft, **{**base, "check_iou": 0.9})[0] < doubt < reasoning_doubt(
            soft, **{**base, "check_iou": 0.3})[0]
        assert reasoning_doubt(soft, **{**base, "check_iou": None})[1]["check"] == 1.0  # no parseable check
        assert reasoning_doubt(soft, **{**base, "score": 0.95})[0] < doubt < reasoning_doubt(
            soft, **{**base, "score": 0.2})[0]
        assert doubt < reasoning_doubt(soft, **{**base, "box": (0, 0, 20, 20)})[0] < reasoning_doubt(
            soft, **{**base, "box": None})[0]
        assert reasoning_doubt(_disk(), **base)[0] < doubt < reasoning_doubt(_disk(blur=4.0), **base)[0]

    def test_missing_terms_and_bounds(self):
        soft = _disk(blur=1.5)
        doubt, terms = reasoning_doubt(soft, score=0.8)  # SAM 3's shortcut: no policy, no check, no box
        assert set(terms) == {"segmenter", "boundary"}
        assert doubt == pytest.approx((0.2 + 0.5 * terms["boundary"]) / 1.5)
        assert reasoning_doubt(_disk(), checked=True, check_iou=1.0, score=1.0, box_asked=True,
                               box=mask_box(_disk() > 0.5)) == (0.0, {"check": 0.0, "segmenter": 0.0, "box": 0.0,
                                                                      "boundary": 0.0})
        worst, _ = reasoning_doubt(np.full((32, 32), 0.5001, np.float32), checked=True, score=0.0, box_asked=True)
        assert worst == pytest.approx(1.0, abs=1e-3)


def test_reasoning_doubt_looks_at_each_target(tiny_bundle_dir, nuclei_tiles):
    """Same demonstrations, same check: the target whose <bbox> the mask agrees with is doubted less."""
    from conceptseg.model.checkpoint import load_bundle_cached
    from conceptseg.model.episode import build_episode
    from conceptseg.model.prompts import box_iou
    from conceptseg.routes.reasoning import ReasoningRoute
    from conceptseg.testing import ScriptedPolicy

    bundle = load_bundle_cached(tiny_bundle_dir)
    demos = [Demonstration(t[1], t[2], t[0]) for t in nuclei_tiles[:3]]
    # One generate call for both targets: the first row answers AGREEING, the second ASTRAY.
    route = ReasoningRoute(dataclasses.replace(bundle, policy=ScriptedPolicy(bundle.policy, [
        _answer(AGREEING), _answer(ASTRAY)])))
    route.fit(demos)
    (p_agree, agree), (p_astray, astray) = route.segment_batch([nuclei_tiles[7][1], nuclei_tiles[9][1]])
    proxy = build_episode(demos, nuclei_tiles[7][1]).proxy_box
    for details in (agree, astray):
        assert details["doubt_terms"]["check"] == pytest.approx(1.0 - box_iou((0, 0, 299, 299), proxy))
        assert set(details["doubt_terms"]) == {"check", "segmenter", "box", "boundary"}
        assert all(0.0 <= v <= 1.0 for v in details["doubt_terms"].values()) and 0.0 <= details["doubt"] <= 1.0
    assert agree["box"] == [0, 0, 127, 127] and astray["box"] == [0, 0, 20, 20]
    assert agree["doubt_terms"]["box"] < 0.2 < 0.9 < astray["doubt_terms"]["box"]
    assert agree["doubt"] < astray["doubt"]
    unparsable = ReasoningRoute(dataclasses.replace(bundle, policy=ScriptedPolicy(bundle.policy, "a round thing")))
    unparsable.fit(demos)
    _, lost = unparsable.segment_with_details(nuclei_tiles[7][1])
    assert lost["doubt_terms"]["check"] == 1.0 and lost["doubt_terms"]["box"] == 1.0  # asked for, none written


def test_reasoning_labels_carry_their_doubt_terms(tiny_bundle_dir, nuclei_dataset):
    from conceptseg.runs.jobs import segment_by_demonstration
    from conceptseg.testing import scripted_bundle

    ds = nuclei_dataset
    with scripted_bundle(tiny_bundle_dir, _answer(AGREEING)) as bundle:
        segment_by_demonstration(ds.match_tags("demo"), ds.match_tags("demo", bool=False), "ground_truth", "pred",
                                 route="reasoning", model=bundle, instances=False, batch_size=4)
    labels = ds.match_tags("demo", bool=False).values("pred")
    assert labels and all(set(label.doubt_terms) == {"check", "segmenter", "box", "boundary"} for label in labels)
    assert all(isinstance(v, float) for label in labels for v in label.doubt_terms.values())
    assert all(label.doubt == pytest.approx(combine(label.doubt_terms)) for label in labels)


def test_every_predicted_label_carries_its_doubt(name, nuclei_tiles, tmp_path):
    import cv2
    import fiftyone as fo

    from conceptseg.runs import jobs

    dataset = fo.Dataset(name)
    for i, (tile, image, mask) in enumerate(nuclei_tiles[:6]):
        path = str(tmp_path / f"{tile}.png")
        cv2.imwrite(path, (image * 255).astype(np.uint8))
        dataset.add_sample(fo.Sample(filepath=path, tags=["demo"] if i < 2 else [],
                                     gt=fo.Segmentation(mask=mask.astype(np.uint8))))
    jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", route="appearance")
    doubts = dataset.match_tags("demo", bool=False).values("pred.doubt")
    assert len(doubts) == 4 and all(0.0 <= d <= 1.0 for d in doubts)
    assert dataset.match_tags("demo", bool=False).values("pred_instances.doubt") == doubts


def test_prototype_doubt_is_the_score_map_margin(nuclei_tiles):
    import torch

    from conceptseg.routes.prototype import PrototypeRoute
    from conceptseg.segmenters.sam2 import Sam2Segmenter, Sam2SegmenterConfig

    torch.manual_seed(0)  # random weights: the value means nothing, the definition is what is checked
    seg = Sam2Segmenter.from_config(Sam2SegmenterConfig(image_size=256, device="cpu", cache_size=8))
    route = PrototypeRoute(seg)
    route.fit([Demonstration(t[1], t[2], t[0]) for t in nuclei_tiles[:3]])
    image = nuclei_tiles[4][1]
    probability, details = route.segment_with_details(image)
    expected = margin_doubt(route.similarity(image), probability > route.threshold, route.config.min_similarity)
    assert 0.0 <= details["doubt"] <= 1.0 and details["doubt"] == pytest.approx(expected, abs=1e-6)
