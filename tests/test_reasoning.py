"""The reasoning route end to end on CPU with a tiny random bundle, loaded from disk."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from conceptseg.model.checkpoint import BundleError, load_bundle, save_bundle
from conceptseg.errors import ConceptSegError
from conceptseg.model.policy import PolicyRequest
from conceptseg.routes.router import make_router
from conceptseg.routes.reasoning import ReasoningRoute
from conceptseg.testing import ScriptedPolicy, scripted_bundle
from conceptseg.types import Demonstration

DEMO_INDICES = (0, 5, 10)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_dir):
    return load_bundle(tiny_bundle_dir)


def _demos(tiles, indices=DEMO_INDICES):
    return [Demonstration(tiles[i][1], tiles[i][2], tiles[i][0]) for i in indices]


UNPARSABLE = "I think it is the round thing."  # what a policy that ignores the format writes
PARSABLE = ("<think>bright round blobs</think><rule>nuclei are bright ovals</rule>"
            "<check>[0, 0, 299, 299]</check><bbox>[150, 300, 449, 599]</bbox><answer>nucleus</answer>")


def _scripted(bundle, text):
    return dataclasses.replace(bundle, policy=ScriptedPolicy(bundle.policy, text))


class TestBundleOnDisk:
    def test_layout_and_spec(self, tiny_bundle_dir):
        spec = json.load(open(os.path.join(tiny_bundle_dir, "bundle.json")))
        assert spec["format"] == "conceptseg-bundle" and spec["policy"]["path"] == "policy"
        assert spec["segmenter"]["config"]["checkpoint"] == os.path.join("segmenter", "sam2.safetensors")
        for name in ("policy/config.json", "policy/tokenizer.json", "translator.safetensors", "segmenter/sam2.safetensors"):
            assert os.path.isfile(os.path.join(tiny_bundle_dir, name)), name

    def test_real_qwen_tokenizer(self, tiny_bundle):
        tokenizer = tiny_bundle.policy.processor.tokenizer
        assert len(tokenizer) == 151669
        assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655

    def test_seeds_give_different_weights(self, tiny_bundle, tmp_path):
        from conceptseg import cli

        assert cli.main(["tiny-bundle", str(tmp_path / "seed1"), "--seed", "1"]) == 0
        other = load_bundle(str(tmp_path / "seed1"))
        a = tiny_bundle.translator.state_dict()["proj_to_sam.2.weight"]
        b = other.translator.state_dict()["proj_to_sam.2.weight"]
        assert not torch.equal(a, b)
        embed = lambda bundle: bundle.policy.model.get_input_embeddings().weight
        assert not torch.equal(embed(tiny_bundle), embed(other))

    def test_missing_translator_names_the_file(self, tiny_bundle_dir, tmp_path):
        broken = tmp_path / "broken"
        broken.mkdir()
        os.symlink(os.path.join(tiny_bundle_dir, "policy"), broken / "policy")
        spec = json.load(open(os.path.join(tiny_bundle_dir, "bundle.json")))
        json.dump(spec, open(broken / "bundle.json", "w"))
        with pytest.raises(BundleError, match="translator.safetensors"):
            load_bundle(str(broken))

    def test_bundle_json_names_its_prompt_template(self, tiny_bundle_dir, tmp_path):
        for name in ("policy", "translator.safetensors", "segmenter"):
            os.symlink(os.path.join(tiny_bundle_dir, name), tmp_path / name)
        spec = json.load(open(os.path.join(tiny_bundle_dir, "bundle.json")))
        json.dump({**spec, "prompt_template": "wording.txt"}, open(tmp_path / "bundle.json", "w"))
        (tmp_path / "wording.txt").write_text("Find {question}. {output_format}")
        assert load_bundle(str(tmp_path)).prompt_template.text == "Find {question}. {output_format}"

    def test_not_a_bundle(self, tmp_path):
        with pytest.raises(BundleError, match="tiny-bundle"):
            load_bundle(str(tmp_path))


class TestPolicy:
    def test_batched_left_padded_generation_with_hidden_states(self, tiny_bundle):
        policy = tiny_bundle.policy
        image = np.zeros((600, 600, 3), np.uint8)
        requests = [PolicyRequest([image, image], "short"), PolicyRequest([image, image], "a much longer question " * 5)]
        out = policy.generate(requests)
        assert len(out.completions) == 2
        inputs = policy.encode(requests)
        assert (inputs["attention_mask"][0, :5] == 0).all()  # the short prompt is padded on the left
        batch, length, width = out.hidden_states.shape
        assert batch == 2 and width == policy.hidden_size == 64
        assert out.completion_mask.shape == (2, length) and out.completion_mask.dtype == torch.bool
        assert out.sequences.shape[1] == out.prompt_length + length

    def test_sampled_rollouts_repeat_each_request(self, tiny_bundle):
        image = np.zeros((600, 600, 3), np.uint8)
        torch.manual_seed(0)
        out = tiny_bundle.policy.generate([PolicyRequest([image], "the animal")], sample=True, num_return_sequences=3)
        assert len(out.completions) == 3 and out.hidden_states.shape[0] == 3
        assert len(set(out.completions)) > 1  # sampling, not greedy

    def test_a_completion_without_its_end_token_at_the_budget_is_truncated(self):
        from conceptseg.model.policy import _truncated

        ids = torch.tensor([[5, 6, 9, 0], [5, 6, 7, 8]])
        assert _truncated(ids, eos=9, max_new_tokens=4) == [False, True]
        assert _truncated(ids[:, :3], eos=9, max_new_tokens=4) == [False, False]  # stopped early: all ended

    def test_completion_mask_stops_after_the_first_end_of_turn(self):
        from conceptseg.model.policy import _completion_mask

        ids = torch.tensor([[5, 6, 9, 0, 0], [5, 9, 6, 9, 0], [5, 6, 7, 8, 4]])
        expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        assert torch.equal(_completion_mask(ids, eos=9), expected)


class TestLoraAdapter:
    def test_bundle_with_adapter_loads_it_over_the_base(self, tiny_bundle, tiny_bundle_dir, tmp_path):
        from peft import LoraConfig, get_peft_model
        from transformers import Qwen2_5_VLForConditionalGeneration

        base_dir = os.path.join(tiny_bundle_dir, "policy")
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir)
        # random B (not peft's zero init) so the adapter visibly changes the policy
        lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        out = tmp_path / "with-adapter"
        lora.save_pretrained(str(out / "adapter"))
        assert os.path.isfile(out / "adapter" / "adapter_model.safetensors")
        save_bundle(str(out), base_dir, tiny_bundle.translator, tiny_bundle.segmenter, adapter_dir=str(out / "adapter"))
        spec = json.load(open(out / "bundle.json"))
        assert spec["policy"]["adapter"] == "adapter" and spec["policy"]["path"] == "policy"  # copied in

        adapted = load_bundle(str(out))
        from peft import PeftModel

        assert isinstance(adapted.policy.model, PeftModel)
        inputs = tiny_bundle.policy.encode([PolicyRequest([np.zeros((600, 600, 3), np.uint8)], "the animal")])
        with torch.no_grad():
            a = tiny_bundle.policy.model(**inputs).logits
            b = adapted.policy.model(**inputs).logits
        assert not torch.allclose(a, b)


class TestReasoningRoute:
    def test_malformed_completion_still_gives_a_mask_from_tokens(self, tiny_bundle, nuclei_tiles):
        route = ReasoningRoute(_scripted(tiny_bundle, UNPARSABLE))
        route.fit(_demos(nuclei_tiles))
        probability, details = route.segment_with_details(nuclei_tiles[1][1])
        assert probability.shape == (128, 128) and probability.dtype == np.float32
        assert np.isfinite(probability).all() and 0 <= probability.min() <= probability.max() <= 1
        assert details["parse_error"] and details["box"] is None and details["answer"] is None
        assert details["completion"] == UNPARSABLE

    def test_parsed_box_is_mapped_to_the_image_and_prompts_the_segmenter(self, tiny_bundle, nuclei_tiles):
        route = ReasoningRoute(_scripted(tiny_bundle, PARSABLE))
        route.fit(_demos(nuclei_tiles))
        image = nuclei_tiles[1][1]
        with_box, details = route.segment_with_details(image)
        assert details["parse_error"] is None and details["answer"] == "nucleus"
        assert details["rule"] == "nuclei are bright ovals"
        assert details["box"] == [32, 64, 95, 127]  # 600² box → 128² tile: ×128/600 by pixel edges
        plain = ReasoningRoute(_scripted(tiny_bundle, UNPARSABLE))
        plain.fit(_demos(nuclei_tiles))
        assert not np.allclose(with_box, plain.segment(image))

    def test_truncated_completion_is_recorded_as_such(self, tiny_bundle, nuclei_tiles):
        cut = PARSABLE[:60]  # reasoning cut before its box and answer
        route = ReasoningRoute(dataclasses.replace(tiny_bundle, policy=ScriptedPolicy(tiny_bundle.policy, cut, truncated=True)))
        route.fit(_demos(nuclei_tiles))
        _, details = route.segment_with_details(nuclei_tiles[1][1])
        assert details["truncated"] is True and details["parse_error"].startswith("cut at 32 tokens (max_new_tokens)")

    def test_a_prompt_template_replaces_the_wording(self, tiny_bundle, nuclei_tiles):
        from conceptseg.model.templates import PromptTemplate
        from conceptseg.routes.reasoning import ReasoningConfig

        seen = []

        class Recording(ScriptedPolicy):
            def generate(self, requests, **kwargs):
                seen.extend(r.text for r in requests)
                return super().generate(requests, **kwargs)

        template = PromptTemplate("Find {question}. Boxes: {reference_boxes}.{check} Reply as {output_format}")
        bundle = dataclasses.replace(tiny_bundle, policy=Recording(tiny_bundle.policy, PARSABLE))
        route = ReasoningRoute(bundle, ReasoningConfig(question="nucleus", prompt_template=template))
        route.fit(_demos(nuclei_tiles))
        route.segment(nuclei_tiles[1][1])
        assert seen[0].startswith("Find nucleus. Boxes: [[") and "<check>" in seen[0]

    def test_verification_is_the_check_iou(self, tiny_bundle, nuclei_tiles):
        text = ("<think>t</think><rule>r</rule><check>[0, 0, 299, 299]</check>"
                "<bbox>[0, 0, 599, 599]</bbox><answer>a</answer>")
        scripted = _scripted(tiny_bundle, text)
        demos = _demos(nuclei_tiles)
        scores = ReasoningRoute(scripted).verify(demos)
        from conceptseg.model.episode import build_episode
        from conceptseg.model.prompts import box_iou

        proxy = build_episode(demos, demos[0].image).proxy_box
        assert scores == {demos[0].id: pytest.approx(box_iou((0, 0, 299, 299), proxy))}
        assert 0 < scores[demos[0].id] < 1

    def test_unparsable_check_verifies_at_zero_and_one_demo_is_unavailable(self, tiny_bundle, nuclei_tiles):
        route = ReasoningRoute(_scripted(tiny_bundle, UNPARSABLE))
        assert route.verify(_demos(nuclei_tiles)) == {nuclei_tiles[0][0]: 0.0}
        assert route.verify(_demos(nuclei_tiles, (0,))) == {}

    def test_second_concept_on_the_same_image_hits_the_embedding_cache(self, tiny_bundle, nuclei_tiles):
        image = nuclei_tiles[7][1]
        first, second = ReasoningRoute(tiny_bundle), ReasoningRoute(tiny_bundle)
        first.fit(_demos(nuclei_tiles))
        second.fit(_demos(nuclei_tiles, (2, 3)))
        first.segment(image)
        before = tiny_bundle.segmenter.cache_info()
        second.segment(image)
        after = tiny_bundle.segmenter.cache_info()
        assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]

    @pytest.mark.parametrize("text", [PARSABLE, UNPARSABLE], ids=["box", "tokens-only"])
    def test_nan_weights_are_a_recorded_failure(self, tiny_bundle_dir, nuclei_tiles, text):
        bundle = load_bundle(tiny_bundle_dir)
        with torch.no_grad():
            next(bundle.segmenter.model.sam_mask_decoder.parameters()).fill_(float("nan"))
        router = make_router("reasoning", bundle=_scripted(bundle, text))
        choice = router.choose(_demos(nuclei_tiles))
        from conceptseg.types import Target

        result = next(router.segment(choice, [Target(nuclei_tiles[1][1], "t")]))
        assert result.mask is None and "NaN" in result.error
        assert "sam_mask_decoder.transformer.layers.0.self_attn.q_proj.weight" in result.error

    def test_weights_are_checked_again_after_they_change(self):
        from conceptseg.segmenters.cache import FiniteWeights, NonFiniteError

        layer = torch.nn.Linear(4, 4)
        guard = FiniteWeights(layer)
        guard.check()
        with torch.no_grad():
            layer.weight[0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match="NaN or infinite.*weight"):
            guard.check()

    def test_nan_concept_tokens_are_a_recorded_failure(self, tiny_bundle_dir, nuclei_tiles):
        bundle = load_bundle(tiny_bundle_dir)
        with torch.no_grad():
            bundle.translator.proj_to_sam[2].bias.fill_(float("nan"))
        route = ReasoningRoute(_scripted(bundle, PARSABLE))
        route.fit(_demos(nuclei_tiles))
        with pytest.raises(ConceptSegError, match="concept translator returned NaN"):
            route.segment(nuclei_tiles[1][1])


class TestRouterWithBundle:
    def test_auto_takes_the_cheaper_verified_route(self, tiny_bundle, nuclei_tiles):
        choice = make_router("auto", bundle=tiny_bundle).choose(_demos(nuclei_tiles))
        assert choice.route.name == "appearance" and choice.verified
        assert [v.route for v in choice.verifications] == ["appearance"]  # reasoning not needed

    def test_when_nothing_passes_the_best_verified_route_runs(self, tiny_bundle, nuclei_tiles):
        choice = make_router("auto", threshold=0.99, bundle=tiny_bundle).choose(_demos(nuclei_tiles))
        assert [v.route for v in choice.verifications] == ["appearance", "object", "prototype", "reasoning-fast",
                                                           "reasoning"]
        best = max((v for v in choice.verifications if v.score is not None), key=lambda v: v.score)
        assert choice.route.name == best.route and not choice.verified

    def test_reasoning_without_model_is_refused(self):
        with pytest.raises(ConceptSegError, match="needs a model"):
            make_router("reasoning")

    def test_prototype_needs_a_sam2_bundle(self, tiny_bundle):
        with pytest.raises(ConceptSegError, match="SAM 2 segmenter"):
            make_router("prototype")
        assert make_router("prototype", bundle=tiny_bundle).routes[0].name == "prototype"


class TestThroughTheCliAndOperators:
    def test_segment_with_the_reasoning_route(self, tiny_bundle_dir, nuclei_dataset, capsys):
        from conceptseg import cli

        nuclei_dataset.persistent = True
        with scripted_bundle(tiny_bundle_dir, UNPARSABLE):
            code = cli.main(["segment", "--dataset", nuclei_dataset.name, "--demo-tag", "demo", "--view", "nuclei",
                             "--mask-field", "ground_truth", "--pred-field", "rp", "--route", "reasoning",
                             "--model", tiny_bundle_dir, "--json"])
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["route"] == "reasoning" and summary["segmented"] == 13
        assert summary["verification"] == 0.0 and summary["verified"] is False
        label = nuclei_dataset.load_saved_view("nuclei").exists("rp").first().rp
        assert label.route == "reasoning" and label.parse_error and label.answer is None
        assert label.truncated is False and label.shortcut is None  # SAM 2: no shortcut to take
        assert label.get_mask().shape == (128, 128)
        assert nuclei_dataset.get_run_info("conceptseg_rp").config.model == tiny_bundle_dir

    def test_a_bad_prompt_template_is_refused_before_any_work(self, tiny_bundle_dir, nuclei_dataset, tmp_path, capsys):
        from conceptseg import cli

        bad = tmp_path / "wording.txt"
        bad.write_text("Find {question}.")
        code = cli.main(["query", "--dataset", nuclei_dataset.name, "--text", "the animal", "--pred-field", "qt",
                         "--model", tiny_bundle_dir, "--prompt-template", str(bad)])
        assert code != 0 and "{output_format}" in capsys.readouterr().err
        assert not nuclei_dataset.has_field("qt")

    def test_query_command(self, tiny_bundle_dir, nuclei_dataset, capsys):
        from conceptseg import cli

        quokka = nuclei_dataset.match({"concept": "animal"})
        nuclei_dataset.save_view("animal", quokka)
        code = cli.main(["query", "--dataset", nuclei_dataset.name, "--view", "animal", "--text", "the animal",
                         "--pred-field", "qp", "--model", tiny_bundle_dir, "--json"])
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["route"] == "reasoning" and summary["segmented"] == 1 and summary["verification"] is None
        label = quokka.first().qp
        assert label.get_mask().shape == (643, 960) and label.route == "reasoning"
        assert nuclei_dataset.mask_targets["qp"] == {1: "the animal"}

    def test_empty_query_and_missing_model(self, nuclei_dataset):
        from conceptseg.runs.jobs import segment_by_query

        with pytest.raises(ConceptSegError, match="query is empty"):
            segment_by_query(nuclei_dataset, "  ", "qp", None)
        with pytest.raises(ConceptSegError, match="need a model"):
            segment_by_query(nuclei_dataset, "the animal", "qp", None)

    def test_missing_bundle_directory_names_what_to_do(self, nuclei_dataset, tmp_path):
        from conceptseg.runs.jobs import segment_by_query

        with pytest.raises(BundleError, match="tiny-bundle"):
            segment_by_query(nuclei_dataset, "the animal", "qp", str(tmp_path))

    def test_segment_by_query_operator(self, plugin_installed, tiny_bundle_dir, nuclei_dataset):
        import fiftyone.operators as foo

        quokka = nuclei_dataset.match({"concept": "animal"})
        result = foo.execute_operator(
            "@conceptseg/conceptseg-r1/segment_by_query", dataset=nuclei_dataset, view=quokka,
            params=dict(text="the animal", model=tiny_bundle_dir, pred_field="op_q", view_target="CURRENT_VIEW"),
        )
        assert result.error is None and result.result["segmented"] == 1
        assert quokka.first().op_q.route == "reasoning"


@pytest.fixture(scope="module")
def sam3_bundle(tmp_path_factory):
    """A tiny bundle on SAM 3, for TestSam3Bundle (skipped, so never built, without SAM 3)."""
    from conceptseg.testing import build_tiny_bundle

    return load_bundle(build_tiny_bundle(str(tmp_path_factory.mktemp("sam3")), segmenter="sam3"))


@pytest.mark.sam3
class TestSam3Bundle:
    def test_bundle_round_trip_keeps_sam3(self, sam3_bundle):
        assert sam3_bundle.spec["segmenter"]["kind"] == "sam3"
        assert type(sam3_bundle.segmenter).__name__ == "Sam3Segmenter"

    def test_long_query_never_takes_the_shortcut(self, sam3_bundle, nuclei_tiles):
        from conceptseg.routes.reasoning import ReasoningConfig

        route = ReasoningRoute(sam3_bundle, ReasoningConfig(question="the round bright thing in the middle"))
        route.fit([])
        probability, details = route.segment_with_details(nuclei_tiles[1][1])
        assert probability.shape == (128, 128)
        assert details["completion"] is not None  # the policy ran
        assert "τ = 6.4" in details["shortcut"]  # 7 words: 0.1·2^6

    def test_short_query_follows_the_presence_rule(self, sam3_bundle, nuclei_tiles):
        from conceptseg.routes.reasoning import ReasoningConfig
        from conceptseg.imaging import to_uint8

        image = nuclei_tiles[2][1]
        route = ReasoningRoute(sam3_bundle, ReasoningConfig(question="nucleus"))
        route.fit([])
        _, details = route.segment_with_details(image)
        from conceptseg.imaging import content_key

        decision = sam3_bundle.segmenter.try_shortcut(content_key(to_uint8(image)), "nucleus")
        assert decision.threshold == pytest.approx(0.1)
        if decision.taken:
            assert details["completion"] is None and details["answer"] == "nucleus"
        else:
            assert details["completion"] is not None and "≤ τ = 0.1" in details["shortcut"]

    def test_demonstrations_use_the_answer_phrase_and_tokens(self, sam3_bundle, nuclei_tiles):
        route = ReasoningRoute(sam3_bundle)
        route.fit(_demos(nuclei_tiles))
        probability, details = route.segment_with_details(nuclei_tiles[1][1])
        assert probability.shape == (128, 128) and np.isfinite(probability).all()
        assert details["shortcut_taken"] is False and "τ = 102.4" in details["shortcut"]  # 11-word default question

    @pytest.mark.parametrize("bias,taken", [(20.0, True), (-20.0, False)])
    def test_demonstration_episodes_take_the_shortcut_too(self, sam3_bundle, nuclei_tiles, bias, taken):
        import copy

        from conceptseg.routes.reasoning import ReasoningConfig

        segmenter = copy.deepcopy(sam3_bundle.segmenter)
        head = segmenter.model.detr_decoder.presence_head.layer3
        with torch.no_grad():  # presence = sigmoid(bias): certain, or certainly not
            head.weight.zero_()
            head.bias.fill_(bias)
        bundle = dataclasses.replace(sam3_bundle, segmenter=segmenter, policy=ScriptedPolicy(sam3_bundle.policy, PARSABLE))
        route = ReasoningRoute(bundle, ReasoningConfig(question="nucleus"))
        route.fit(_demos(nuclei_tiles))
        _, details = route.segment_with_details(nuclei_tiles[1][1])
        assert details["shortcut_taken"] is taken and (details["completion"] is None) is taken
        # SAM 3 alone: no policy box or check to weigh. Presence ~0 (SAM 3 clamps its logit at -10) scores
        # SAM 3's mask ~0: the segmenter doubt is ~1.
        assert set(details["doubt_terms"]) == ({"segmenter", "boundary"} if taken else
                                               {"check", "segmenter", "box", "boundary"})
        if not taken:
            assert details["doubt_terms"]["segmenter"] == pytest.approx(1.0, abs=1e-3)
        off = ReasoningRoute(bundle, ReasoningConfig(question="nucleus", shortcut=False))
        off.fit(_demos(nuclei_tiles))
        _, details = off.segment_with_details(nuclei_tiles[1][1])
        assert details["shortcut_taken"] is None and details["completion"] == PARSABLE

    def test_nan_weights_are_a_recorded_failure(self, sam3_bundle, nuclei_tiles):
        import copy

        broken = dataclasses.replace(sam3_bundle, segmenter=copy.deepcopy(sam3_bundle.segmenter))
        with torch.no_grad():
            next(broken.segmenter.model.mask_decoder.parameters()).fill_(float("nan"))
        router = make_router("reasoning", bundle=_scripted(broken, PARSABLE))
        from conceptseg.types import Target

        result = next(router.segment(router.choose(_demos(nuclei_tiles)), [Target(nuclei_tiles[1][1], "t")]))
        assert result.mask is None and "SAM 3 segmenter's weights hold NaN" in result.error
