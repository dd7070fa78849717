"""The segmenter inside training: concept tokens (with gradients) → mask logits at 600²."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conceptseg.model.episode import TARGET_SIZE
from conceptseg.segmenters import is_sam3
from conceptseg.training.episodes import TrainingEpisode


def logits_600(segmenter, episode: TrainingEpisode, tokens: torch.Tensor, box_600=None, text: str = "") -> torch.Tensor:
    """(600, 600) float32 logits for ``episode``'s target that backpropagate into ``tokens``.

    The segmenter sees the target at its own resolution (as the paper's ``sam_image``); its
    logits are resized bilinearly to 600², where the mask loss and the mask IoU are taken.
    SAM 2 gets ``box_600`` (mapped back to the image) plus the tokens, SAM 3 ``text`` plus
    the tokens (method.md §1.3).
    """
    segmenter.embed(episode.target_image, episode.target_key)
    if is_sam3(segmenter):
        logits = segmenter.predict_with_grad(episode.target_key, text, concept_tokens=tokens).logits
    else:
        box = None if box_600 is None else episode.target_map.to_original(box_600)
        logits = segmenter.predict_with_grad(episode.target_key, box=box, concept_tokens=tokens)
    return F.interpolate(logits[None, None].float(), size=(TARGET_SIZE, TARGET_SIZE), mode="bilinear",
                         align_corners=False)[0, 0]


def ground_truth(episodes, device) -> torch.Tensor:
    """(B, 600, 600) float ground-truth masks of ``episodes``."""
    return torch.stack([torch.from_numpy(e.mask_600) for e in episodes]).to(device).float()
