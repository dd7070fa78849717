"""SAM 3 as the frozen segmenter of ConceptSeg-R1: text + concept tokens -> mask logits + presence.

This is the paper's backbone, on transformers' ``Sam3Model`` (no patched fork). Embed once,
prompt many: ``embed(image, key)`` runs the vision encoder and keeps its FPN features in a
small LRU cache; ``predict(key, text, concept_tokens)`` runs only the text encoder (cached
per text) and the fusion encoder, DETR decoder and segmentation head.

How the concept tokens enter SAM 3 (method.md §1.3): the (N, 256) tokens of the concept
translation module are concatenated after the text-encoder features, and the language mask
is extended with N ones. The prediction is SAM 3's one-channel ``semantic_seg`` logits,
upsampled bilinearly to the original image size (foreground: logit > 0), and the presence
score ``sigmoid(presence logit)`` of the DETR decoder's last layer.

The text shortcut of method.md §3.2 is ``shortcut_threshold`` / ``text_shortcut`` (pure
functions) and ``Sam3Segmenter.try_shortcut`` (runs plain SAM 3 when the rule allows it).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conceptseg.errors import ConceptSegError
from conceptseg.segmenters.cache import EmbeddingCache, FiniteWeights, check_finite_output, check_rgb_uint8
from conceptseg.segmenters.sam3_outputs import Sam3Prediction, Sam3TensorPrediction
from conceptseg.segmenters.sam3_text import (Sam3Shortcut, require_sam3, shortcut_threshold, shortcut_word_count,
                                             text_shortcut)

_WEIGHTS_HINT = (
    "Use a directory saved with Sam3Segmenter.save / save_pretrained (config.json, "
    "model.safetensors and the processor files), or a Hugging Face hub id such as "
    "facebook/sam3 (gated: accept its licence on huggingface.co, then `hf auth login`); "
    "conceptseg.testing.build_tiny_sam3(out_dir) makes a tiny random one for tests."
)


_TEXT_CACHE_SIZE = 64  # encoded text prompts kept (they are small: L x 256 floats each)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # whole string: fullmatch


class CheckpointError(ConceptSegError):
    """A SAM 3 model directory or hub id is missing, unreadable, or does not match its config."""


@dataclasses.dataclass
class Sam3SegmenterConfig:
    """How to build the segmenter.

    path: a directory saved with ``save_pretrained`` (model and processor) or a hub id such
        as "facebook/sam3"; loaded with ``Sam3Model.from_pretrained`` and
        ``Sam3Processor.from_pretrained``.
    image_size: input resolution S (square); None keeps the processor's (1008 for SAM 3).
        Must be a multiple of the ViT patch size (14), checked at load time.
    cache_size: how many images' embeddings are kept (least recently used are dropped).
        At S = 1008 one image's FPN features take about 110 MB in float32.
    device: "cpu", "cuda" or None (cuda when available).
    mask_threshold: logits above it are foreground in ``predict_mask`` and ``Sam3Prediction.mask``.
    """

    path: str = "facebook/sam3"
    image_size: int | None = None
    cache_size: int = 8
    device: str | None = None
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise ValueError(f"path must be a directory or a hub id; got {self.path!r}.")
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
            or self.image_size <= 0
        ):
            raise ValueError(f"image_size must be a positive integer or None; got {self.image_size!r}.")
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be at least 1; got {self.cache_size}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sam3SegmenterConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown Sam3SegmenterConfig keys: {sorted(unknown)}.")
        return cls(**d)


# ---- loading --------------------------------------------------------------------------


def _key_list(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _resolve_path(path: str) -> str:
    """A local directory, or a hub id; anything else that does not exist is an error here
    (from_pretrained would report it as a failed hub download)."""
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return local
    if os.path.exists(local):
        raise CheckpointError(f"SAM 3 path {path} is a file, not a directory. {_WEIGHTS_HINT}")
    if not _HUB_ID.fullmatch(path) or ".." in path:
        raise CheckpointError(f"SAM 3 model directory not found: {path}. {_WEIGHTS_HINT}")
    return path


def _square_size(size, where: str) -> int:
    h, w = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
    if h is None or w is None or h != w:
        raise CheckpointError(f"The SAM 3 processor in {where} resizes to {h}x{w}; expected a square size.")
    return int(h)


class Sam3Segmenter:
    """A frozen SAM 3 prompted with a text phrase plus optional concept tokens."""

    def __init__(self, model, processor, config: Sam3SegmenterConfig):
        from transformers.image_utils import SizeDict

        self.model = model.eval()
        self.processor = processor
        self.config = config
        for p in self.model.parameters():
            p.requires_grad_(False)
        s = int(model.config.image_size)
        patch = int(model.config.vision_config.backbone_config.patch_size)
        if s % patch:
            raise ValueError(f"SAM 3 image_size must be a multiple of the patch size {patch}; got {s}.")
        # The processor must resize to the size the ViT's global-attention positions were
        # built for; keep it in step so save() writes a consistent pair.
        processor.image_processor.size = SizeDict(height=s, width=s)
        processor.target_size = s
        self._max_text_len = int(model.config.text_config.max_position_embeddings)
        self._cache = EmbeddingCache(config.cache_size)
        self._finite = FiniteWeights(self.model)
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @classmethod
    def from_config(cls, config: Sam3SegmenterConfig) -> "Sam3Segmenter":
        """Loads model and processor from ``config.path``; a mismatch between the weights and
        the model config is a ``CheckpointError`` listing the missing and unexpected keys."""
        from conceptseg.model.hub import hf_token

        path = _resolve_path(config.path)
        require_sam3()
        from transformers import AutoConfig, Sam3Config, Sam3Model, Sam3Processor

        token = hf_token()  # for hub ids (a gated repository needs one); None: huggingface_hub decides
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            processor = Sam3Processor.from_pretrained(path, token=token)
            model_config = AutoConfig.from_pretrained(path, token=token)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"Cannot load a SAM 3 processor and config from {config.path}: {e}. "
                                  f"{_WEIGHTS_HINT}") from e
        # facebook/sam3 ships a sam3_video config; Sam3Model reads its detector part.
        detector = getattr(model_config, "detector_config", None)
        if detector is not None:
            model_config = detector if isinstance(detector, Sam3Config) else Sam3Config(**detector)
        if not isinstance(model_config, Sam3Config):
            raise CheckpointError(f"{config.path} holds a {type(model_config).__name__}, not a SAM 3 model. "
                                  f"{_WEIGHTS_HINT}")
        size = config.image_size or _square_size(processor.image_processor.size, config.path)
        patch = int(model_config.vision_config.backbone_config.patch_size)
        if size % patch:
            raise ValueError(f"image_size must be a multiple of the SAM 3 patch size {patch}; got {size}.")
        model_config.image_size = size  # the ViT's global-attention positions are built for it
        try:
            model, info = Sam3Model.from_pretrained(path, config=model_config, output_loading_info=True, token=token)
        except (OSError, ValueError, RuntimeError) as e:  # shape mismatches, corrupt files
            raise CheckpointError(f"Cannot load SAM 3 weights from {config.path}: {e}") from e
        missing = list(info.get("missing_keys", []))
        unexpected = list(info.get("unexpected_keys", []))
        mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
        if missing or unexpected or mismatched:
            raise CheckpointError(
                f"SAM 3 weights in {config.path} do not match its config. "
                f"Missing keys ({len(missing)}): {_key_list(missing)}. "
                f"Unexpected keys ({len(unexpected)}): {_key_list(unexpected)}. "
                f"Mismatched shapes ({len(mismatched)}): {_key_list(mismatched)}. "
                "Save model and processor together with Sam3Segmenter.save."
            )
        return cls(model.to(device), processor, config)

    @classmethod
    def from_model(cls, model, processor, config: Sam3SegmenterConfig | None = None) -> "Sam3Segmenter":
        """Wraps an already-built ``Sam3Model`` and ``Sam3Processor`` (``config.path`` and
        ``config.image_size`` are not read; the model's own image size is used)."""
        config = config or Sam3SegmenterConfig(path="<in memory>")
        if config.device is not None:
            model = model.to(config.device)
        return cls(model, processor, config)

    def save(self, path: str) -> str:
        """Writes model (safetensors) and processor with ``save_pretrained``; loadable as
        ``Sam3SegmenterConfig(path=path)``."""
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path)  # safetensors
        self.processor.save_pretrained(path)
        return path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def token_dim(self) -> int:
        """Width of one concept token: SAM 3's prompt width (256 for the released model)."""
        return int(self.model.config.detr_encoder_config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    # ---- image features -------------------------------------------------------------

    @torch.no_grad()
    def embed(self, image: np.ndarray, key: str) -> None:
        """Computes and caches the vision features of ``image`` (HxWx3 uint8 RGB) under ``key``.

        A key already cached for an image of the same size is a hit and costs nothing, so
        the key must identify the image content (e.g. a sample id or file path).
        """
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        check_rgb_uint8(image)
        if self._cache.lookup(key, image.shape[:2]) is not None:
            return
        self._finite.check("SAM 3 segmenter")
        s = self.image_size
        pixels = self.processor.image_processor(
            images=image, size={"height": s, "width": s}, input_data_format="channels_last",
            return_tensors="pt",
        ).pixel_values.to(self.device, self.dtype)
        out = self.model.get_vision_features(pixel_values=pixels)
        # Keep only what Sam3Model.forward reads from vision_embeds (not the ViT's tokens).
        vision = Sam3VisionEncoderOutput(fpn_hidden_states=out.fpn_hidden_states,
                                         fpn_position_encoding=out.fpn_position_encoding)
        self._cache.store(key, {"vision": vision, "orig_hw": tuple(image.shape[:2])})

    def features(self, key: str) -> dict:
        """The cached entry of ``key``: ``vision`` (FPN features) and ``orig_hw``."""
        return self._cache.require(key)

    def cache_info(self) -> dict[str, int]:
        """Embed calls served from the cache (hits), computed (misses), and images kept."""
        return self._cache.info()

    def clear_cache(self) -> None:
        self._cache.clear()
        self._text_cache.clear()

    # ---- prompting ------------------------------------------------------------------

    def predict(self, key: str, text: str,
                concept_tokens: torch.Tensor | None = None) -> Sam3Prediction:
        """SAM 3's semantic logits and presence for the image embedded as ``key``.

        text: the phrase for SAM 3's text encoder (the MLLM's answer phrase; may be "").
        concept_tokens: (N, 256) or (1, N, 256), appended after the text features with the
        attention mask extended by N ones (method.md §1.3); None runs plain SAM 3.
        Text is truncated to the text encoder's 32 positions. NaN or infinite weights, logits
        or presence raise NonFiniteError (a ConceptSegError).
        """
        with torch.no_grad():
            self._finite.check("SAM 3 segmenter")
            out = self._forward(key, text, concept_tokens)
            check_finite_output(out.logits, "SAM 3 segmenter")
            check_finite_output(out.presence, "SAM 3 segmenter")
        score = None if out.score is None else float(out.score)
        return Sam3Prediction(logits=out.logits.cpu().numpy(), presence=float(out.presence), score=score)

    def predict_with_grad(self, key: str, text: str,
                          concept_tokens: torch.Tensor | None = None) -> Sam3TensorPrediction:
        """As ``predict`` but returns tensors that backpropagate into the concept tokens.

        SAM 3 itself stays frozen (its parameters never require grad); the image and text
        features are constants.
        """
        with torch.enable_grad():
            return self._forward(key, text, concept_tokens)

    def predict_mask(self, key: str, text: str,
                     concept_tokens: torch.Tensor | None = None) -> np.ndarray:
        """HxW bool mask: ``predict`` logits above ``config.mask_threshold``."""
        return self.predict(key, text, concept_tokens).mask(self.config.mask_threshold)

    def try_shortcut(self, key: str, text: str) -> Sam3Shortcut:
        """The router's text shortcut (method.md §3.2) for the image embedded as ``key``.

        With τ = ``shortcut_threshold(text)`` ≥ 1 SAM 3 is not run. Otherwise plain SAM 3
        runs on ``text``; the shortcut is taken when its presence > τ, and then
        ``prediction`` is the answer (mask: logits > 0) and the MLLM can be skipped.
        """
        tau = shortcut_threshold(text)
        if not tau < 1.0:
            n = shortcut_word_count(text)
            return Sam3Shortcut(False, tau, None, None,
                                f"{n}-word query: τ = {tau:g} ≥ 1, SAM 3 alone is never trusted")
        pred = self.predict(key, text)
        taken = text_shortcut(text, pred.presence)
        rel = ">" if taken else "≤"
        return Sam3Shortcut(taken, tau, pred.presence, pred if taken else None,
                            f"SAM 3 presence {pred.presence:.3f} {rel} τ = {tau:g}")

    def text_features(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L, D) projected text-encoder features and their (1, L) bool mask, L = 32.

        Tokenised here rather than by Sam3Processor, which pads to 32 but does not truncate,
        so a long query would overflow the text encoder's 32 positions.
        """
        hit = self._text_cache.get(text)
        if hit is not None:
            self._text_cache.move_to_end(text)
            return hit
        enc = self.processor.tokenizer(text, padding="max_length", truncation=True,
                                       max_length=self._max_text_len, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                               attention_mask=enc["attention_mask"].to(self.device))
        hit = (out.pooler_output, enc["attention_mask"].to(self.device).bool())
        self._text_cache[text] = hit
        while len(self._text_cache) > _TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return hit

    def _forward(self, key: str, text: str, concept_tokens) -> Sam3TensorPrediction:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if not isinstance(text, str):
            raise TypeError(f"text must be a str (use \"\" for none); got {type(text).__name__}.")
        entry = self._cache.require(key)
        feats, mask = self.text_features(text)
        if concept_tokens is not None:
            tokens = self._check_tokens(concept_tokens)
            # method.md §1.3: tokens after the text features, language mask extended by ones.
            # The text stays padded to 32; SAM 3's fusion encoder, decoder and scoring read
            # prompt tokens through a key-padding mask only (no positional code), so tokens
            # after the padding are attended exactly as if they followed the last word.
            feats = torch.cat([feats, tokens], dim=1)
            mask = torch.cat([mask, torch.ones(1, tokens.shape[1], dtype=torch.bool,
                                               device=mask.device)], dim=1)
        # Sam3Model.forward reads `text_embeds.pooler_output` (a bare tensor fails, despite
        # its docstring), so the features travel in the output class get_text_features uses.
        out = self.model(vision_embeds=entry["vision"],
                         text_embeds=BaseModelOutputWithPooling(pooler_output=feats),
                         attention_mask=mask)
        logits = F.interpolate(out.semantic_seg.float(), size=entry["orig_hw"], mode="bilinear",
                               align_corners=False)[0, 0]
        presence = out.presence_logits.float().sigmoid().reshape(())
        score = None if out.pred_logits is None else out.pred_logits.float().sigmoid().max() * presence
        return Sam3TensorPrediction(logits=logits, presence=presence, score=score)

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"concept_tokens must be a torch.Tensor; got {type(tokens).__name__}.")
        t = tokens[None] if tokens.ndim == 2 else tokens
        if t.ndim != 3 or t.shape[0] != 1 or t.shape[2] != self.token_dim or t.shape[1] == 0:
            raise ValueError(
                f"concept_tokens must have shape (N, {self.token_dim}) or (1, N, {self.token_dim}) "
                f"with N >= 1; got {tuple(tokens.shape)}."
            )
        return t.to(self.device, self.dtype)
