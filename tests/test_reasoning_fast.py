"""Issue 15: the reasoning-fast route induces the rule once and asks each target for a box and a name only."""

import dataclasses

import numpy as np
import pytest

from conceptseg.model.checkpoint import load_bundle
from conceptseg.errors import ConceptSegError
from conceptseg.runs.jobs import segment_by_demonstration
from conceptseg.model.prompts import CompletionParseError, build_fast_prompt, parse_answer
from conceptseg.routes.router import make_router
from conceptseg.routes.reasoning import ReasoningRoute
from conceptseg.routes.reasoning_fast import ReasoningFastRoute, RuleInductionError
from conceptseg.testing import ScriptedPolicy
from conceptseg.types import Demonstration

FULL = ("<think>bright round blobs on a dark ground, one per box</think><rule>nuclei are bright ovals</rule>"
        "<check>[0, 0, 299, 299]</check><bbox>[150, 300, 449, 599]</bbox><answer>nucleus</answer>")
FAST = "<bbox>[120, 100, 400, 380]</bbox><answer>nucleus</answer>"


def _policy_answering(policy, fast=FAST):
    """A full answer to a full episode, a short one to the rule-reuse prompt (which says 'Do not reason')."""
    return ScriptedPolicy(policy, lambda request: fast if "Do not reason" in request.text else FULL)


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir):
    loaded = load_bundle(tiny_bundle_dir)
    return dataclasses.replace(loaded, policy=_policy_answering(loaded.policy))


def _demos(tiles, indices=(0, 5, 10)):
    return [Demonstration(tiles[i][1], tiles[i][2], tiles[i][0]) for i in indices]


class TestPrompt:
    def test_states_the_rule_and_asks_for_box_and_answer_only(self):
        text = build_fast_prompt("nucleus", "nuclei are bright ovals", [(300, 0, 350, 40)])
        assert "nuclei are bright ovals" in text and "[[300, 0, 350, 40]]" in text
        assert text.rstrip().endswith("<bbox>[x1, y1, x2, y2]</bbox> <answer>noun phrase</answer>")
        assert "<think>" not in text and "<check>" not in text

    def test_parses_only_the_short_form(self):
        parsed = parse_answer(FAST + "<|im_end|>")
        assert parsed.bbox == (120, 100, 400, 380) and parsed.answer == "nucleus"
        for bad in (FULL, "<answer>x</answer><bbox>[1, 1, 2, 2]</bbox>", "sure: " + FAST, "<bbox>[1, 2]</bbox><answer>x</answer>"):
            with pytest.raises(CompletionParseError):
                parse_answer(bad)


class TestRoute:
    def test_the_rule_is_induced_once_and_reused_on_every_target(self, bundle, nuclei_tiles):
        route = ReasoningFastRoute(bundle)
        route.fit(_demos(nuclei_tiles))
        assert route.rule() == "nuclei are bright ovals"
        outcomes = route.segment_batch([nuclei_tiles[i][1] for i in (1, 2, 3)])
        full = ReasoningRoute(bundle)
        full.fit(_demos(nuclei_tiles))
        _, full_details = full.segment_with_details(nuclei_tiles[1][1])
        for probability, details in outcomes:
            assert details["rule"] == "nuclei are bright ovals" and details["answer"] == "nucleus"
            assert details["box"] is not None and details["parse_error"] is None
            assert 0 < details["decoded_tokens"] < full_details["decoded_tokens"] / 2
            assert probability.shape == nuclei_tiles[1][1].shape[:2]
        assert route.induction["decoded_tokens"] == full_details["decoded_tokens"]

    def test_the_doubt_checks_the_inducing_episode_and_looks_at_each_target(self, bundle, nuclei_tiles):
        from conceptseg.model.episode import build_episode
        from conceptseg.model.prompts import box_iou

        demos = _demos(nuclei_tiles)
        route = ReasoningFastRoute(bundle)
        route.fit(demos)
        induced = box_iou((0, 0, 299, 299), build_episode(demos, demos[0].image).proxy_box)
        assert route.induction["check_iou"] == pytest.approx(induced)
        outcomes = route.segment_batch([nuclei_tiles[i][1] for i in (1, 2)])
        for _, details in outcomes:  # the check is the induction's; the other terms are the target's
            assert set(details["doubt_terms"]) == {"check", "segmenter", "box", "boundary"}
            assert details["doubt_terms"]["check"] == pytest.approx(1.0 - induced)
        assert outcomes[0][1]["doubt"] != outcomes[1][1]["doubt"]
        route.refit(demos, "nuclei are bright ovals")  # a worker's recorded rule: no episode, no check
        assert set(route.segment_with_details(nuclei_tiles[1][1])[1]["doubt_terms"]) == {"segmenter", "box", "boundary"}

    def test_verifies_on_a_demonstration_it_never_saw(self, bundle, nuclei_tiles):
        demos = _demos(nuclei_tiles)
        route = ReasoningFastRoute(bundle)
        scores = route.verify(demos)
        assert list(scores) == [demos[0].id] and 0.0 <= scores[demos[0].id] <= 1.0
        # the rule was induced from the others: their mosaic, with demonstration 1 as its withheld tile
        assert [d.id for d in route._demonstrations] == [d.id for d in demos[1:]]

    def test_a_policy_without_a_rule_leaves_the_route_unavailable(self, tiny_bundle_dir, nuclei_tiles):
        loaded = load_bundle(tiny_bundle_dir)
        silent = dataclasses.replace(loaded, policy=ScriptedPolicy(loaded.policy, "I see a round thing."))
        route = ReasoningFastRoute(silent)
        assert route.verify(_demos(nuclei_tiles)) == {}
        with pytest.raises(RuleInductionError, match="no parseable rule.*use the reasoning route"):
            route.fit(_demos(nuclei_tiles))

    def test_a_short_answer_that_does_not_parse_still_gives_a_mask_and_says_why(self, tiny_bundle_dir, nuclei_tiles):
        loaded = load_bundle(tiny_bundle_dir)
        chatty = dataclasses.replace(loaded, policy=_policy_answering(loaded.policy, fast="It is at the top."))
        route = ReasoningFastRoute(chatty)
        route.fit(_demos(nuclei_tiles))
        probability, details = route.segment_with_details(nuclei_tiles[1][1])
        assert "rule-reuse answer" in details["parse_error"] and details["box"] is None
        assert probability.shape == nuclei_tiles[1][1].shape[:2]

    def test_auto_tries_it_after_the_prototype_and_before_full_reasoning(self, bundle):
        names = [r.name for r in make_router("auto", bundle=bundle).routes]
        assert names.index("prototype") < names.index("reasoning-fast") < names.index("reasoning")


class TestRun:
    def test_labels_record_the_reused_rule_and_their_tokens(self, nuclei_dataset, bundle):
        ds = nuclei_dataset
        summary = segment_by_demonstration(ds.match_tags("demo"), ds.match_tags("demo", bool=False), "ground_truth",
                                           "fast", route="reasoning-fast", model=bundle, instances=False, batch_size=4)
        assert summary["route"] == "reasoning-fast" and summary["rule"] == "nuclei are bright ovals"
        labels = ds.match_tags("demo", bool=False).values("fast")
        assert len(labels) == summary["segmented"] > 0
        assert {label.rule for label in labels} == {"nuclei are bright ovals"}
        assert all(isinstance(label.decoded_tokens, int) and label.decoded_tokens > 0 for label in labels)
        assert len({label.decoded_tokens for label in labels}) == 1  # the same short answer everywhere

    def test_forced_without_a_rule_is_a_clear_error_and_writes_nothing(self, nuclei_dataset, tiny_bundle_dir):
        loaded = load_bundle(tiny_bundle_dir)
        silent = dataclasses.replace(loaded, policy=ScriptedPolicy(loaded.policy, "I see a round thing."))
        ds = nuclei_dataset
        with pytest.raises(ConceptSegError, match="no parseable rule"):
            segment_by_demonstration(ds.match_tags("demo"), ds.match_tags("demo", bool=False), "ground_truth",
                                     "fast", route="reasoning-fast", model=silent)
        assert not ds.has_field("fast")


class TestSharded:
    def test_workers_reuse_the_recorded_rule_and_batch(self, plugin_installed, nuclei_dataset, tiny_bundle_dir):
        from fiftyone.operators.delegated import DelegatedOperationService

        from conceptseg.runs.shards import queue as shards
        from conceptseg.testing import scripted_bundle

        full_prompts = []

        def answer(request):
            if "Do not reason" in request.text:
                return FAST
            full_prompts.append(request.text)
            return FULL

        ds = nuclei_dataset
        ds.persistent = True  # the shard operations load it by name
        demos, targets = ds.match_tags("demo"), ds.match_tags("demo", bool=False)
        with scripted_bundle(tiny_bundle_dir, answer):
            queued = segment_by_demonstration(demos, targets, "ground_truth", "fast", route="reasoning-fast",
                                              model=tiny_bundle_dir, shards=2, batch_size=3, instances=False)
            inductions = len(full_prompts)  # verifying and fitting, on this machine
            results = DelegatedOperationService().execute_queued_operations(operator=shards.operator_uri(),
                                                                            dataset_name=ds.name)
        assert [r.error for r in results] == [None, None] and inductions == 2
        assert len(full_prompts) == inductions  # no worker induced a rule of its own
        labels = targets.values("fast")
        assert len(labels) == queued["targets"] and {l.rule for l in labels} == {"nuclei are bright ovals"}
        assert ds.get_run_info(queued["run_key"]).config.batch_size == 3
