"""Sam2Segmenter on a tiny SAM 2 (packaged hiera-t config, image_size=256, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptseg.errors import ConceptSegError
from conceptseg.segmenters.sam2 import CheckpointError, Sam2Segmenter, Sam2SegmenterConfig

H, W = 200, 300  # non-square on purpose
BOX = [60.0, 40.0, 220.0, 170.0]


def _image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    img[50:160, 80:200] = (200, 60, 40)  # a red rectangle on a dark noisy background
    return img


def _tokens(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randn(n, 256, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def config() -> Sam2SegmenterConfig:
    return Sam2SegmenterConfig(image_size=256, device="cpu", cache_size=8)


@pytest.fixture(scope="module")
def seg(config) -> Sam2Segmenter:
    torch.manual_seed(0)
    s = Sam2Segmenter.from_config(config)
    s.embed(_image(), "img")
    return s


def test_box_only_has_original_size_and_float32(seg):
    out = seg.predict("img", box=BOX)
    assert out.shape == (H, W) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, seg.predict("img", box=torch.tensor(BOX)))


@pytest.mark.filterwarnings("ignore:.*torch.jit.script:FutureWarning")
def test_box_only_matches_sam2_image_predictor(seg):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = SAM2ImagePredictor(seg.model)
    s = seg.model.image_size
    pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    pred.set_image(_image())
    ref, _, _ = pred.predict(box=np.array(BOX), multimask_output=False, return_logits=True)
    np.testing.assert_allclose(seg.predict("img", box=BOX), ref[0], atol=1e-5)
    _, iou, _ = pred.predict(box=np.array(BOX), multimask_output=False, return_logits=True)
    scored = seg.predict_scored("img", box=BOX)  # the decoder's predicted IoU beside the same logits
    np.testing.assert_array_equal(scored.logits, seg.predict("img", box=BOX))
    assert scored.quality == pytest.approx(float(np.clip(iou[0], 0, 1)), abs=1e-5)
    assert 0.0 < scored.presence <= 1.0 and scored.score == pytest.approx(scored.quality * scored.presence)


def test_tokens_only_works(seg):
    out = seg.predict("img", concept_tokens=_tokens(1))
    assert out.shape == (H, W) and out.dtype == np.float32 and np.isfinite(out).all()
    batched = seg.predict("img", concept_tokens=_tokens(1)[None])  # (1, N, 256) form
    np.testing.assert_array_equal(out, batched)


def test_tokens_change_the_mask(seg):
    box_only = seg.predict("img", box=BOX)
    with_a = seg.predict("img", box=BOX, concept_tokens=_tokens(1))
    with_b = seg.predict("img", box=BOX, concept_tokens=_tokens(2))
    assert np.abs(with_a - box_only).max() > 1e-4
    assert np.abs(with_a - with_b).max() > 1e-4
    # deterministic for the same prompt
    np.testing.assert_array_equal(with_a, seg.predict("img", box=BOX, concept_tokens=_tokens(1)))


def test_predict_mask_thresholds_logits(seg):
    mask = seg.predict_mask("img", box=BOX)
    assert mask.dtype == bool and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, seg.predict("img", box=BOX) > 0.0)


def test_cache_hits_and_lru_eviction(seg, config):
    small = Sam2Segmenter(seg.model, Sam2SegmenterConfig(**{**config.to_dict(), "cache_size": 2}))
    small.embed(_image(1), "a")
    small.embed(_image(1), "a")
    assert small.cache_info() == {"hits": 1, "misses": 1, "size": 1, "maxsize": 2}
    small.embed(_image(2), "b")
    small.predict("a", box=BOX)  # using "a" makes "b" the least recently used
    small.embed(_image(3), "c")
    assert small.cache_info()["size"] == 2
    small.predict("a", box=BOX)
    small.predict("c", box=BOX)
    with pytest.raises(RuntimeError, match="embed"):
        small.predict("b", box=BOX)


def test_predict_before_embed_raises(seg):
    with pytest.raises(RuntimeError, match=r"embed\(image, 'never'\)"):
        seg.predict("never", box=BOX)


def test_neither_prompt_raises(seg):
    with pytest.raises(ValueError, match="box.*concept_tokens"):
        seg.predict("img")


def test_bad_inputs_raise(seg):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        seg.embed(np.zeros((8, 8), np.uint8), "gray")
    with pytest.raises(ValueError, match="4 finite numbers"):
        seg.predict("img", box=[1, 2, 3])
    with pytest.raises(ValueError, match=r"\(N, 256\)"):
        seg.predict("img", concept_tokens=torch.zeros(8, 128))


def test_grad_reaches_tokens_not_segmenter(seg):
    tokens = _tokens(3).requires_grad_(True)
    out = seg.predict_with_grad("img", box=BOX, concept_tokens=tokens)
    assert isinstance(out, torch.Tensor) and out.shape == (H, W) and out.requires_grad
    out.sigmoid().mean().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in seg.model.parameters())
    # the numpy path records no graph
    assert isinstance(seg.predict("img", box=BOX, concept_tokens=tokens), np.ndarray)


def test_save_weights_roundtrip(seg, config, tmp_path):
    path = str(tmp_path / "sam2_tiny.safetensors")
    seg.save_weights(path)
    torch.manual_seed(123)  # different random init, overwritten by the checkpoint
    other = Sam2Segmenter.from_config(Sam2SegmenterConfig(**{**config.to_dict(), "checkpoint": path}))
    other.embed(_image(), "img")
    for kw in ({"box": BOX}, {"box": BOX, "concept_tokens": _tokens(1)}):
        np.testing.assert_array_equal(other.predict("img", **kw), seg.predict("img", **kw))


def test_meta_pt_checkpoint_loads(seg, config, tmp_path):
    path = str(tmp_path / "sam2_tiny.pt")
    torch.save({"model": seg.model.state_dict()}, path)
    other = Sam2Segmenter.from_config(Sam2SegmenterConfig(**{**config.to_dict(), "checkpoint": path}))
    assert torch.equal(other.model.no_mem_embed, seg.model.no_mem_embed)


def test_checkpoint_with_missing_key_raises(seg, config, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in seg.model.state_dict().items()}
    sd.pop("no_mem_embed")
    sd["extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "broken.safetensors")
    save_file(sd, path)
    with pytest.raises(CheckpointError, match="no_mem_embed") as info:
        Sam2Segmenter.from_config(Sam2SegmenterConfig(**{**config.to_dict(), "checkpoint": path}))
    assert "extra.weight" in str(info.value)
    assert isinstance(info.value, ConceptSegError)


def test_missing_checkpoint_file_names_it_and_where_to_get_weights(config, tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="nope.pt") as info:
        Sam2Segmenter.from_config(Sam2SegmenterConfig(**{**config.to_dict(), "checkpoint": path}))
    assert "github.com/facebookresearch/sam2" in str(info.value)


def test_config_roundtrip_and_validation():
    cfg = Sam2SegmenterConfig(image_size=256, checkpoint="w.safetensors", cache_size=3)
    assert Sam2SegmenterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="multiple of 32"):
        Sam2SegmenterConfig(image_size=250)
    with pytest.raises(ValueError, match="bogus"):
        Sam2SegmenterConfig.from_dict({"bogus": 1})


def test_package_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, conceptseg.segmenters; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
