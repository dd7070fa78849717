"""The reasoning policy: Qwen2.5-VL reads the reference canvas and the target and writes
its reasoning, rule, check, box and answer; we keep the hidden states of what it wrote.

The translator reads the last-layer hidden states of the completion tokens (the paper's
"reasoning state"). They come from one forward pass over prompt + completion after
generation: generate() never computes the state of the last token it emits, and a
separate pass gives every completion token exactly as training sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from conceptseg.model.prompts import SYSTEM_PROMPT


@dataclass
class PolicyConfig:
    """Generation settings.

    Attributes:
        max_new_tokens: longest completion (the official run allows 2048: a completion cut
            shorter loses its box and answer, and is marked truncated)
        temperature: sampling temperature for training rollouts (greedy for inference)
        device: "cuda", "cpu" or None (cuda when available)
        dtype: "bfloat16", "float32" or None (bfloat16 on GPU, float32 on CPU)
    """

    max_new_tokens: int = 2048
    temperature: float = 1.0
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")


@dataclass
class PolicyRequest:
    """One question to the policy: its images (reference canvas and/or target) and text."""

    images: list[np.ndarray]
    text: str


@dataclass
class PolicyOutput:
    """What the policy wrote, with its reasoning state.

    Attributes:
        completions: B decoded completions (special tokens removed)
        hidden_states: (B, T, H) last-layer states of the completion tokens, right-padded
        completion_mask: (B, T) bool, True on real completion tokens (up to and
            including the end-of-turn token)
        sequences: (B, P + T) prompt + completion token ids
        prompt_length: P, the (left-padded) prompt length
        truncated: per row, True when the completion reached max_new_tokens without its
            end-of-turn token (cut: its later tags are missing)
    """

    completions: list[str]
    hidden_states: "torch.Tensor"
    completion_mask: "torch.Tensor"
    sequences: "torch.Tensor"
    prompt_length: int
    inputs: dict = field(default_factory=dict, repr=False)
    truncated: list[bool] = field(default_factory=list)


def _device_and_dtype(config: PolicyConfig):
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = config.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, getattr(torch, name)


class Policy:
    """A Qwen2.5-VL model and its processor, optionally with LoRA adapters."""

    def __init__(self, model, processor, config: PolicyConfig | None = None):
        self.model = model
        self.processor = processor
        self.config = config or PolicyConfig()
        # Decoder-only batching needs the padding on the left, so every prompt ends at P.
        self.processor.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(cls, path: str, adapter: str | None = None, config: PolicyConfig | None = None,
                        processor_path: str | None = None) -> "Policy":
        """Loads a Hugging Face directory or hub id, plus a peft LoRA adapter directory.

        Weights saved by transformers 4.x (``model.*``, ``visual.*``) are renamed by
        transformers itself; a Qwen weight the checkpoint lacks is an error, not a random
        initialisation. Tensors that are not Qwen's (the released translator's) are left.
        ``processor_path`` names where the processor comes from when it is not ``path``.
        """
        from transformers import Qwen2_5_VLForConditionalGeneration

        from conceptseg.model.release import ReleaseError, load_processor

        from conceptseg.model.hub import hf_token

        config = config or PolicyConfig()
        device, dtype = _device_and_dtype(config)
        token = hf_token()  # for hub ids; None leaves huggingface_hub's own lookup
        # transformers logs a table of the release's translator tensors as "unexpected";
        # they are expected here, and missing weights are checked below.
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                path, **_dtype_keyword(dtype), output_loading_info=True, token=token)
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight" or not _tied(model)]
        if missing:
            shown = ", ".join(sorted(missing)[:5])
            raise ReleaseError(f"{path} lacks {len(missing)} policy weights ({shown}...); it is incomplete or "
                               "not a Qwen2.5-VL checkpoint.")
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, token=token)
        processor = load_processor(processor_path or path, path, token=token)
        return cls(model.to(device).eval(), processor, config)

    @property
    def hidden_size(self) -> int:
        """Width H of the language model's hidden states."""
        config = self.model.config
        return getattr(config, "text_config", config).hidden_size

    @property
    def device(self):
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def messages(self, request: PolicyRequest) -> list[dict]:
        """The chat messages for one request: system prompt, then images and text."""
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.text}]
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def encode(self, requests: Sequence[PolicyRequest]) -> dict:
        """Left-padded model inputs (ids, mask, pixel values, image grids) for a batch."""
        texts = [
            self.processor.apply_chat_template(self.messages(r), add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        images = [list(r.images) for r in requests]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in inputs.items()}

    def generate(self, requests: Sequence[PolicyRequest], sample: bool = False, num_return_sequences: int = 1,
                 hidden: bool = True, prefix: "PrefixStore | None" = None) -> PolicyOutput:
        """Writes a completion per request (greedy, or sampled for rollouts) and its states.

        ``hidden=False`` skips the extra forward pass (training scores the rollouts itself);
        ``hidden_states`` is then None. With a ``prefix`` store, the prompt part every
        request shares (system prompt and first image) is encoded once and its key/value
        cache reused for every later call with the same part (see :class:`PrefixStore`).
        """
        import torch

        inputs = self.encode(requests)
        eos = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        pad = self.processor.tokenizer.pad_token_id
        shared = None
        if prefix is not None and num_return_sequences == 1:
            shared = prefix.lookup(self, inputs)
        model_inputs = inputs if shared is None else shared.generate_inputs(inputs)
        with torch.no_grad():
            sequences = self.model.generate(
                **model_inputs,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=sample,
                temperature=self.config.temperature if sample else None,
                top_p=None,
                top_k=None,
                num_return_sequences=num_return_sequences,
                eos_token_id=eos,
                pad_token_id=pad,
                # A sampled image or video placeholder would make the text unreadable and the
                # scoring pass expect image features that do not exist.
                suppress_tokens=self._vision_token_ids(),
            )
        prompt_length = inputs["input_ids"].shape[1]
        completion_ids = sequences[:, prompt_length:]
        completion_mask = _completion_mask(completion_ids, eos)
        if num_return_sequences > 1:
            inputs = _repeat_inputs(inputs, num_return_sequences)
        hidden = self.completion_hidden_states(inputs, sequences, completion_mask, shared=shared) if hidden else None
        texts = self.processor.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        truncated = _truncated(completion_ids, eos, self.config.max_new_tokens)
        return PolicyOutput(texts, hidden, completion_mask, sequences, prompt_length, inputs, truncated)

    def completion_hidden_states(self, inputs: dict, sequences, completion_mask, grad: bool = False, shared=None):
        """(B, T, H) last-layer hidden states of the completion tokens of ``sequences``.

        ``shared`` (a prefix from :class:`PrefixStore`) runs the pass over what follows the
        shared prefix only, on a copy of its cache.
        """
        import torch

        prompt_length = inputs["input_ids"].shape[1]
        # Only the states are wanted: one logit row instead of B x T x vocabulary (GBs at 7B).
        with torch.set_grad_enabled(grad):
            if shared is not None:
                out = self.model(**shared.forward_inputs(inputs, sequences, completion_mask), output_hidden_states=True,
                                 **self.logits_to_keep(1))
                return out.hidden_states[-1][:, prompt_length - shared.length:, :]
            out = self.model(**forward_inputs(inputs, sequences, completion_mask), output_hidden_states=True,
                             **self.logits_to_keep(1))
        return out.hidden_states[-1][:, prompt_length:, :]

    def logits_to_keep(self, n: int) -> dict:
        """``logits_to_keep=n`` where the model takes it; transformers before 4.52 computes the
        logits of every position for Qwen2.5-VL (callers keep the last ``n`` themselves)."""
        import inspect

        return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(self.base_model().forward).parameters else {}

    def base_model(self):
        """The Qwen2.5-VL model under any LoRA wrapper (its adapters stay active)."""
        get = getattr(self.model, "get_base_model", None)
        return get() if get is not None else self.model

    def _vision_token_ids(self) -> list[int]:
        tokenizer = self.processor.tokenizer
        names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
        ids = [tokenizer.convert_tokens_to_ids(n) for n in names]
        return [i for i in ids if i is not None and i != tokenizer.unk_token_id]

    def encode_with_response(self, requests: Sequence[PolicyRequest], responses: Sequence[str]):
        """Prompt inputs plus given completions (teacher forcing): (inputs, sequences, completion_mask).

        Each response is followed by the end-of-turn token, right-padded after the
        left-padded prompts, so completion position t is the same token for every row
        whatever the prompt lengths (the official stage 1 can misalign here, method.md §2.6).
        """
        import torch

        inputs = self.encode(requests)
        tokenizer = self.processor.tokenizer
        rows = [tokenizer(r + "<|im_end|>", add_special_tokens=False)["input_ids"] for r in responses]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        sequences = torch.cat([inputs["input_ids"], ids.to(self.device)], dim=1)
        return inputs, sequences, mask.to(self.device)

    def score(self, inputs: dict, sequences, completion_mask, model=None):
        """Log-probabilities (B, T) of the completion tokens and their hidden states (B, T, H).

        One forward pass with gradients through ``model`` (the policy's model, or the
        wrapper a distributed trainer prepared). Logits are kept for the completion
        positions only: the full prompt × vocabulary would dominate memory.
        """
        import torch

        model = model or self.model
        prompt_length = inputs["input_ids"].shape[1]
        steps = sequences.shape[1] - prompt_length
        out = model(**forward_inputs(inputs, sequences, completion_mask), output_hidden_states=True,
                    **self.logits_to_keep(steps + 1), use_cache=False)
        # The logit at position p predicts token p + 1: positions P-1 .. P+T-2 score the completion.
        logits = out.logits[:, -(steps + 1):-1, :].float() / self.config.temperature
        targets = sequences[:, prompt_length:]
        logp = torch.gather(logits, 2, targets.unsqueeze(2)).squeeze(2) - torch.logsumexp(logits, dim=2)
        return logp, out.hidden_states[-1][:, prompt_length:, :]


def _dtype_keyword(dtype) -> dict:
    """from_pretrained's dtype: ``dtype`` from transformers 4.56 on, ``torch_dtype`` before. A
    version check: both land in ``**kwargs``, so no signature tells which one is understood."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype": dtype}


def _tied(model) -> bool:
    config = model.config
    return bool(getattr(config, "tie_word_embeddings", False)
                or getattr(getattr(config, "text_config", None), "tie_word_embeddings", False))


def forward_inputs(inputs: dict, sequences, completion_mask) -> dict:
    """Model keyword arguments for one pass over prompt + completion (``sequences``)."""
    import torch

    out = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    out["input_ids"] = sequences
    out["attention_mask"] = torch.cat([inputs["attention_mask"], completion_mask.long()], dim=1)
    if "mm_token_type_ids" in out:  # covers the prompt only; completions are text
        pad = torch.zeros_like(completion_mask, dtype=out["mm_token_type_ids"].dtype)
        out["mm_token_type_ids"] = torch.cat([out["mm_token_type_ids"], pad], dim=1)
    return out


def _truncated(completion_ids, eos: int, max_new_tokens: int) -> list[bool]:
    """Per row: the completion used the whole budget and never wrote the end-of-turn token."""
    ended = (completion_ids == eos).any(dim=1).tolist()
    return [not e and completion_ids.shape[1] >= max_new_tokens for e in ended]


def _completion_mask(completion_ids, eos: int):
    """True up to and including the first end-of-turn token of each row."""
    import torch

    is_eos = completion_ids == eos
    # positions after the first eos: cumulative count of eos strictly before them > 0
    after = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return ~after


def _repeat_inputs(inputs: dict, n: int) -> dict:
    """Repeats each request's inputs n times in a row, as generate() orders its samples."""
    import torch

    out = {}
    for key, value in inputs.items():
        if key in ("pixel_values", "image_grid_thw"):
            continue
        out[key] = value.repeat_interleave(n, dim=0)
    # Pixel rows belong to images, not to requests: repeat each request's block of rows.
    grids = inputs["image_grid_thw"]
    per_image = grids.prod(dim=1).tolist()
    images_per_request = len(per_image) // inputs["input_ids"].shape[0]
    blocks, grid_blocks, start = [], [], 0
    for r in range(inputs["input_ids"].shape[0]):
        rows = sum(per_image[r * images_per_request : (r + 1) * images_per_request])
        block = inputs["pixel_values"][start : start + rows]
        grid = grids[r * images_per_request : (r + 1) * images_per_request]
        blocks += [block] * n
        grid_blocks += [grid] * n
        start += rows
    out["pixel_values"] = torch.cat(blocks)
    out["image_grid_thw"] = torch.cat(grid_blocks)
    return out
