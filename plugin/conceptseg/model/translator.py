"""Concept translation module: completion hidden states -> N latent concept tokens for the segmenter.

N learnable queries (plus a zero-initialised positional embedding) cross-attend, through
``num_blocks`` residual blocks, to the policy's last-layer hidden states of the completion
tokens; an MLP then maps each query to the segmenter's prompt width (256). Parameter names
and shapes equal the official ``learnable_query`` / ``connector`` / ``proj_to_sam`` tensors
(method.md §1.1a), so the released ConceptSeg-R1 weights load with strict key checking.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conceptseg.errors import ConceptSegError

PREFIXES = ("learnable_query.", "connector.", "proj_to_sam.")
_METADATA_KEY = "conceptseg_translator_config"


class CheckpointError(ConceptSegError):
    """Translator weights are missing, unexpected, misshapen, or lack their config."""


@dataclass
class TranslatorConfig:
    """Sizes of the concept translation module (official values as defaults).

    Attributes:
        hidden_size: H, the policy's hidden size (3584 for Qwen2.5-VL-7B, 2048 for 3B)
        num_queries: N learnable queries = latent concept tokens per sample
        num_blocks: cross-attention blocks in the connector
        num_heads: attention heads; must divide hidden_size
        mlp_ratio: width of each block's MLP, as a multiple of H
        out_dim: width of each output token (SAM 3's prompt feature width)
        norm_eps: LayerNorm epsilon
        key_padding_mask: True masks out padded completion positions (attention_mask == 0).
            False attends to every position, padding and post-EOS tokens included, exactly like
            the official code (which passes no mask to the attention).
    """

    hidden_size: int
    num_queries: int = 8
    num_blocks: int = 4
    num_heads: int = 16
    mlp_ratio: int = 4
    out_dim: int = 256
    norm_eps: float = 1e-6
    key_padding_mask: bool = True

    def __post_init__(self):
        for name in ("hidden_size", "num_queries", "num_blocks", "num_heads", "mlp_ratio", "out_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConceptSegError(f"TranslatorConfig.{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ConceptSegError(
                f"TranslatorConfig.hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}; choose num_heads that divides it (the official value is 16)."
            )
        if not isinstance(self.norm_eps, (int, float)) or isinstance(self.norm_eps, bool) or self.norm_eps <= 0:
            raise ConceptSegError(f"TranslatorConfig.norm_eps must be a positive number, got {self.norm_eps!r}.")
        if not isinstance(self.key_padding_mask, bool):
            raise ConceptSegError(
                f"TranslatorConfig.key_padding_mask must be True or False, got {self.key_padding_mask!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranslatorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConceptSegError(f"Unknown TranslatorConfig keys {unknown}; known keys are {sorted(known)}.")
        return cls(**data)


@dataclass
class TranslatorOutput:
    """Result of :meth:`ConceptTranslator.forward`.

    Attributes:
        tokens: (B, N, out_dim) latent concept tokens, in the module's dtype
    """

    tokens: Tensor


class _LearnableQuery(nn.Module):
    """Holds the query embedding in attribute ``param``, as the official checkpoint names it."""

    def __init__(self, num_queries: int, hidden_size: int):
        super().__init__()
        self.param = nn.Embedding(num_queries, hidden_size)
        nn.init.normal_(self.param.weight, mean=0.0, std=0.02)


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # output [K; V]: first `dim` channels keys, next values
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, h: Tensor, attn_mask: Tensor | None) -> Tensor:
        (b, n, dim), t, heads = x.shape, h.shape[1], self.num_heads
        q = self.q(x).view(b, n, heads, dim // heads).transpose(1, 2)  # (B, heads, N, d)
        k, v = self.kv(h).view(b, t, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)  # each (B, heads, T, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick_gelu


class _Block(nn.Module):
    def __init__(self, cfg: TranslatorConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.norm0 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = _CrossAttention(dim, cfg.num_heads)
        self.mlp = _Mlp(dim, dim * cfg.mlp_ratio)

    def forward(self, q: Tensor, h: Tensor, attn_mask: Tensor | None) -> Tensor:
        q = q + self.attn(self.norm0(q), self.norm1(h), attn_mask)
        return q + self.mlp(self.norm2(q))


class _Connector(nn.Module):
    def __init__(self, cfg: TranslatorConfig):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.hidden_size))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_blocks))


class ConceptTranslator(nn.Module):
    """N learnable queries cross-attending to the completion hidden states, projected to out_dim."""

    def __init__(self, config: TranslatorConfig):
        super().__init__()
        self.config = config
        self.learnable_query = _LearnableQuery(config.num_queries, config.hidden_size)
        self.connector = _Connector(config)
        dim = config.hidden_size
        self.proj_to_sam = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, config.out_dim))

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> TranslatorOutput:
        """Translate completion hidden states into latent concept tokens.

        Args:
            hidden_states: (B, T, H) last-layer hidden states of the completion tokens. They are
                detached first, as in the paper: the mask loss trains only this module and never
                flows into the policy, which the RL reward alone shapes.
            attention_mask: (B, T) bool or 0/1, true/1 on real tokens; used only when
                ``config.key_padding_mask``. A row with no real token at all is attended unmasked
                (as the official code would), since attention over zero keys is undefined (NaN).

        Returns:
            TranslatorOutput with tokens (B, N, out_dim) in the module's dtype.
        """
        cfg = self.config
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != cfg.hidden_size or hidden_states.shape[1] == 0:
            raise ValueError(
                f"hidden_states must be (B, T, {cfg.hidden_size}) with T >= 1; got {tuple(hidden_states.shape)}."
            )
        b, t = hidden_states.shape[:2]
        param = self.connector.pos_embed
        h = hidden_states.detach().to(device=param.device, dtype=param.dtype)
        attn_mask = None
        if attention_mask is not None and cfg.key_padding_mask:
            if tuple(attention_mask.shape) != (b, t):
                raise ValueError(f"attention_mask must be (B, T) = {(b, t)}; got {tuple(attention_mask.shape)}.")
            keep = attention_mask.to(device=param.device).bool()
            keep = keep | ~keep.any(dim=1, keepdim=True)  # all-padding rows fall back to unmasked
            attn_mask = keep[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        ids = torch.arange(cfg.num_queries, device=param.device)
        q = self.learnable_query.param(ids).unsqueeze(0).expand(b, -1, -1) + param
        for block in self.connector.blocks:
            q = block(q, h, attn_mask)
        return TranslatorOutput(tokens=self.proj_to_sam(q))


def translator_state_from_checkpoint(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The translator tensors of a full official model state dict (top-level beside the Qwen weights)."""
    out = {k: v for k, v in state.items() if k.startswith(PREFIXES)}
    if not out:
        raise CheckpointError(
            f"No translator tensors (keys starting with {', '.join(PREFIXES)}) in this checkpoint; "
            "is it a ConceptSeg-R1 checkpoint and not a plain Qwen2.5-VL one?"
        )
    return out


def config_from_state(state: Mapping[str, Tensor], **overrides: Any) -> TranslatorConfig:
    """Infer H, N, num_blocks, mlp_ratio and out_dim from tensor shapes; heads etc. from ``overrides``."""
    needed = ("learnable_query.param.weight", "connector.blocks.0.mlp.fc1.weight", "proj_to_sam.2.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"Cannot infer the translator config: missing keys {missing}.")
    n, dim = state["learnable_query.param.weight"].shape
    fc1 = state["connector.blocks.0.mlp.fc1.weight"].shape[0]
    if fc1 % dim:
        raise CheckpointError(f"mlp.fc1 width {fc1} is not a multiple of hidden size {dim}.")
    blocks = {k.split(".")[2] for k in state if k.startswith("connector.blocks.")}
    inferred = dict(hidden_size=int(dim), num_queries=int(n), num_blocks=len(blocks), mlp_ratio=fc1 // dim,
                    out_dim=int(state["proj_to_sam.2.weight"].shape[0]))
    return TranslatorConfig(**{**inferred, **overrides})


def load_translator_state(model: ConceptTranslator, state: Mapping[str, Tensor]) -> None:
    """Strictly load ``state`` into ``model``; CheckpointError lists missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} expected"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    problems = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": shapes}
    if any(problems.values()):
        found = "; ".join(f"{label} {items}" for label, items in problems.items() if items)
        raise CheckpointError(
            f"Translator weights do not match the module: {found}. Check that the config "
            "(hidden_size, num_queries, num_blocks, mlp_ratio, out_dim) matches the checkpoint."
        )
    model.load_state_dict(dict(state), strict=True)


def save_translator(model: ConceptTranslator, path: str) -> None:
    """Write the weights as safetensors with the config JSON in the file's metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={_METADATA_KEY: json.dumps(model.config.to_dict())})


def load_translator(path: str, device: str | torch.device = "cpu") -> ConceptTranslator:
    """Read a file written by :func:`save_translator`; the module takes the stored dtype, in eval mode."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if _METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path} has no translator config in its metadata; for weights taken from the official "
            "checkpoint use config_from_state() and load_translator_state() instead."
        )
    model = ConceptTranslator(TranslatorConfig.from_dict(json.loads(metadata[_METADATA_KEY])))
    query = state.get("learnable_query.param.weight")
    model.to(device=device, dtype=query.dtype if query is not None else None)
    load_translator_state(model, state)
    return model.eval()
