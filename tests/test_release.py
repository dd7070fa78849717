"""The released checkpoint's layout (transformers 4.51.3 names, shards, config class), built
from tiny weights: it loads to exactly what the same weights give in our bundle layout."""

import json
import os

import numpy as np
import pytest
import torch

from conceptseg.model.checkpoint import is_official_checkpoint, load_bundle
from conceptseg.model.episode import build_episode
from conceptseg.model.policy import PolicyRequest
from conceptseg.model.prompts import build_prompt
from conceptseg.model.release import ReleaseError, processor_source
from conceptseg.routes.reasoning import ReasoningConfig, ReasoningRoute
from conceptseg.segmenters.sam2 import Sam2SegmenterConfig
from conceptseg.testing import TINY_BASE_ID, build_tiny_bundle, put_in_hub_cache, write_release_layout
from conceptseg.types import Demonstration


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A tiny bundle with an untied output head, as the 7B has."""
    path = build_tiny_bundle(str(tmp_path_factory.mktemp("ours")), seed=3, tie_embeddings=False, max_new_tokens=24,
                             translator_heads=16)
    return path, load_bundle(path)


def _segmenter(bundle_dir):
    spec = json.load(open(os.path.join(bundle_dir, "bundle.json")))["segmenter"]["config"]
    return Sam2SegmenterConfig.from_dict({**spec, "checkpoint": os.path.join(bundle_dir, spec["checkpoint"])})


@pytest.fixture(scope="module", params=["with-processor", "without-processor"])
def release(request, ours, tmp_path_factory):
    path, bundle = ours
    out = str(tmp_path_factory.mktemp(request.param))
    with_files = request.param == "with-processor"
    write_release_layout(out, os.path.join(path, "policy"), bundle.translator, processor_files=with_files)
    if not with_files:  # the base model the config names, as a user who downloaded it once has it
        put_in_hub_cache(TINY_BASE_ID, os.path.join(path, "policy"))
    return out, load_bundle(out, segmenter_config=_segmenter(path)), with_files


class TestLayout:
    def test_files_names_and_config_are_the_releases(self, release):
        path, _, with_files = release
        names = set(os.listdir(path))
        assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                "model.safetensors.index.json", "config.json", "generation_config.json"} <= names
        assert "model.safetensors" not in names and ("preprocessor_config.json" in names) == with_files
        weight_map = json.load(open(os.path.join(path, "model.safetensors.index.json")))["weight_map"]
        prefixes = {k.split(".")[0] for k in weight_map}
        assert prefixes == {"model", "visual", "lm_head", "learnable_query", "connector", "proj_to_sam"}
        assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in weight_map)
        translator_shards = {f for k, f in weight_map.items() if k.startswith(("learnable_query", "connector", "proj_to_sam"))}
        assert len(translator_shards) == 2  # the translator's tensors sit in both shards
        config = json.load(open(os.path.join(path, "config.json")))
        assert config["architectures"] == ["ConceptSegR1ForConditionalGeneration_qwen2p5"]
        assert config["num_of_query"] == 8 and config["transformers_version"] == "4.51.3"
        assert "text_config" not in config and config["hidden_size"] == 64
        assert is_official_checkpoint(path)

    def test_processor_source(self, release):
        path, _, with_files = release
        assert processor_source(path) == (path if with_files else TINY_BASE_ID)

    def test_without_a_segmenter_it_needs_sam3(self, release):
        from conceptseg.errors import ConceptSegError

        # the segmenter it was trained with, not on this machine (nor in a transformers before SAM 3)
        with pytest.raises(ConceptSegError, match="facebook/sam3|SAM 3 needs transformers 5"):
            load_bundle(release[0])

    def test_released_model_budget_is_the_official_one(self, release):
        _, bundle, _ = release
        assert bundle.policy.config.max_new_tokens == 2048


class TestSameAsOurLayout:
    def test_weights(self, ours, release):
        theirs = release[1]
        mine = ours[1]
        for key, value in mine.policy.model.state_dict().items():
            assert torch.equal(theirs.policy.model.state_dict()[key], value), key
        for key, value in mine.translator.state_dict().items():
            assert torch.equal(theirs.translator.state_dict()[key], value), key

    def test_completions_tokens_and_masks_are_exactly_equal(self, ours, release, nuclei_tiles):
        mine, theirs = ours[1], release[1]
        theirs.policy.config.max_new_tokens = mine.policy.config.max_new_tokens  # same budget, same text
        demos = [Demonstration(nuclei_tiles[i][1], nuclei_tiles[i][2], nuclei_tiles[i][0]) for i in (0, 5, 10)]
        episode = build_episode(demos, nuclei_tiles[1][1])
        request = PolicyRequest([episode.canvas, episode.target],
                                build_prompt("nucleus", episode.reference_boxes, True, episode.has_proxy))
        outs = [b.policy.generate([request]) for b in (mine, theirs)]
        assert outs[0].completions == outs[1].completions
        assert torch.equal(outs[0].sequences, outs[1].sequences)
        tokens = [b.translator(o.hidden_states, o.completion_mask).tokens for b, o in zip((mine, theirs), outs)]
        assert torch.equal(tokens[0], tokens[1])
        for question, demonstrations in (("nucleus", demos), ("the round bright thing", [])):
            maps = []
            for bundle in (mine, theirs):
                route = ReasoningRoute(bundle, ReasoningConfig(question=question))
                route.fit(demonstrations)
                maps.append(route.segment_with_details(nuclei_tiles[7][1]))
            assert np.array_equal(maps[0][0], maps[1][0])
            assert maps[0][1]["completion"] == maps[1][1]["completion"]


class TestWhatCanGoWrong:
    def test_base_neither_cached_nor_local_names_the_download(self, ours, tmp_path):
        path, bundle = ours
        out = write_release_layout(str(tmp_path / "r"), os.path.join(path, "policy"), bundle.translator,
                                   processor_files=False, base_model="conceptseg-tests/not-downloaded")
        with pytest.raises(ReleaseError, match="hf download conceptseg-tests/not-downloaded"):
            load_bundle(out, segmenter_config=_segmenter(path))

    def test_base_on_the_authors_disk_falls_back_to_qwen_by_size(self, ours, tmp_path):
        path, bundle = ours
        out = write_release_layout(str(tmp_path / "r"), os.path.join(path, "policy"), bundle.translator,
                                   processor_files=False, base_model="/home/someone/stage1/checkpoint-100")
        with pytest.raises(ReleaseError, match="no base model"):
            processor_source(out)  # 64 wide: no Qwen2.5-VL of that size
        config = json.load(open(os.path.join(out, "config.json")))
        json.dump({**config, "hidden_size": 3584}, open(os.path.join(out, "config.json"), "w"))
        assert processor_source(out) == "Qwen/Qwen2.5-VL-7B-Instruct"
        # A name with a newline after it is no hub id (a "$" would have let it through).
        json.dump({**config, "hidden_size": 3584, "_name_or_path": "someone/base\n"},
                  open(os.path.join(out, "config.json"), "w"))
        assert processor_source(out) == "Qwen/Qwen2.5-VL-7B-Instruct"

    def test_num_of_query_must_match_the_tensors(self, ours, tmp_path):
        path, bundle = ours
        out = write_release_layout(str(tmp_path / "r"), os.path.join(path, "policy"), bundle.translator)
        config = json.load(open(os.path.join(out, "config.json")))
        json.dump({**config, "num_of_query": 16}, open(os.path.join(out, "config.json"), "w"))
        with pytest.raises(ReleaseError, match="num_of_query = 16.*8 queries"):
            load_bundle(out, segmenter_config=_segmenter(path))

    def test_missing_policy_weights_are_an_error_not_random_weights(self, ours, tmp_path):
        from safetensors.torch import load_file, save_file

        path, bundle = ours
        out = write_release_layout(str(tmp_path / "r"), os.path.join(path, "policy"), bundle.translator)
        shard = os.path.join(out, "model-00001-of-00002.safetensors")
        save_file({k: v for k, v in load_file(shard).items() if not k.startswith("visual.")}, shard)
        index = os.path.join(out, "model.safetensors.index.json")
        data = json.load(open(index))
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if not k.startswith("visual.")}
        json.dump(data, open(index, "w"))
        # named as this transformers names them: model.visual.* from 4.52 on, visual.* before
        with pytest.raises(ReleaseError, match=r"lacks \d+ policy weights \((model\.)?visual"):
            load_bundle(out, segmenter_config=_segmenter(path))
