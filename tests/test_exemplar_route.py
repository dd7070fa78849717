"""The SAM 3 exemplar route on a tiny random SAM 3 (real Sam3Model code, meaningless masks):
its parts, batching, verification, the labels a run writes, the SAM 2 refusal and the zoo entry."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conceptseg.errors import ConceptSegError
from conceptseg.routes.doubt import exemplar_doubt
from conceptseg.routes.exemplar import ExemplarConfig, ExemplarRoute, component_boxes
from conceptseg.segmenters.sam3_exemplar import detect, encode_boxes
from conceptseg.segmenters.sam3_outputs import Detections
from conceptseg.types import Demonstration

pytestmark = pytest.mark.sam3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model's ops are too small to split across a busy runner's two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sam3_bundle_dir(tmp_path_factory) -> str:
    """A tiny SAM 3 bundle built by the CLI, as a user without a GPU would."""
    from conceptseg.cli import main

    out = str(tmp_path_factory.mktemp("sam3-bundle"))
    assert main(["tiny-bundle", out, "--segmenter", "sam3", "--overwrite"]) == 0
    with open(os.path.join(out, "bundle.json")) as f:
        assert json.load(f)["segmenter"]["kind"] == "sam3"
    return out


@pytest.fixture(scope="module")
def segmenter(sam3_bundle_dir):
    from conceptseg.model.checkpoint import load_bundle_cached

    return load_bundle_cached(sam3_bundle_dir).segmenter


def _demo(seed: int, boxes, size=(60, 90)) -> Demonstration:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 0.3, size=(*size, 3)).astype(np.float32)
    mask = np.zeros(size, bool)
    for y0, x0, y1, x1 in boxes:
        image[y0:y1, x0:x1] = (0.9, 0.2, 0.1)
        mask[y0:y1, x0:x1] = True
    return Demonstration(image=image, mask=mask, id=f"d{seed}")


DEMOS = [_demo(1, [(5, 5, 20, 25), (30, 50, 50, 80)]), _demo(2, [(10, 40, 35, 60)]), _demo(3, [])]


# ---- pure parts -----------------------------------------------------------------------


def test_component_boxes_are_pixel_edges_largest_first():
    mask = np.zeros((20, 30), bool)
    mask[2:4, 3:5] = True  # 4 px
    mask[10:18, 20:29] = True  # 72 px
    assert component_boxes(mask, 8) == [[20.0, 10.0, 29.0, 18.0], [3.0, 2.0, 5.0, 4.0]]
    assert component_boxes(mask, 1) == [[20.0, 10.0, 29.0, 18.0]]
    assert component_boxes(np.zeros((5, 5), bool), 8) == []


def test_doubt_grows_as_sam3_is_less_sure():
    t = 0.3
    sure = exemplar_doubt(np.array([0.95, 0.9, 0.01]), presence=0.99, min_score=t)
    unsure_presence = exemplar_doubt(np.array([0.95, 0.9, 0.01]), presence=0.6, min_score=t)
    near_cut = exemplar_doubt(np.array([0.32, 0.31, 0.01]), presence=0.99, min_score=t)
    surely_absent = exemplar_doubt(np.array([0.02, 0.01]), presence=0.02, min_score=t)
    barely_absent = exemplar_doubt(np.array([0.29, 0.01]), presence=0.02, min_score=t)
    assert sure < 0.15 and surely_absent < 0.15
    assert unsure_presence > sure + 0.5 and near_cut > 0.9 and barely_absent > 0.9
    assert exemplar_doubt(np.array([0.5]), presence=0.5, min_score=t) == 1.0
    assert all(0.0 <= d <= 1.0 for d in (sure, unsure_presence, near_cut, surely_absent, barely_absent))


def test_false_detections_become_negative_boxes_best_first(segmenter):
    route = ExemplarRoute(segmenter, ExemplarConfig(max_negatives=2))
    gt = np.zeros((20, 20), bool)
    gt[0:10, 0:10] = True
    masks = np.zeros((4, 20, 20), bool)
    masks[0, 0:10, 0:10] = True  # on the concept: kept as it is
    masks[1, 12:15, 12:18] = True  # outside: negative
    masks[2, 5:15, 5:15] = True  # 25 of 100 px inside: mostly outside, negative
    masks[3, 16:19, 0:4] = True  # outside, but the two best negatives are taken
    dets = Detections(probability=np.zeros((20, 20), np.float32), scores=np.ones(4), kept=np.ones(4, bool),
                      boxes=np.zeros((4, 4)), masks=masks, presence=0.9)
    assert route._false_boxes(dets, gt) == [[12.0, 12.0, 18.0, 15.0], [5.0, 5.0, 15.0, 15.0]]


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="min_score"):
        ExemplarConfig(min_score=0.0)
    with pytest.raises(ValueError, match="max_positives"):
        ExemplarConfig(max_positives=0)


# ---- on the tiny SAM 3 ----------------------------------------------------------------


def test_boxes_become_prompt_tokens_on_their_own_image(segmenter):
    from conceptseg.imaging import content_key, to_uint8

    image = to_uint8(DEMOS[0].image)
    key = content_key(image)
    segmenter.embed(image, key)
    entry = segmenter.features(key)
    tokens = encode_boxes(segmenter, entry, [[5, 5, 25, 20], [50, 30, 80, 50]], [1, 0])
    assert tokens.shape == (3, segmenter.token_dim)  # two boxes and the geometry encoder's CLS
    flipped = encode_boxes(segmenter, entry, [[5, 5, 25, 20], [50, 30, 80, 50]], [1, 1])
    assert not torch.allclose(tokens[1], flipped[1])  # the label is part of the token
    with pytest.raises(ValueError, match="one label per box"):
        encode_boxes(segmenter, entry, [[0, 0, 5, 5]], [1, 0])


def test_fit_takes_every_component_and_segments_in_batches_as_one_at_a_time(segmenter):
    route = ExemplarRoute(segmenter, ExemplarConfig(text="red box"))
    route.fit(DEMOS)
    assert route._counts[:2] == (3, 3)  # three demonstrations, three components
    assert "3 exemplar boxes from 3 demonstrations" in route.rule() and "'red box'" in route.rule()
    targets = [_demo(s, [(8, 8, 30, 40)], size=(50 + 7 * s, 80)).image for s in (4, 5, 6)]
    batch = route.segment_batch(targets)
    for image, (probability, details) in zip(targets, batch):
        alone, alone_details = route.segment_with_details(image)
        assert probability.shape == image.shape[:2] and probability.dtype == np.float32
        np.testing.assert_allclose(probability, alone, atol=1e-5)
        assert details["doubt"] == pytest.approx(alone_details["doubt"], abs=1e-5)
        assert 0.0 <= details["doubt"] <= 1.0 and 0.0 <= details["presence"] <= 1.0


def test_a_bad_target_fails_alone(segmenter):
    route = ExemplarRoute(segmenter)
    route.fit(DEMOS)
    good = DEMOS[1].image
    outcomes = route.segment_batch([good, np.zeros((40, 50), np.float32), good])
    assert isinstance(outcomes[1], Exception)
    assert not isinstance(outcomes[0], Exception) and not isinstance(outcomes[2], Exception)
    np.testing.assert_allclose(outcomes[0][0], outcomes[2][0])


def test_batches_larger_than_the_cache_still_match(segmenter):
    route = ExemplarRoute(segmenter)
    route.fit(DEMOS)
    targets = [_demo(10 + s, [(4, 4, 20, 20)]).image for s in range(segmenter.config.cache_size + 2)]
    batch = route.segment_batch(targets)
    np.testing.assert_allclose(batch[-1][0], route.segment(targets[-1]), atol=1e-5)


def test_each_demonstration_is_encoded_once_even_with_a_small_cache(sam3_bundle_dir):
    from conceptseg.segmenters.sam3 import Sam3Segmenter, Sam3SegmenterConfig

    small = Sam3Segmenter.from_config(Sam3SegmenterConfig(path=os.path.join(sam3_bundle_dir, "segmenter"),
                                                          cache_size=1, device="cpu"))
    route = ExemplarRoute(small)
    route.verify(DEMOS)  # three fits on two demonstrations each, three held-out segmentations
    route.fit(DEMOS)
    assert small.cache_info()["misses"] == 3


def test_verification_leaves_each_demonstration_out(segmenter):
    route = ExemplarRoute(segmenter)
    scores = route.verify(DEMOS)
    assert set(scores) == {"d1", "d2", "d3"}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    only_one_positive = [DEMOS[0], DEMOS[2]]
    assert set(route.verify(only_one_positive)) == {"d3"}  # d1 out leaves no exemplar


def test_the_router_offers_it_with_sam3_only(sam3_bundle_dir, tiny_bundle_dir):
    from conceptseg.model.checkpoint import load_bundle_cached
    from conceptseg.routes.router import make_router

    sam3 = load_bundle_cached(sam3_bundle_dir)
    names = [r.name for r in make_router("auto", bundle=sam3, question="nucleus").routes]
    assert names == ["appearance", "object", "exemplar", "reasoning-fast", "reasoning"]
    assert make_router("exemplar", bundle=sam3, question="nucleus").routes[0].config.text == "nucleus"
    with pytest.raises(ConceptSegError, match="The exemplar route needs SAM 3; this bundle's segmenter is "
                                              "Sam2Segmenter.*conceptseg-sam3"):
        make_router("exemplar", bundle=load_bundle_cached(tiny_bundle_dir))
    with pytest.raises(ConceptSegError, match="needs a model with SAM 3"):
        make_router("exemplar")


# ---- a run over FiftyOne ----------------------------------------------------------------


def test_a_run_writes_exemplar_labels_with_doubt_and_verification(nuclei_dataset, sam3_bundle_dir):
    from conceptseg.runs.jobs import segment_by_demonstration

    demos = nuclei_dataset.match_tags("demo")
    targets = nuclei_dataset.match_tags("demo", bool=False)
    summary = segment_by_demonstration(demos, targets, "ground_truth", "ex", route="exemplar",
                                       model=sam3_bundle_dir, concept="nucleus", batch_size=4)
    assert summary["route"] == "exemplar" and summary["segmented"] == len(targets) and not summary["failures"]
    assert summary["verification"] is not None  # three demonstrations: each held out once
    targets.compute_metadata()
    for sample in targets:
        label = sample["ex"]
        assert label.route == "exemplar" and 0.0 <= label.doubt <= 1.0
        assert label.get_mask().shape[:2] == (sample.metadata.height, sample.metadata.width)
        assert "exemplar box" in label.rule


def test_cli_refuses_exemplar_on_a_sam2_bundle_in_one_sentence(nuclei_dataset, tiny_bundle_dir, capsys):
    from conceptseg.cli import main

    code = main(["segment", "--dataset", nuclei_dataset.name, "--demo-tag", "demo", "--mask-field", "ground_truth",
                 "--pred-field", "ex", "--route", "exemplar", "--model", tiny_bundle_dir])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: The exemplar route needs SAM 3; this bundle's segmenter is Sam2Segmenter")
    assert err.count("\n") == 1 and "Traceback" not in err
    nuclei_dataset.reload()
    assert not nuclei_dataset.has_field("ex")


# ---- the zoo entry ----------------------------------------------------------------------


def test_zoo_sam3_downloads_through_a_stand_in_hub_and_offers_the_route(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from conceptseg.model.checkpoint import load_bundle
    from conceptseg.model.zoo import GatedModelError, download_zoo_bundle
    from conceptseg.routes.router import make_router
    from conceptseg.testing import StandInHub, build_tiny_sam3

    server = StandInHub({"facebook/sam3": build_tiny_sam3(str(tmp_path / "sam3"))}, gated={"facebook/sam3": "hf_ok"})
    try:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run offline
        monkeypatch.delenv("HF_TOKEN", raising=False)
        target = tmp_path / "zoo" / "conceptseg-sam3"
        with pytest.raises(GatedModelError, match="facebook/sam3 is gated"):
            download_zoo_bundle("conceptseg-sam3", str(target))
        assert not target.exists()
        monkeypatch.setenv("HF_TOKEN", "hf_ok")
        path = download_zoo_bundle("conceptseg-sam3", str(target))
    finally:
        server.close()
    with open(os.path.join(path, "bundle.json")) as f:
        assert json.load(f)["segmenter"] == {"kind": "sam3", "config": {"path": "segmenter"}}
    bundle = load_bundle(path)
    assert bundle.policy is None and type(bundle.segmenter).__name__ == "Sam3Segmenter"
    assert [r.name for r in make_router("auto", bundle=bundle).routes] == ["appearance", "object", "exemplar"]
