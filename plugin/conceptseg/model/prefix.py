"""The demonstrations encoded once per run: the shared prompt prefix and its key/value cache.

Every episode of a run starts the same way: the system prompt, then the reference canvas
(the demonstrations' mosaic), then the target, then the task text (the order the released
model was trained on, method.md §2.3). The part up to the end of the canvas is the same
for every target, so its vision features and its key/value cache are computed once; each
later call copies the cache per batch row and encodes only the target and the text.

Only a prefix can be reused: the text comes after the target, so it is encoded for every
target although it does not change. An order canvas → text → target would let the text
join the prefix too (a smaller per-target prefill), but it is not the order the released
model was trained on, so the prompt keeps the official order.

Rows must be unpadded (all of one length) to share a prefix: the route's episodes are,
since every target is resized to 600² and the text is the run's. Anything else (padded
rows, one image, rows that differ in the prefix, a transformers without pre-encoded
image inputs) falls back to encoding everything.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field


@dataclass
class SharedPrefix:
    """The cache of one prefix (batch of one) and what the rest of a prompt needs to follow it.

    Attributes:
        key: fingerprint of the prefix's token ids and first image's pixels
        length: L, number of prefix tokens
        cache: the transformers Cache after the prefix (never modified: copied per call)
        policy: the Policy it was computed with
    """

    key: str
    length: int
    cache: object
    policy: object
    _rest: dict = field(default_factory=dict, repr=False)

    def generate_inputs(self, inputs: dict) -> dict:
        """``generate`` keyword arguments: full ids and grids (for the 3D positions), the
        images after the prefix already encoded, and a copy of the cache for every row."""
        out = {k: v for k, v in inputs.items() if k != "pixel_values"}
        out["mm_encoder_outputs"] = self._rest_features(inputs)
        out[_cache_argument(self.policy)] = self._cache_for(inputs["input_ids"].shape[0])
        return out

    def forward_inputs(self, inputs: dict, sequences, completion_mask) -> dict:
        """Forward keyword arguments for the pass over what follows the prefix (hidden states)."""
        import torch

        from conceptseg.model.policy import forward_inputs

        full = forward_inputs(inputs, sequences, completion_mask)
        mm = full.get("mm_token_type_ids")
        if mm is None:  # get_rope_index reads the image spans from it: 1 on image tokens
            image_pad = self.policy.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            mm = (full["input_ids"] == image_pad).int()
        rope = self.policy.base_model().model.get_rope_index
        positions, _ = rope(full["input_ids"], image_grid_thw=full["image_grid_thw"],
                            attention_mask=full["attention_mask"], mm_token_type_ids=mm)
        return {"input_ids": full["input_ids"][:, self.length:], "attention_mask": full["attention_mask"],
                "position_ids": positions[:, :, self.length:], "mm_encoder_outputs": self._rest_features(inputs),
                _cache_argument(self.policy): self._cache_for(sequences.shape[0]), "use_cache": True}

    def _cache_for(self, rows: int):
        cache = copy.deepcopy(self.cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def _rest_features(self, inputs: dict) -> dict:
        """The vision features of every image after the prefix (one per row: the targets)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pixel_values = inputs["pixel_values"]
        if self._rest.get("pixels") is not pixel_values:  # generate and the hidden-state pass share one encoding
            pixels, grids = _images_after_first(inputs)
            with torch.no_grad():
                feats = self.policy.base_model().model.get_image_features(pixels, grids, return_dict=True)
            # Holding the tensor keeps its identity unique while it is the key.
            self._rest = {"pixels": pixel_values,
                          "features": {"image": BaseModelOutputWithPooling(pooler_output=feats.pooler_output)}}
        return self._rest["features"]


class PrefixStore:
    """Holds the newest shared prefix, computed on first use.

    A route keeps one store for its life (a run): the key covers the prefix's tokens and the
    canvas's pixels, so other demonstrations compute a new prefix by themselves, but not the
    weights, which must not change while the store is used. ``hits`` and ``misses`` count
    calls served from the cache and prefixes computed; ``unshared`` counts, by reason, the
    calls that shared no prefix and encoded everything (nothing is reused without a word).
    """

    def __init__(self):
        self.prefix: SharedPrefix | None = None
        self.hits = 0
        self.misses = 0
        self.unshared: dict[str, int] = {}

    def lookup(self, policy, inputs: dict) -> SharedPrefix | None:
        """The shared prefix for these inputs (computed if new), or None when they share none."""
        found = _prefix_of(policy, inputs)
        if isinstance(found, str):
            self.unshared[found] = self.unshared.get(found, 0) + 1
            return None
        key, length = found
        if self.prefix is not None and self.prefix.key == key:
            self.hits += 1
            return self.prefix
        self.misses += 1
        self.prefix = SharedPrefix(key, length, _encode_prefix(policy, inputs, length), policy)
        return self.prefix

    def stats(self) -> dict:
        """{"hits", "misses", "unshared": {reason: calls}}: what the store did, for the run record."""
        return {"hits": self.hits, "misses": self.misses, "unshared": dict(self.unshared)}


def _prefix_of(policy, inputs: dict) -> tuple[str, int] | str:
    """(key, L) when every row is unpadded and starts with the same tokens up to the end of
    the same first image; otherwise why not, in words."""
    import torch

    ids, grids = inputs["input_ids"], inputs.get("image_grid_thw")
    rows = ids.shape[0]
    if not reuse_supported(policy):
        return "this transformers version cannot take the target's image features pre-encoded"
    if grids is None or grids.shape[0] < 2 * rows or grids.shape[0] % rows:
        return "the prompt has no image before the target's (a text query): nothing to share"
    if not bool(inputs["attention_mask"].all()):
        return "the rows are padded (prompts of different lengths)"
    vision_end = policy.processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    ends = (ids[0] == vision_end).nonzero()
    if ends.numel() == 0:
        return "the prompt has no image"
    length = int(ends[0]) + 1
    if not bool((ids[:, :length] == ids[:1, :length]).all()):
        return "the rows' prompts differ before the end of the first image"
    first = _first_image_pixels(inputs)
    if any(not torch.equal(first[0], other) for other in first[1:]):
        return "the rows' first images differ"
    digest = hashlib.sha1(ids[0, :length].cpu().numpy().tobytes())
    digest.update(first[0].float().cpu().numpy().tobytes())
    digest.update(grids[0].cpu().numpy().tobytes())
    return digest.hexdigest(), length


def _per_row_images(inputs: dict):
    """Per image, in processor order (row by row): its slice of pixel rows and its grid."""
    grids = inputs["image_grid_thw"]
    sizes = grids.prod(dim=1).tolist()
    start = 0
    for size, grid in zip(sizes, grids):
        yield slice(start, start + size), grid
        start += size


def _first_image_pixels(inputs: dict) -> list:
    per_row = inputs["image_grid_thw"].shape[0] // inputs["input_ids"].shape[0]
    images = list(_per_row_images(inputs))
    return [inputs["pixel_values"][images[i][0]] for i in range(0, len(images), per_row)]


def _images_after_first(inputs: dict):
    """Pixel rows and grids of every image but each row's first."""
    import torch

    per_row = inputs["image_grid_thw"].shape[0] // inputs["input_ids"].shape[0]
    images = [img for i, img in enumerate(_per_row_images(inputs)) if i % per_row]
    pixels = torch.cat([inputs["pixel_values"][rows] for rows, _ in images])
    return pixels, torch.stack([grid for _, grid in images])


def _encode_prefix(policy, inputs: dict, length: int):
    """One forward pass over the first row's prefix; returns its cache."""
    import torch

    first = next(_per_row_images(inputs))
    kwargs = dict(input_ids=inputs["input_ids"][:1, :length], attention_mask=inputs["attention_mask"][:1, :length],
                  pixel_values=inputs["pixel_values"][first[0]], image_grid_thw=first[1][None])
    if "mm_token_type_ids" in inputs:
        kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"][:1, :length]
    with torch.no_grad():
        out = policy.model(**kwargs, use_cache=True)
    return getattr(out, "cache", None) or out.past_key_values


def reuse_supported(policy) -> bool:
    """Whether the model takes the images after the prefix pre-encoded (``mm_encoder_outputs``);
    transformers before 5.2x does not, and every call then encodes everything."""
    return "mm_encoder_outputs" in _forward_arguments(policy)


def _forward_arguments(policy) -> set[str]:
    import inspect

    return set(inspect.signature(policy.base_model().forward).parameters)


def _cache_argument(policy) -> str:
    """The cache's keyword: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in _forward_arguments(policy) else "past_key_values"
