"""SAM 2 as the frozen segmenter of ConceptSeg-R1: box + concept tokens -> mask logits.

Embed once, prompt many: ``embed(image, key)`` runs the image encoder and keeps the
features in a small LRU cache; ``predict(key, box, concept_tokens)`` runs only the prompt
encoder and mask decoder. Concept tokens (N x 256) are appended to SAM 2's sparse prompt
embeddings, so the mask decoder attends to them exactly as it attends to box corners.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from conceptseg.errors import ConceptSegError
from conceptseg.segmenters.cache import EmbeddingCache, FiniteWeights, check_finite_output, check_rgb_uint8

_WEIGHTS_HINT = (
    "Download SAM 2 weights (e.g. sam2.1_hiera_tiny.pt) from "
    "https://github.com/facebookresearch/sam2#model-description (checkpoints/download_ckpts.sh), "
    "or set checkpoint=None for random weights."
)


class CheckpointError(ConceptSegError):
    """A SAM 2 checkpoint is missing, unreadable, or does not match the model config."""


@dataclasses.dataclass
class Sam2SegmenterConfig:
    """How to build the segmenter.

    config_name: a config packaged with sam2, e.g. "configs/sam2.1/sam2.1_hiera_t.yaml".
    checkpoint: Meta's ``.pt`` or a ``.safetensors`` from ``save_weights``; None = random weights.
    image_size: input resolution S; None keeps the config's (1024). Must be a multiple of 32;
        256 gives fast tests.
    cache_size: how many images' embeddings are kept (least recently used are dropped).
    device: "cpu", "cuda" or None (cuda when available).
    mask_threshold: logits above it are foreground in ``predict_mask``.
    """

    config_name: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    checkpoint: str | None = None
    image_size: int | None = None
    cache_size: int = 8
    device: str | None = None
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size is not None and (self.image_size <= 0 or self.image_size % 32):
            raise ValueError(
                f"image_size must be a positive multiple of 32 or None; got {self.image_size}."
            )
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be at least 1; got {self.cache_size}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sam2SegmenterConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown Sam2SegmenterConfig keys: {sorted(unknown)}.")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Sam2Prediction:
    """One SAM 2 answer: HxW float32 logits at the original image size, and the decoder's
    own opinion of that mask.

    quality: the mask decoder's predicted IoU for the mask it returned (after SAM 2's
        stability fallback), clipped to [0, 1].
    presence: sigmoid of the decoder's object-score logit (SAM 2.1 predicts whether the
        prompt holds an object at all); about 1 for models without that head.
    """

    logits: np.ndarray
    quality: float
    presence: float

    @property
    def score(self) -> float:
        """quality x presence in [0, 1]: as SAM 3's instance score (class score x presence)."""
        return self.quality * self.presence


def _backbone_feature_maps(model, backbone_out: dict) -> list[torch.Tensor]:
    """Returns the decoder's feature levels, flattened to (HW, B, C), lowest resolution last.

    SAM 2 has no public API for this step: SAM2ImagePredictor.set_image calls the same
    private method, which picks the last ``num_feature_levels`` FPN levels. Calling it here
    (and only here) keeps us in step with SAM 2's own choice of levels.
    """
    _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
    return vision_feats


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"SAM 2 checkpoint not found: {path}. {_WEIGHTS_HINT}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        if path.endswith((".pt", ".pth")):
            sd = torch.load(path, map_location="cpu", weights_only=True)
            return sd["model"] if isinstance(sd, dict) and "model" in sd else sd
    except Exception as e:  # corrupt files raise many types
        raise CheckpointError(f"Cannot read SAM 2 checkpoint {path}: {e}") from e
    raise CheckpointError(
        f"Unsupported checkpoint {path}: expected a .pt/.pth (Meta) or .safetensors file."
    )


def _key_list(keys: list[str], limit: int = 20) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class Sam2Segmenter:
    """A frozen SAM 2 whose prompts are an optional XYXY box plus optional concept tokens."""

    def __init__(self, model, config: Sam2SegmenterConfig):
        from sam2.utils.transforms import SAM2Transforms

        self.model = model.eval()
        self.config = config
        for p in self.model.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings():  # SAM2Transforms uses torch.jit.script; harmless
            warnings.filterwarnings("ignore", ".*torch.jit.script.*", FutureWarning)
            self._transforms = SAM2Transforms(
                resolution=model.image_size, mask_threshold=config.mask_threshold
            )
        self._cache = EmbeddingCache(config.cache_size)
        self._finite = FiniteWeights(self.model)

    @classmethod
    def from_config(cls, config: Sam2SegmenterConfig) -> "Sam2Segmenter":
        """Builds SAM 2 from sam2's packaged config, then loads ``config.checkpoint`` strictly."""
        from sam2.build_sam import build_sam2

        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        overrides = [f"++model.image_size={config.image_size}"] if config.image_size else []
        sd = _load_state_dict(config.checkpoint) if config.checkpoint is not None else None
        model = build_sam2(config.config_name, ckpt_path=None, device=device, mode="eval",
                           hydra_overrides_extra=overrides)
        if sd is not None:
            try:
                missing, unexpected = model.load_state_dict(sd, strict=False)
            except RuntimeError as e:  # shape mismatches raise even with strict=False
                raise CheckpointError(
                    f"Checkpoint {config.checkpoint} does not fit {config.config_name}: {e}"
                ) from e
            if missing or unexpected:
                raise CheckpointError(
                    f"Checkpoint {config.checkpoint} does not match {config.config_name}. "
                    f"Missing keys ({len(missing)}): {_key_list(missing)}. "
                    f"Unexpected keys ({len(unexpected)}): {_key_list(unexpected)}. "
                    "Use the checkpoint made for this config."
                )
        return cls(model, config)

    def save_weights(self, path: str) -> None:
        """Writes the model's state dict as safetensors (loadable as ``checkpoint``)."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def token_dim(self) -> int:
        """Width of one concept token (256 for every SAM 2 size)."""
        return self.model.sam_prompt_encoder.embed_dim

    # ---- image features -------------------------------------------------------------

    def embed(self, image: np.ndarray, key: str) -> None:
        """Computes and caches the features of ``image`` (HxWx3 uint8 RGB) under ``key``.

        A key already cached for an image of the same size is a hit and costs nothing, so
        the key must identify the image content (e.g. a sample id or file path).
        """
        self.embed_many([image], [key])

    @torch.no_grad()
    def embed_many(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> None:
        """``embed`` for several images in one image-encoder pass (those not cached yet).

        Every image is resized to S×S first, so images of any sizes stack. More images than
        the cache holds would evict each other: give at most ``config.cache_size``.
        """
        todo = {}
        for image, key in zip(images, keys):
            check_rgb_uint8(image)
            if key not in todo and self._cache.lookup(key, image.shape[:2]) is None:
                todo[key] = image
        if not todo:
            return
        self._finite.check("SAM 2 segmenter")
        x = torch.stack([self._transforms(image) for image in todo.values()]).to(self.device, self.dtype)
        feats = _backbone_feature_maps(self.model, self.model.forward_image(x))
        if self.model.directly_add_no_mem_embed:  # as SAM2ImagePredictor.set_image does
            feats[-1] = feats[-1] + self.model.no_mem_embed
        s, n = self.model.image_size, len(todo)
        sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)][-len(feats):]
        maps = [f.permute(1, 2, 0).reshape(n, -1, h, w) for f, (h, w) in zip(feats, sizes)]
        for row, (key, image) in enumerate(todo.items()):
            self._cache.store(key, {"image_embed": maps[-1][row:row + 1],
                                    "high_res_feats": [m[row:row + 1] for m in maps[:-1]],
                                    "orig_hw": image.shape[:2]})

    def cache_info(self) -> dict[str, int]:
        """Embed calls served from the cache (hits), computed (misses), and images kept."""
        return self._cache.info()

    def features(self, key: str) -> dict:
        """The cached features of ``key``: image_embed (1xCxhxw), high_res_feats, orig_hw."""
        return self._cache.require(key)

    def clear_cache(self) -> None:
        self._cache.clear()

    # ---- prompting ------------------------------------------------------------------

    def predict(self, key: str, box: Sequence[float] | None = None,
                concept_tokens: torch.Tensor | None = None) -> np.ndarray:
        """Mask logits (HxW float32, original image size) for the image embedded as ``key``.

        box: XYXY in pixels of the original image. concept_tokens: (N, 256) or (1, N, 256),
        appended after the box's prompt embeddings. At least one of the two is required.

        Sparse prompts are [corner0, corner1, not-a-point pad, *tokens] with a box (the pad is
        SAM 2's own, as in SAM2ImagePredictor) and [*tokens] without one. Their order does not
        matter: the decoder attends over prompt tokens without positional codes. SAM 2's
        eval-time fallback applies: an unstable single mask is replaced by the best of its
        three multimask outputs (build_sam2's default post-processing).

        NaN or infinite weights or logits raise NonFiniteError (a ConceptSegError).
        """
        return self.predict_scored(key, box, concept_tokens).logits

    def predict_scored(self, key: str, box: Sequence[float] | None = None,
                       concept_tokens: torch.Tensor | None = None) -> Sam2Prediction:
        """As ``predict``, with the mask decoder's predicted IoU and object presence beside the logits."""
        with torch.no_grad():
            self._finite.check("SAM 2 segmenter")
            logits, iou, object_logit = self._forward(key, box, concept_tokens)
            check_finite_output(logits, "SAM 2 segmenter")
            return Sam2Prediction(logits=logits.cpu().numpy(), quality=float(iou.clamp(0.0, 1.0)),
                                  presence=float(torch.sigmoid(object_logit)))

    def predict_with_grad(self, key: str, box: Sequence[float] | None = None,
                          concept_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """As ``predict`` but returns an HxW float32 tensor that backpropagates into the tokens.

        SAM 2 itself stays frozen (its parameters never require grad).
        """
        with torch.enable_grad():
            return self._forward(key, box, concept_tokens)[0]

    def predict_mask(self, key: str, box: Sequence[float] | None = None,
                     concept_tokens: torch.Tensor | None = None) -> np.ndarray:
        """HxW bool mask: ``predict`` logits above ``config.mask_threshold``."""
        return self.predict(key, box, concept_tokens) > self.config.mask_threshold

    def _forward(self, key, box, concept_tokens) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(HxW logits, predicted IoU, object-score logit); the two scores are 0-d tensors."""
        if box is None and concept_tokens is None:
            raise ValueError("predict needs a prompt: pass a box, concept_tokens, or both.")
        feats = self._cache.require(key)
        points = None
        if box is not None:
            b = (box.detach().reshape(-1) if isinstance(box, torch.Tensor)
                 else torch.as_tensor(np.asarray(box, dtype=np.float32).reshape(-1)))
            b = b.to(self.device, torch.float32)
            if b.numel() != 4 or not torch.isfinite(b).all():
                raise ValueError(
                    f"box must be 4 finite numbers x0, y0, x1, y1 in pixels; got {box!r}."
                )
            coords = self._transforms.transform_boxes(  # 1x2x2, in model input pixels
                b, normalize=True, orig_hw=feats["orig_hw"]
            )
            # As SAM2ImagePredictor: a box enters as two corner points labelled 2 and 3
            # (the prompt encoder then pads them with one "not a point" embedding).
            points = (coords, torch.tensor([[2, 3]], dtype=torch.int, device=self.device))
        encoder = self.model.sam_prompt_encoder
        sparse, dense = encoder(points=points, boxes=None, masks=None)  # 1xKx256, 1x256xhxw
        sparse = sparse.to(self.dtype)
        if concept_tokens is not None:
            sparse = torch.cat([sparse, self._check_tokens(concept_tokens)], dim=1)
        low_res, iou, _, object_logit = self.model.sam_mask_decoder(
            image_embeddings=feats["image_embed"],
            image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=feats["high_res_feats"],
        )  # 1x1x(S/4)x(S/4), 1x1, 1x1 (no object head: logit 10, presence ≈ 1)
        logits = self._transforms.postprocess_masks(low_res, feats["orig_hw"])[0, 0]
        return logits, iou.reshape(()).float(), object_logit.reshape(()).float()

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
