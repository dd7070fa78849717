"""Sam3Segmenter on a tiny random SAM 3 (build_tiny_sam3: 112 px, width 256), loaded through
the real Sam3Model / Sam3Processor.from_pretrained path; and the text-shortcut rule."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from conceptseg.errors import ConceptSegError
from conceptseg.segmenters.sam3 import CheckpointError, Sam3Prediction, Sam3Segmenter, Sam3SegmenterConfig
from conceptseg.segmenters.sam3_text import shortcut_threshold, shortcut_word_count, text_shortcut
from conceptseg.testing import build_tiny_sam3

pytestmark = pytest.mark.sam3

H, W = 50, 80  # non-square on purpose; the model's input is 112x112


def _image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    img[10:40, 20:60] = (200, 60, 40)
    return img


def _tokens(seed: int, n: int = 8, dim: int = 256) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model's ops are too small to split: on a busy 2-core runner two threads wait on
    each other (a predict takes ~1 s instead of ~0.1 s), so this module runs on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_sam3(str(tmp_path_factory.mktemp("tiny_sam3")), seed=0)


@pytest.fixture(scope="module")
def seg(tiny_dir) -> Sam3Segmenter:
    s = Sam3Segmenter.from_config(Sam3SegmenterConfig(path=tiny_dir, device="cpu"))
    s.embed(_image(), "img")
    return s


# ---- predictions ----------------------------------------------------------------------


def test_tiny_model_is_sam3_with_256_wide_prompts(seg):
    assert type(seg.model).__name__ == "Sam3Model"
    assert seg.token_dim == 256 and seg.image_size == 112
    assert sum(p.numel() for p in seg.model.parameters()) < 7_000_000
    assert not any(p.requires_grad for p in seg.model.parameters())


def test_logits_have_original_size_and_presence_is_a_probability(seg):
    pred = seg.predict("img", "red box")
    assert isinstance(pred, Sam3Prediction)
    assert pred.logits.shape == (H, W) and pred.logits.dtype == np.float32
    assert np.isfinite(pred.logits).all()
    assert isinstance(pred.presence, float) and 0.0 <= pred.presence <= 1.0
    mask = seg.predict_mask("img", "red box")
    assert mask.dtype == bool and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, pred.logits > 0)
    np.testing.assert_array_equal(seg.predict("img", "red box").logits, pred.logits)  # deterministic


def test_logits_are_semantic_seg_upsampled_bilinearly(seg):
    """The plain-SAM-3 path equals Sam3Model run end to end on the processor's inputs."""
    import torch.nn.functional as F

    inputs = seg.processor(images=_image(), text="red box", return_tensors="pt")
    with torch.no_grad():
        out = seg.model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"])
    ref = F.interpolate(out.semantic_seg, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    pred = seg.predict("img", "red box")
    np.testing.assert_allclose(pred.logits, ref.numpy(), atol=1e-5)
    assert pred.presence == pytest.approx(out.presence_logits.sigmoid().item(), abs=1e-6)
    best = out.pred_logits.sigmoid().max().item()  # the best instance, scored as transformers' post-processing
    assert pred.score == pytest.approx(best * pred.presence, abs=1e-6) and 0.0 <= pred.score <= pred.presence


def test_concept_tokens_change_logits_and_presence(seg):
    plain = seg.predict("img", "red box")
    with_tokens = seg.predict("img", "red box", _tokens(1))
    assert with_tokens.logits.shape == (H, W)
    assert np.abs(with_tokens.logits - plain.logits).max() > 1e-5
    assert abs(with_tokens.presence - plain.presence) > 1e-6
    batched = seg.predict("img", "red box", _tokens(1)[None])
    np.testing.assert_array_equal(batched.logits, with_tokens.logits)
    other = seg.predict("img", "red box", _tokens(2))
    assert np.abs(other.logits - with_tokens.logits).max() > 1e-5
    assert seg.predict("img", "", _tokens(1)).logits.shape == (H, W)  # tokens with no text


def test_tokens_after_the_padding_act_as_if_right_after_the_text(seg):
    """The text stays padded to 32 and the tokens follow the padding (mask: words, pad, ones).
    SAM 3 reads prompts through a key-padding mask only, so this equals the contiguous layout
    (words, tokens, pad) that transformers' own concat_padded_sequences builds."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.sam3.modeling_sam3 import concat_padded_sequences

    feats, mask = seg.text_features("red box")
    tokens = _tokens(4)[None]
    seq, seq_mask = concat_padded_sequences(feats, mask, tokens, torch.ones(1, 8, dtype=torch.bool))
    with torch.no_grad():
        out = seg.model(vision_embeds=seg._cache["img"]["vision"],
                        text_embeds=BaseModelOutputWithPooling(pooler_output=seq), attention_mask=seq_mask)
    ref = torch.nn.functional.interpolate(out.semantic_seg, size=(H, W), mode="bilinear")[0, 0]
    pred = seg.predict("img", "red box", tokens)
    np.testing.assert_allclose(pred.logits, ref.numpy(), atol=1e-5)
    assert pred.presence == pytest.approx(out.presence_logits.sigmoid().item(), abs=1e-6)


def test_predict_with_grad_backpropagates_into_tokens_only(seg):
    tokens = _tokens(3).requires_grad_(True)
    out = seg.predict_with_grad("img", "red box", tokens)
    assert out.logits.shape == (H, W) and out.logits.dtype == torch.float32
    assert out.presence.shape == () and out.logits.requires_grad
    (out.logits.mean() + out.presence).backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.model.parameters())
    np.testing.assert_allclose(out.logits.detach().numpy(),
                               seg.predict("img", "red box", tokens.detach()).logits, atol=1e-6)


def test_long_text_is_truncated_to_the_text_encoder(seg):
    # Sam3Processor pads to 32 but does not truncate; 60 words would overflow CLIP's 32 positions.
    pred = seg.predict("img", "word " * 60)
    assert pred.logits.shape == (H, W)


# ---- cache and bad input ----------------------------------------------------------------


def test_second_embed_of_the_same_key_is_a_cache_hit(tiny_dir, seg):
    s = Sam3Segmenter.from_model(seg.model, seg.processor, Sam3SegmenterConfig(path=tiny_dir, cache_size=2))
    s.embed(_image(1), "a")
    assert s.cache_info() == {"hits": 0, "misses": 1, "size": 1, "maxsize": 2}
    s.embed(_image(1), "a")
    assert s.cache_info()["hits"] == 1 and s.cache_info()["misses"] == 1
    s.embed(_image(2), "b")
    s.embed(_image(3), "c")  # evicts "a", the least recently used
    assert s.cache_info()["size"] == 2
    with pytest.raises(RuntimeError, match="embed"):
        s.predict("a", "cat")
    s.embed(_image(4, h=30, w=30), "b")  # same key, another size: recomputed
    assert s.cache_info()["misses"] == 4


def test_predict_before_embed_names_embed(seg):
    with pytest.raises(RuntimeError, match=r"embed\(image, 'never'\)"):
        seg.predict("never", "cat")


def test_bad_inputs_are_rejected(seg):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        seg.embed(np.zeros((H, W), np.uint8), "gray")
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        seg.embed(np.zeros((H, W, 3), np.float32), "float")
    with pytest.raises(ValueError, match=r"\(N, 256\)"):
        seg.predict("img", "cat", torch.zeros(8, 128))
    with pytest.raises(ValueError, match=r"N >= 1"):
        seg.predict("img", "cat", torch.zeros(0, 256))
    with pytest.raises(TypeError, match="torch.Tensor"):
        seg.predict("img", "cat", np.zeros((8, 256), np.float32))
    with pytest.raises(TypeError, match="str"):
        seg.predict("img", None)


# ---- the text shortcut (method.md §3.2) ---------------------------------------------------


@pytest.mark.parametrize("n, tau", [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6)])
def test_tau_doubles_per_word(n, tau):
    assert shortcut_threshold(" ".join(["w"] * n)) == pytest.approx(tau)


def test_parenthesised_text_is_not_counted():
    assert shortcut_word_count("traffic cone (orange, small)") == 2
    assert shortcut_threshold("traffic cone (orange, small)") == pytest.approx(0.2)
    assert shortcut_word_count("cat (a (nested) note) here") == 2
    assert shortcut_word_count("  red\tcar \n") == 2
    assert shortcut_word_count("cat (unbalanced") == 2
    # No words at all: no concept for plain SAM 3 to ground, so never a shortcut.
    assert shortcut_threshold("") == math.inf and shortcut_threshold("(only this)") == math.inf
    assert not text_shortcut("(only this)", 1.0)


def test_shortcut_decisions():
    assert text_shortcut("cat", 0.15)
    assert not text_shortcut("black cat", 0.15)
    assert not text_shortcut("a cat on the mat", 1.0)  # 5 words: τ = 1.6, never
    assert not text_shortcut("cat", 0.1)  # strict: presence must exceed τ
    assert text_shortcut("cat (feline)", 0.15)
    assert not text_shortcut("cat", float("nan"))


def test_try_shortcut_runs_plain_sam3_only_when_tau_below_one(seg, monkeypatch):
    calls = []

    def fake_predict(key, text, concept_tokens=None):
        calls.append((key, text, concept_tokens))
        return Sam3Prediction(np.zeros((H, W), np.float32), 0.15)

    monkeypatch.setattr(seg, "predict", fake_predict)
    one = seg.try_shortcut("img", "cat")
    assert one.taken and one.prediction is not None and one.threshold == pytest.approx(0.1)
    two = seg.try_shortcut("img", "black cat")
    assert not two.taken and two.prediction is None and two.presence == pytest.approx(0.15)
    assert calls == [("img", "cat", None), ("img", "black cat", None)]
    five = seg.try_shortcut("img", "a cat on the mat")
    assert not five.taken and five.presence is None and "τ = 1.6" in five.reason
    assert len(calls) == 2  # SAM 3 was not run for the 5-word query


# ---- saving, loading, configs -------------------------------------------------------------


def test_save_and_load_reproduce_logits(seg, tmp_path):
    out = seg.save(str(tmp_path / "saved"))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    again = Sam3Segmenter.from_config(Sam3SegmenterConfig(path=out, device="cpu"))
    again.embed(_image(), "img")
    tokens = _tokens(5)
    a, b = seg.predict("img", "red box", tokens), again.predict("img", "red box", tokens)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.presence == b.presence


def test_image_size_override_resizes_model_and_processor(tiny_dir, tmp_path):
    s = Sam3Segmenter.from_config(Sam3SegmenterConfig(path=tiny_dir, image_size=84, device="cpu"))
    assert s.image_size == 84 and s.processor.image_processor.size.height == 84
    s.embed(_image(), "img")
    assert s.predict("img", "cat", _tokens(1)).logits.shape == (H, W)
    again = Sam3Segmenter.from_config(Sam3SegmenterConfig(path=s.save(str(tmp_path / "s84")), device="cpu"))
    assert again.image_size == 84
    with pytest.raises(ValueError, match="multiple of the SAM 3 patch size 14"):
        Sam3Segmenter.from_config(Sam3SegmenterConfig(path=tiny_dir, image_size=100))


def test_missing_directory_is_named(tmp_path):
    missing = str(tmp_path / "no_such_sam3")
    with pytest.raises(CheckpointError, match="no_such_sam3") as err:
        Sam3Segmenter.from_config(Sam3SegmenterConfig(path=missing))
    assert isinstance(err.value, ConceptSegError) and "save_pretrained" in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        Sam3Segmenter.from_config(Sam3SegmenterConfig(path="./relative/no_such_dir"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        Sam3Segmenter.from_config(Sam3SegmenterConfig(path=str(empty)))
    with pytest.raises(CheckpointError, match="owner-x/no-such-sam3"):  # a hub id, offline in tests
        Sam3Segmenter.from_config(Sam3SegmenterConfig(path="owner-x/no-such-sam3"))
    with pytest.raises(CheckpointError, match="model directory not found"):  # a newline after it: no hub id
        Sam3Segmenter.from_config(Sam3SegmenterConfig(path="owner-x/no-such-sam3\n"))


def test_weights_that_do_not_match_list_the_keys(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = str(tmp_path / "broken")
    shutil.copytree(tiny_dir, broken)
    sd = load_file(os.path.join(broken, "model.safetensors"))
    dropped = next(k for k in sd if "presence_head" in k)
    del sd[dropped]
    sd["not_a_sam3.weight"] = torch.zeros(2)
    save_file(sd, os.path.join(broken, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="Missing keys") as err:
        Sam3Segmenter.from_config(Sam3SegmenterConfig(path=broken, device="cpu"))
    assert "presence_head" in str(err.value) and "not_a_sam3.weight" in str(err.value)


def test_config_round_trip_and_validation():
    c = Sam3SegmenterConfig(path="facebook/sam3", image_size=1008, cache_size=4, device="cpu")
    assert Sam3SegmenterConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="Unknown"):
        Sam3SegmenterConfig.from_dict({"path": "x/y", "checkpoint": "z"})
    with pytest.raises(ValueError, match="image_size"):
        Sam3SegmenterConfig(image_size=0)
    with pytest.raises(ValueError, match="cache_size"):
        Sam3SegmenterConfig(cache_size=0)
    with pytest.raises(ValueError, match="path"):
        Sam3SegmenterConfig(path="")
