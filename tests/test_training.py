"""Meta-GRPO training on tiny bundles: episodes, which weights each stage moves, bundles, resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conceptseg.model.checkpoint import load_bundle
from conceptseg.model.episode import TARGET_SIZE
from conceptseg.errors import ConceptSegError
from conceptseg.model.prompts import parse_completion
from conceptseg.training import stage1
from conceptseg.training.episodes import (
    EpisodeReport,
    TrainingSample,
    UnreadableSample,
    build_specs,
    in_memory,
    materialise,
)
from conceptseg.training.config import TrainConfig
from conceptseg.training.loop import latest_checkpoint, train
from conceptseg.training.procedural import generate


def _square(seed: int, size=(60, 80), box=(10, 20, 29, 49)):
    """An image with one bright rectangle (x1, y1, x2, y2 inclusive) and its mask."""
    rng = np.random.default_rng(seed)
    image = (rng.random((*size, 3)) * 50).astype(np.uint8)
    mask = np.zeros(size, bool)
    x1, y1, x2, y2 = box
    mask[y1 : y2 + 1, x1 : x2 + 1] = True
    image[mask] = (230, 30, 30)
    return image, mask


def _samples(concepts=("a", "b"), per=5, test=1):
    out = []
    for c, concept in enumerate(concepts):
        for k in range(per):
            image, mask = _square(10 * c + k)
            split = "test" if k >= per - test else "train"
            out.append(TrainingSample(f"{concept}{k}", concept, in_memory(image, mask), split=split))
    return out


class TestEpisodes:
    def test_one_episode_per_train_sample_with_demonstrations_of_its_own_concept(self):
        specs = build_specs(_samples(), "train")
        assert [s.target.id for s in specs] == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
        for spec in specs:
            demo_ids = [d.id for d in spec.demonstrations]
            assert len(demo_ids) == 3 and len(set(demo_ids)) == 3  # 3 other train samples, no repeats
            assert spec.target.id not in demo_ids
            assert {d.concept for d in spec.demonstrations} == {spec.target.concept}
            assert all(d.split == "train" for d in spec.demonstrations)

    def test_test_targets_draw_demonstrations_from_train(self):
        specs = build_specs(_samples(per=6, test=2), "test")
        assert [s.target.id for s in specs] == ["a4", "a5", "b4", "b5"]
        assert all(d.split == "train" and len(spec.demonstrations) == 4 for spec in specs for d in spec.demonstrations)

    def test_draw_is_fixed_by_seed(self):
        first = [[d.id for d in s.demonstrations] for s in build_specs(_samples(per=8), seed=3)]
        again = [[d.id for d in s.demonstrations] for s in build_specs(list(reversed(_samples(per=8))), seed=3)]
        other = [[d.id for d in s.demonstrations] for s in build_specs(_samples(per=8), seed=4)]
        assert sorted(first) == sorted(again)  # order of arrival does not change a target's draw
        assert first != other

    def test_concepts_with_fewer_than_two_samples_are_skipped_and_counted(self):
        samples = _samples() + [TrainingSample("lonely0", "lonely", in_memory(*_square(99)))]
        report = EpisodeReport()
        specs = build_specs(samples, report=report)
        assert "lonely" not in {s.target.concept for s in specs}
        assert report.skipped_concepts == {"lonely": 1}
        assert report.to_dict()["skipped_concepts"] == 1 and report.concepts == 2 and report.episodes == 8

    def test_materialised_episode_has_the_paper_geometry(self):
        spec = build_specs(_samples())[0]
        episode = materialise(spec)
        canvas, target = episode.images
        assert canvas.shape == target.shape == (TARGET_SIZE, TARGET_SIZE, 3)
        # A 60x80 image, rectangle x 10..29, y 20..49 → scaled by 600/80 and 600/60.
        assert episode.gt_box == (75, 200, 224, 499)
        assert episode.mask_600.sum() == 150 * 300
        assert episode.require_check and episode.proxy_box is not None
        assert "<check>" in episode.prompt and episode.target_image.shape == (60, 80, 3)

    def test_empty_target_mask_has_no_box(self):
        samples = _samples()
        image, _ = _square(0)
        samples[0] = TrainingSample("a0", "a", in_memory(image, np.zeros((60, 80), bool)))
        report = EpisodeReport()
        episode = materialise(build_specs(samples)[0], report)
        assert episode.gt_box is None and not episode.mask_600.any() and report.empty_targets == 1

    def test_unreadable_and_empty_demonstrations_are_left_out_and_counted(self):
        def broken():
            raise OSError("cannot read /nowhere.png")

        samples = _samples(per=5, test=0)
        samples[1] = TrainingSample("a1", "a", broken)
        image, _ = _square(2)
        samples[2] = TrainingSample("a2", "a", in_memory(image, np.zeros((60, 80), bool)))
        report = EpisodeReport()
        spec = build_specs(samples)[0]  # target a0, demonstrations a1..a4 in some order
        episode = materialise(spec, report)
        assert report.unreadable == ["a1"] and report.empty_demonstrations == ["a2"]
        assert episode is not None and episode.require_check  # two usable demonstrations remain
        with pytest.raises(UnreadableSample, match="nowhere"):
            samples[1].read()
        assert materialise(build_specs(samples)[1], report) is None  # the broken sample as target
        assert report.unreadable == ["a1", "a1"]

    def test_multi_image_tasks_get_a_mosaic_without_boxes_or_proxy(self):
        refs = [lambda k=k: _square(50 + k)[0] for k in range(3)]
        image, mask = _square(7)
        sample = TrainingSample("m0", "common object", in_memory(image, mask), references=refs,
                                question="the object all images share")
        specs = build_specs([sample])
        assert len(specs) == 1 and specs[0].demonstrations == []
        episode = materialise(specs[0])
        assert not episode.require_check and episode.proxy_box is None
        assert "the object all images share" in episode.prompt and "red boxes" not in episode.prompt
        assert episode.images[0].shape == (TARGET_SIZE, TARGET_SIZE, 3)


def test_teacher_response_parses_back_to_the_ground_truth():
    episode = materialise(build_specs(_samples())[0])
    parsed = parse_completion(stage1.teacher_response(episode), require_check=True)
    assert parsed.bbox == episode.gt_box and parsed.check == episode.proxy_box


def test_score_gives_the_log_probabilities_of_the_forced_response(tiny_bundle_dir):
    bundle = load_bundle(tiny_bundle_dir, device="cpu")
    policy = bundle.policy
    episode = materialise(build_specs(_samples())[0])
    from conceptseg.model.policy import PolicyRequest

    requests = [PolicyRequest(images=episode.images, text=episode.prompt)] * 2
    inputs, sequences, mask = policy.encode_with_response(requests, ["<think>x</think>", "<answer>a longer one</answer>"])
    tokenizer = policy.processor.tokenizer
    prompt_length = inputs["input_ids"].shape[1]
    assert tokenizer.decode(sequences[1, prompt_length:][mask[1]]) == "<answer>a longer one</answer><|im_end|>"
    assert mask[0].sum() < mask[1].sum()  # the shorter response is right-padded
    with torch.no_grad():
        logp, hidden = policy.score(inputs, sequences, mask)
        full = policy.model(input_ids=sequences, attention_mask=torch.cat([inputs["attention_mask"], mask.long()], 1),
                            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    expected = torch.log_softmax(full.logits[0, prompt_length - 1 : -1].float(), -1)
    token = sequences[0, prompt_length]
    assert logp.shape == mask.shape and hidden.shape[:2] == mask.shape
    assert torch.allclose(logp[0, 0], expected[0, token], atol=1e-4)


def _episode_specs(seed=0):
    items = generate(["red object", "circle", "striped object"], per_concept=4, size=96, seed=seed)
    samples = [TrainingSample(f"{i.concept}-{k}", i.concept, in_memory(i.image, i.mask)) for k, i in enumerate(items)]
    return build_specs(samples, seed=seed)


def _state(path):
    return {k: v.clone() for k, v in load_file(path).items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def stage1_run(tiny_bundle_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("stage1"))
    result = train(tiny_bundle_dir, _episode_specs(), out, TrainConfig(stage=1, steps=2, save_every=1))
    return out, result


def test_stage1_moves_the_translator_only(tiny_bundle_dir, stage1_run):
    out, result = stage1_run
    before = _state(os.path.join(tiny_bundle_dir, "translator.safetensors"))
    after = _state(os.path.join(out, "translator.safetensors"))
    assert _changed(before, after) == set(before)  # every translator tensor learned
    spec = json.load(open(os.path.join(out, "bundle.json")))
    # The policy is a copy of the input's files (the bundle is self-contained), untouched;
    # no adapter was trained.
    assert spec["policy"]["path"] == "policy" and spec["policy"]["adapter"] is None
    policy_before = load_file(os.path.join(tiny_bundle_dir, "policy", "model.safetensors"))
    assert not _changed(policy_before, load_file(os.path.join(out, "policy", "model.safetensors")))
    seg_before = load_file(os.path.join(tiny_bundle_dir, "segmenter", "sam2.safetensors"))
    seg_after = load_file(os.path.join(out, "segmenter", "sam2.safetensors"))
    assert not _changed(seg_before, seg_after)
    lines = [json.loads(line) for line in open(result.metrics_file)]
    assert [m["step"] for m in lines] == [1, 2] and all(m["mask_loss"] > 0 for m in lines)
    assert result.last["step"] == 2 and result.resumed_from is None


def test_stage1_gradients_reach_nothing_but_the_translator(tiny_bundle_dir):
    bundle = load_bundle(tiny_bundle_dir, device="cpu")
    from conceptseg.training.loop import StepContext, _trainable_policy

    config = TrainConfig(stage=1)
    model, _ = _trainable_policy(bundle, config)
    episodes = [materialise(s) for s in _episode_specs()[:2]]
    loss, _ = stage1.step(StepContext(bundle.policy, model, bundle.translator.train(), bundle.segmenter, config), episodes)
    loss.backward()
    assert all(p.grad is None for p in bundle.policy.model.parameters())
    assert all(p.grad is None for p in bundle.segmenter.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bundle.translator.parameters())


@pytest.fixture(scope="module")
def stage2_run(stage1_run, tmp_path_factory):
    stage1_out, _ = stage1_run
    out = str(tmp_path_factory.mktemp("stage2"))
    config = TrainConfig(stage=2, steps=2, group_size=2, max_new_tokens=12, save_every=1, learning_rate=1e-3)
    return stage1_out, out, train(stage1_out, _episode_specs(), out, config)


def test_stage2_moves_lora_adapters_and_translator_and_nothing_else(stage2_run):
    stage1_out, out, result = stage2_run
    spec = json.load(open(os.path.join(out, "bundle.json")))
    assert spec["policy"]["adapter"] == "adapter"
    adapter = load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(("lora_A" in k) or ("lora_B" in k) for k in adapter)
    assert any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means it learned
    translator_before = _state(os.path.join(stage1_out, "translator.safetensors"))
    assert _changed(translator_before, _state(os.path.join(out, "translator.safetensors")))
    # The base policy inside the trained bundle equals the input's policy weight for weight.
    trained = load_bundle(out, device="cpu")
    base = load_bundle(stage1_out, device="cpu").policy.model.state_dict()
    merged_names = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                    for k, v in trained.policy.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(merged_names[k], v) for k, v in base.items())
    lines = [json.loads(line) for line in open(result.metrics_file)]
    keys = {"reward", "reward_format", "reward_box", "reward_mask_iou", "kl", "clip_fraction", "mask_loss"}
    assert [m["step"] for m in lines] == [1, 2] and all(keys <= set(m) for m in lines)
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts equal to its reference
    assert all(0 <= m["reward_mask_iou"] <= 1 for m in lines)


def test_a_trained_bundle_segments(stage2_run):
    _, out, _ = stage2_run
    from conceptseg.routes.reasoning import ReasoningRoute
    from conceptseg.types import Demonstration

    items = generate(["red object"], per_concept=3, size=96, seed=5)
    route = ReasoningRoute(load_bundle(out, device="cpu"))
    route.fit([Demonstration(i.image.astype(np.float32) / 255, i.mask, str(k)) for k, i in enumerate(items[:2])])
    probability, details = route.segment_with_details(items[2].image.astype(np.float32) / 255)
    assert probability.shape == (96, 96) and np.isfinite(probability).all()
    assert "completion" in details


def _weights(out_dir):
    """Every tensor of a final bundle's own safetensors (translator, adapter or full policy)."""
    found = {}
    for root, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.startswith("step-")]
        for name in files:
            if name.endswith(".safetensors"):
                rel = os.path.relpath(os.path.join(root, name), out_dir)
                found.update({f"{rel}:{k}": v for k, v in _state(os.path.join(root, name)).items()})
    return found


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_continues_to_the_same_step_and_weights(tiny_bundle_dir, tmp_path, lora):
    config = dict(stage=2, group_size=2, max_new_tokens=8, save_every=1, learning_rate=1e-3, seed=1, lora=lora)
    straight = train(tiny_bundle_dir, _episode_specs(), str(tmp_path / "straight"), TrainConfig(steps=2, **config))
    train(tiny_bundle_dir, _episode_specs(), str(tmp_path / "resumed"), TrainConfig(steps=1, **config))
    # Pretend the run stopped after its step-1 checkpoint and before its final save.
    assert latest_checkpoint(str(tmp_path / "resumed")).endswith("step-000001")
    resumed = train(tiny_bundle_dir, _episode_specs(), str(tmp_path / "resumed"), TrainConfig(steps=2, **config))
    assert resumed.resumed_from == 1 and resumed.steps == 2
    lines = [json.loads(line) for line in open(resumed.metrics_file)]
    assert [m["step"] for m in lines] == [1, 2]
    reference = [json.loads(line) for line in open(straight.metrics_file)]
    assert lines[1]["targets"] == reference[1]["targets"]
    # the KL term at step 2 is against the input for both: a reference that had become the
    # step-1 checkpoint would give 0 here
    assert lines[1]["kl"] == pytest.approx(reference[1]["kl"], abs=1e-6) and reference[1]["kl"] > 0
    assert lines[1]["reward"] == pytest.approx(reference[1]["reward"], abs=1e-6)
    a, b = _weights(str(tmp_path / "straight")), _weights(str(tmp_path / "resumed"))
    assert set(a) == set(b) and any(("policy" if not lora else "adapter") in k for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"resume {'lora' if lora else 'full'}: max |straight - resumed| = {worst:.3g}")
    assert worst <= 1e-6, worst


def test_full_fine_tune_moves_every_policy_weight(tiny_bundle_dir, tmp_path):
    config = TrainConfig(stage=2, steps=1, group_size=2, max_new_tokens=8, lora=False, learning_rate=1e-3)
    train(tiny_bundle_dir, _episode_specs(), str(tmp_path), config)
    spec = json.load(open(tmp_path / "bundle.json"))
    assert spec["policy"]["path"] == "policy" and spec["policy"]["adapter"] is None
    before = load_file(os.path.join(tiny_bundle_dir, "policy", "model.safetensors"))
    after = load_file(str(tmp_path / "policy" / "model.safetensors"))
    moved = _changed(before, after)
    # Every tensor moves, the vision tower's too, as in the paper's stage 2 (method.md §1.4).
    assert moved == set(before) and any("layers.0.self_attn.q_proj.weight" in k for k in moved)
    assert load_bundle(str(tmp_path), device="cpu").policy is not None


def test_an_untied_policy_trains_and_keeps_its_own_output_head(tmp_path):
    from conceptseg.testing import build_tiny_bundle

    source = build_tiny_bundle(str(tmp_path / "in"), seed=1, tie_embeddings=False)
    config = TrainConfig(stage=2, steps=1, group_size=2, max_new_tokens=8, lora=False, learning_rate=1e-3)
    train(source, _episode_specs(), str(tmp_path / "out"), config)
    before = load_file(os.path.join(source, "policy", "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "policy" / "model.safetensors"))
    assert "lm_head.weight" in before and "lm_head.weight" in _changed(before, after)
    model = load_bundle(str(tmp_path / "out"), device="cpu").policy.model
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head.data_ptr() != embeddings.data_ptr()
    assert torch.equal(head, after["lm_head.weight"]) and not torch.equal(head, embeddings)


def test_bad_configuration_is_refused():
    with pytest.raises(ConceptSegError, match="stage must be 1"):
        TrainConfig(stage=3)
    with pytest.raises(ConceptSegError, match="group_size >= 2"):
        TrainConfig(stage=2, group_size=1)
    with pytest.raises(ConceptSegError, match="No training episodes"):
        train("unused", [], "unused", TrainConfig())


def test_gradient_checkpointing_gives_the_same_step(tiny_bundle_dir):
    from conceptseg.training import stage2
    from conceptseg.training.loop import StepContext, _trainable_policy, enable_checkpointing

    episodes = [materialise(s) for s in _episode_specs()[:1]]
    grads = []
    for checkpointing in (False, True):
        bundle = load_bundle(tiny_bundle_dir, device="cpu")
        bundle.policy.config.max_new_tokens = 8
        config = TrainConfig(stage=2, group_size=2, gradient_checkpointing=checkpointing)
        torch.manual_seed(0)  # same LoRA init and same rollouts in both runs
        model, _ = _trainable_policy(bundle, config)
        if checkpointing:
            enable_checkpointing(model)
        loss, _ = stage2.step(StepContext(bundle.policy, model, bundle.translator.train(), bundle.segmenter, config), episodes)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_B" in n for n in grads[0])
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


@pytest.mark.sam3
def test_both_stages_train_through_sam3(tmp_path):
    from conceptseg.testing import build_tiny_bundle

    bundle_dir = build_tiny_bundle(str(tmp_path / "sam3"), segmenter="sam3")
    stage1_out = train(bundle_dir, _episode_specs(), str(tmp_path / "s1"), TrainConfig(stage=1, steps=1))
    stage2_out = train(stage1_out.bundle, _episode_specs(), str(tmp_path / "s2"),
                       TrainConfig(stage=2, steps=1, group_size=2, max_new_tokens=8, learning_rate=1e-3))
    before = _state(os.path.join(bundle_dir, "translator.safetensors"))
    assert _changed(before, _state(os.path.join(stage1_out.bundle, "translator.safetensors"))) == set(before)
    assert json.load(open(os.path.join(stage2_out.bundle, "bundle.json")))["segmenter"]["kind"] == "sam3"
    assert stage1_out.last["mask_loss"] > 0 and 0 <= stage2_out.last["reward_mask_iou"] <= 1
    assert load_bundle(stage2_out.bundle, device="cpu").policy is not None
