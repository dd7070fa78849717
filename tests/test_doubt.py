"""Doubt per target: defined per route, in [0, 1], on every predicted label."""

import dataclasses

import numpy as np
import pytest

from conceptseg.routes.doubt import check_doubt, margin_doubt, probability_doubt
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


def test_reasoning_doubt_is_one_minus_the_check_iou(tiny_bundle_dir, nuclei_tiles):
    from conceptseg.model.checkpoint import load_bundle_cached
    from conceptseg.model.episode import build_episode
    from conceptseg.model.prompts import box_iou
    from conceptseg.routes.reasoning import ReasoningRoute

    bundle = load_bundle_cached(tiny_bundle_dir)
    demos = [Demonstration(t[1], t[2], t[0]) for t in nuclei_tiles[:3]]
    text = ("<think>t</think><rule>r</rule><check>[0, 0, 299, 299]</check>"
            "<bbox>[0, 0, 599, 599]</bbox><answer>a</answer>")

    class Scripted:
        def __init__(self, policy):
            self.policy = policy

        def generate(self, requests, **kwargs):
            out = self.policy.generate(requests, **kwargs)
            out.completions = [text] * len(out.completions)
            return out

    route = ReasoningRoute(dataclasses.replace(bundle, policy=Scripted(bundle.policy)))
    route.fit(demos)
    target = nuclei_tiles[7][1]
    _, details = route.segment_with_details(target)
    proxy = build_episode(demos, target).proxy_box
    assert details["doubt"] == pytest.approx(1.0 - box_iou((0, 0, 299, 299), proxy))
    random_policy = ReasoningRoute(bundle)  # writes no parseable check: full doubt
    random_policy.fit(demos)
    assert random_policy.segment_with_details(target)[1]["doubt"] == 1.0


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
