"""Stage 1: align the concept translator to a frozen policy and a frozen segmenter.

No generation (method.md §2.6): the assistant turn is teacher-forced to a response that
holds the ground-truth box (and the true <check> box when the mosaic withholds one), with
empty reasoning, rule and answer. One forward pass gives the response's hidden states; the
translator turns them into concept tokens; the segmenter (SAM 2 with the same box, SAM 3
with the fixed word ``config.sam_text``) turns the tokens into logits; the loss is BCE +
Dice against the 600² ground truth. Only the translator receives gradients.

The official response uses an empty <color> tag where ours has <rule>; ours keeps the one
format the parser and stage 2 use. Targets without the concept (empty masks) have no box
to force and are left out of the loss.
"""

from __future__ import annotations

import torch

from conceptseg.model.policy import PolicyRequest
from conceptseg.model.prompts import Completion, format_completion
from conceptseg.training.grpo import mask_loss
from conceptseg.training.segment import ground_truth, logits_600


def teacher_response(episode) -> str:
    """The forced completion: empty think/rule/answer, the true check and box."""
    return format_completion(Completion(think="", rule="", check=episode.proxy_box, bbox=episode.gt_box, answer="", raw=""))


def step(ctx, episodes) -> tuple[torch.Tensor, dict]:
    """Mask loss of the translator on ``episodes``; returns (loss, metrics)."""
    usable = [e for e in episodes if e.gt_box is not None]
    if not usable:  # nothing to align on: a zero loss that still touches the translator
        zero = sum(p.sum() for p in ctx.translator.parameters()) * 0.0
        return zero, {"mask_loss": 0.0, "mask_iou": float("nan"), "skipped_empty": len(episodes)}
    policy = ctx.policy
    requests = [PolicyRequest(images=e.images, text=e.prompt) for e in usable]
    inputs, sequences, completion_mask = policy.encode_with_response(requests, [teacher_response(e) for e in usable])
    hidden = policy.completion_hidden_states(inputs, sequences, completion_mask, grad=False)
    tokens = ctx.translator(hidden, completion_mask).tokens
    logits = torch.stack([
        logits_600(ctx.segmenter, e, tokens[i], box_600=e.gt_box, text=ctx.config.sam_text)
        for i, e in enumerate(usable)
    ])
    target = ground_truth(usable, logits.device)
    loss = mask_loss(logits, target)
    with torch.no_grad():
        pred = logits > 0
        inter = (pred & (target > 0)).flatten(1).sum(1).float()
        union = (pred | (target > 0)).flatten(1).sum(1).float().clamp(min=1)
    return loss, {"mask_loss": float(loss.detach()), "mask_iou": float((inter / union).mean()),
                  "skipped_empty": len(episodes) - len(usable)}
