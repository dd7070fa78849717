"""Issue 15: B targets per policy call, and the demonstrations' canvas encoded once per run.

The policy here is a tiny random Qwen2.5-VL with an untied output head: its greedy
completions differ from target to target (the tied one writes only newlines), so a batch
that mixed up its rows, or a reused prefix that shifted a position, would change them.
"""

import dataclasses

import numpy as np
import pytest
import torch

import fiftyone as fo

from conceptseg.model.checkpoint import load_bundle
from conceptseg.errors import ConceptSegError
from conceptseg.runs.jobs import segment_by_demonstration
from conceptseg.model.policy import PolicyRequest
from conceptseg.model.prefix import PrefixStore, reuse_supported
from conceptseg.routes.reasoning import ReasoningRoute
from conceptseg.testing import ScriptedPolicy, build_tiny_bundle
from conceptseg.types import Demonstration

DEMOS = (0, 5, 10)
TARGETS = (1, 2, 3, 4, 6)
PARSABLE = ("<think>bright blobs</think><rule>nuclei are bright ovals</rule>"
            "<check>[0, 0, 299, 299]</check><bbox>[150, 300, 449, 599]</bbox><answer>nucleus</answer>")


@pytest.fixture(scope="module")
def varied_bundle(tmp_path_factory):
    return load_bundle(build_tiny_bundle(str(tmp_path_factory.mktemp("untied")), seed=5, tie_embeddings=False))


def _demos(tiles):
    return [Demonstration(tiles[i][1], tiles[i][2], tiles[i][0]) for i in DEMOS]


def _route(bundle, tiles):
    route = ReasoningRoute(bundle)
    route.fit(_demos(tiles))
    return route


def _one_at_a_time(bundle, tiles, images):
    """The plain run: a fresh route per target, so nothing is batched and no prefix is reused."""
    return [_route(bundle, tiles).segment_with_details(image) for image in images]


# Batched and single runs round differently (~1e-7 here) and a random SAM 2 puts many pixels
# near probability 0.5, so a pixel right at the cut may fall either side; none other may.
AT_THE_CUT = 1e-5


def _same(batched, alone):
    for (p_b, d_b), (p_a, d_a) in zip(batched, alone):
        assert d_b["completion"] == d_a["completion"]
        assert d_b["decoded_tokens"] == d_a["decoded_tokens"]
        assert d_b["box"] == d_a["box"] and d_b["parse_error"] == d_a["parse_error"]
        np.testing.assert_allclose(p_b, p_a, atol=1e-5)
        differ = (p_b > 0.5) != (p_a > 0.5)
        assert not (differ & (np.abs(p_a - 0.5) > AT_THE_CUT)).any()


def _same_mask(a, b):
    """Masks read back from labels (no probabilities): at most 1 pixel in 10 000 at the cut."""
    assert a.shape == b.shape and (a != b).sum() <= a.size // 10000


class TestBatchedRoute:
    def test_a_batch_gives_the_labels_of_one_at_a_time(self, varied_bundle, nuclei_tiles):
        images = [nuclei_tiles[i][1] for i in TARGETS]
        alone = _one_at_a_time(varied_bundle, nuclei_tiles, images)
        assert len({d["completion"] for _, d in alone}) > 1  # the rows really differ
        route = _route(varied_bundle, nuclei_tiles)
        batched = route.segment_batch(images[:4]) + route.segment_batch(images[4:])
        _same(batched, alone)
        assert all(isinstance(d["decoded_tokens"], int) and d["decoded_tokens"] > 0 for _, d in batched)
        assert _counts(route._prefix) == _reused(varied_bundle, (1, 1))  # the canvas encoded once

    def test_parsed_boxes_survive_batching(self, varied_bundle, nuclei_tiles):
        bundle = dataclasses.replace(varied_bundle, policy=ScriptedPolicy(varied_bundle.policy, PARSABLE))
        images = [nuclei_tiles[i][1] for i in TARGETS[:3]]
        alone = _one_at_a_time(bundle, nuclei_tiles, images)
        batched = _route(bundle, nuclei_tiles).segment_batch(images)
        _same(batched, alone)
        assert batched[0][1]["box"] is not None and batched[0][1]["rule"] == "nuclei are bright ovals"


class TestSegmenterInOnePass:
    def test_embed_many_gives_the_features_of_one_at_a_time(self, varied_bundle, nuclei_tiles):
        segmenter = varied_bundle.segmenter
        images = [(nuclei_tiles[i][1] * 255).astype(np.uint8) for i in (1, 2, 3)]
        images.append(np.ascontiguousarray(images[0][:, :100]))  # another size stacks too (resized to S×S)
        keys = [f"many-{i}" for i in range(4)]
        segmenter.clear_cache()
        segmenter.embed_many(images, keys)
        together = [segmenter.features(k) for k in keys]
        segmenter.clear_cache()
        for image, key, feats in zip(images, keys, together):
            segmenter.embed(image, key)
            alone = segmenter.features(key)
            torch.testing.assert_close(feats["image_embed"], alone["image_embed"], atol=1e-5, rtol=1e-5)
            for a, b in zip(feats["high_res_feats"], alone["high_res_feats"]):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            assert tuple(feats["orig_hw"]) == image.shape[:2]


class TestSharedPrefix:
    def _requests(self, bundle, tiles, n):
        route = _route(bundle, tiles)
        return [route._episode(tiles[i][1])[0] for i in TARGETS[:n]]

    def test_same_completions_and_states_as_encoding_everything(self, varied_bundle, nuclei_tiles):
        requests = self._requests(varied_bundle, nuclei_tiles, 3)
        policy, store = varied_bundle.policy, PrefixStore()
        plain = policy.generate(requests)
        reused = policy.generate(requests, prefix=store)
        again = policy.generate(requests[:1], prefix=store)
        assert torch.equal(plain.sequences, reused.sequences) and plain.completions == reused.completions
        assert torch.equal(again.sequences[0], plain.sequences[0])
        torch.testing.assert_close(reused.hidden_states, plain.hidden_states, atol=1e-4, rtol=1e-4)
        assert _counts(store) == _reused(varied_bundle, (1, 1))
        if reuse_supported(policy):
            assert store.prefix.length < plain.prompt_length  # the prefix ends with the canvas

    def test_batched_reuse_gives_the_labels_of_the_plain_route(self, varied_bundle, nuclei_tiles):
        from conceptseg.routes.reasoning import ReasoningConfig

        images = [nuclei_tiles[i][1] for i in TARGETS]
        plain = ReasoningRoute(varied_bundle, ReasoningConfig(reuse_prefix=False))
        plain.fit(_demos(nuclei_tiles))
        reused = _route(varied_bundle, nuclei_tiles)
        _same(reused.segment_batch(images), [plain.segment_with_details(image) for image in images])
        assert plain._prefix.misses == 0 and reused._prefix.misses == _reused(varied_bundle, (1, 0))[0]

    def test_nothing_shared_falls_back_to_encoding_everything(self, varied_bundle, nuclei_tiles):
        policy, store = varied_bundle.policy, PrefixStore()
        image = (nuclei_tiles[1][1] * 255).astype(np.uint8)
        one_image = [PolicyRequest([image], "the bright blob"), PolicyRequest([image[::-1].copy()], "the bright blob")]
        policy.generate(one_image, prefix=store)  # a text query: the only image is the target
        padded = [PolicyRequest([image, image], "short"), PolicyRequest([image, image], "a much longer text here")]
        policy.generate(padded, prefix=store)  # rows of different lengths are left-padded
        assert store.prefix is None and (store.misses, store.hits) == (0, 0)

    def test_another_canvas_is_another_prefix(self, varied_bundle, nuclei_tiles):
        store = PrefixStore()
        first = self._requests(varied_bundle, nuclei_tiles, 1)
        route = ReasoningRoute(varied_bundle)
        route.fit([Demonstration(nuclei_tiles[i][1], nuclei_tiles[i][2], nuclei_tiles[i][0]) for i in (7, 8)])
        second = [route._episode(nuclei_tiles[1][1])[0]]
        varied_bundle.policy.generate(first, prefix=store)
        out = varied_bundle.policy.generate(second, prefix=store)
        assert _counts(store) == _reused(varied_bundle, (2, 0))
        assert out.completions == varied_bundle.policy.generate(second).completions


def _counts(store) -> tuple[int, int]:
    return store.misses, store.hits


def _reused(bundle, counts: tuple[int, int]) -> tuple[int, int]:
    """(misses, hits) with prefix reuse; (0, 0) on a transformers that falls back (before 5.2x)."""
    return counts if reuse_supported(bundle.policy) else (0, 0)


class _OutOfMemoryAbove:
    """A policy on a card that holds ``rows`` episodes: a larger batch raises CUDA's out-of-memory error."""

    def __init__(self, policy, rows):
        self.policy, self.rows, self.calls = policy, rows, []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def generate(self, requests, **kwargs):
        self.calls.append(len(requests))
        if len(requests) > self.rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory: {len(requests)} rows")
        return self.policy.generate(requests, **kwargs)


class TestOutOfMemory:
    def test_halves_until_it_fits_and_keeps_the_smaller_size(self, varied_bundle, nuclei_tiles):
        small = _OutOfMemoryAbove(varied_bundle.policy, rows=2)
        route = _route(dataclasses.replace(varied_bundle, policy=small), nuclei_tiles)
        images = [nuclei_tiles[i][1] for i in TARGETS]
        outcomes = route.segment_batch(images)
        _same(outcomes, _one_at_a_time(varied_bundle, nuclei_tiles, images))
        assert small.calls[0] == 5 and max(small.calls[1:]) <= 2
        calls = len(small.calls)
        route.segment_batch(images[:4])  # later batches start at the size that fitted
        assert small.calls[calls:] == [2, 2]

    def test_a_target_that_does_not_fit_alone_is_its_failure(self, varied_bundle, nuclei_tiles):
        none = _OutOfMemoryAbove(varied_bundle.policy, rows=0)
        route = _route(dataclasses.replace(varied_bundle, policy=none), nuclei_tiles)
        outcomes = route.segment_batch([nuclei_tiles[i][1] for i in TARGETS[:3]])
        assert len(outcomes) == 3 and all(isinstance(o, ConceptSegError) for o in outcomes)
        assert "Out of GPU memory" in str(outcomes[0])


class TestRuns:
    def test_batched_run_writes_the_labels_of_a_plain_run(self, nuclei_dataset, varied_bundle):
        ds = nuclei_dataset
        # 7 targets: two full batches of 3 and a remainder of 1, at half the cost of all 14
        demos, targets = ds.match_tags("demo"), ds.match_tags("demo", bool=False).limit(7)
        kw = dict(mask_field="ground_truth", route="reasoning", model=varied_bundle, instances=False)
        one = segment_by_demonstration(demos, targets, pred_field="one", **kw)
        three = segment_by_demonstration(demos, targets, pred_field="three", batch_size=3, **kw)
        assert one["segmented"] == three["segmented"] == len(targets) > 3
        for sample in targets.iter_samples():
            _same_mask(sample["one"].get_mask(), sample["three"].get_mask())
            assert sample["three"].decoded_tokens == sample["one"].decoded_tokens > 0
        assert ds.get_run_info(three["run_key"]).config.batch_size == 3

    @pytest.mark.parametrize("size", [0, -2, 1.5, True])
    def test_a_batch_size_below_one_is_refused_before_anything_is_written(self, nuclei_dataset, size):
        ds = nuclei_dataset
        with pytest.raises(ConceptSegError, match="batch size must be a whole number"):
            segment_by_demonstration(ds.match_tags("demo"), ds.match_tags("demo", bool=False), "ground_truth",
                                     "predictions", batch_size=size)
        assert not ds.has_field("predictions")

    def test_cli_batch_size_zero_is_a_clear_error(self, nuclei_dataset, capsys):
        from conceptseg import cli

        code = cli.main(["segment", "--dataset", nuclei_dataset.name, "--demo-tag", "demo", "--mask-field",
                         "ground_truth", "--pred-field", "predictions", "--batch-size", "0"])
        assert code != 0
        assert "batch size must be a whole number of targets, at least 1; got 0" in capsys.readouterr().err
        assert not fo.load_dataset(nuclei_dataset.name).has_field("predictions")


class TestZooModel:
    def test_apply_model_batches_give_the_labels_of_one_at_a_time(self, plugin_installed, nuclei_dataset):
        import fiftyone.zoo as foz

        from conceptseg.runs.zoo_model import ConceptSegModelConfig

        _, path = foz.download_zoo_model("conceptseg-tiny-random")
        view = nuclei_dataset.match_tags("demo", bool=False).limit(5)
        for field, batch in (("one", 1), ("four", 4)):
            model = foz.load_zoo_model("conceptseg-tiny-random", bundle=path, text="the bright blob")
            view.apply_model(model, label_field=field, batch_size=batch, num_workers=0, skip_failures=False)
        for one, four in zip(view.values("one"), view.values("four")):
            _same_mask(one.mask, four.mask)
            assert one.decoded_tokens == four.decoded_tokens > 0
        with pytest.raises(ConceptSegError, match="batch size must be a whole number"):
            ConceptSegModelConfig(batch_size=0)
