"""Stage 2: Meta-GRPO on the policy (LoRA adapters or every weight) and the translator.

One step, as the paper's trainer (method.md §2.7): sample G completions per episode; score
format and box (box × check with a proxy) from the text; run the policy again with
gradients on prompt + completion for the log-probabilities and the hidden states; the
translator turns those into concept tokens and the frozen segmenter into masks, which give
the mask-IoU reward and the translator's mask loss; advantages are normalised within each
group; loss = clipped policy loss + β·KL to the reference + 0.01 × mask loss.

With one update per batch (the paper's μ = 1) the old log-probabilities are the current
ones detached, so the ratio is 1 and the clip never binds; clip_fraction is logged anyway.
A target with an empty mask has no box: its rollouts' total reward is unscorable (NaN),
their advantage 0, and only the translator learns from them (to predict nothing).
"""

from __future__ import annotations

import math
import numpy as np
import torch

from conceptseg.model.policy import PolicyRequest
from conceptseg.model.prompts import CompletionParseError, parse_completion
from conceptseg.training.grpo import group_advantages, mask_loss, policy_loss, total_loss
from conceptseg.training.rewards import REWARDS, mask_iou_reward
from conceptseg.training.segment import ground_truth, logits_600


def _parsed(completion: str, require_check: bool):
    try:
        return parse_completion(completion, require_check=require_check)
    except CompletionParseError:
        return None


def _reference_logp(ctx, inputs, sequences, completion_mask):
    """Log-probabilities under the reference policy: adapters disabled, or the frozen copy."""
    if ctx.config.beta == 0:
        return None
    policy = ctx.policy
    with torch.no_grad():
        if ctx.reference is not None:
            return policy.score(inputs, sequences, completion_mask, model=ctx.reference)[0]
        with policy.model.disable_adapter():
            return policy.score(inputs, sequences, completion_mask, model=policy.model)[0]


def step(ctx, episodes) -> tuple[torch.Tensor, dict]:
    """The Meta-GRPO loss on ``episodes`` (G rollouts each); returns (loss, metrics)."""
    config, policy = ctx.config, ctx.policy
    group = config.group_size
    requests = [PolicyRequest(images=e.images, text=e.prompt) for e in episodes]
    policy.model.eval()  # generation with the KV cache (gradient checkpointing is train-only)
    out = policy.generate(requests, sample=True, num_return_sequences=group, hidden=False)
    policy.model.train()
    rollouts = [episodes[i // group] for i in range(len(out.completions))]

    format_fn, box_fn = REWARDS[config.reward]
    fmt = [format_fn(c, e.require_check) for c, e in zip(out.completions, rollouts)]
    box = [box_fn(c, e.gt_box, e.proxy_box) for c, e in zip(out.completions, rollouts)]
    logp, hidden = policy.score(out.inputs, out.sequences, out.completion_mask, model=ctx.model)
    ref_logp = _reference_logp(ctx, out.inputs, out.sequences, out.completion_mask)

    tokens = ctx.translator(hidden, out.completion_mask).tokens
    logits = []
    for i, (completion, episode) in enumerate(zip(out.completions, rollouts)):
        parsed = _parsed(completion, episode.require_check)
        box_600 = parsed.bbox if parsed is not None else None
        text = (parsed.answer if parsed is not None and parsed.answer else "") or config.sam_text
        logits.append(logits_600(ctx.segmenter, episode, tokens[i], box_600=box_600, text=text))
    logits = torch.stack(logits)
    target = ground_truth(rollouts, logits.device)
    masks = mask_loss(logits, target)
    pred = (logits.detach() > 0).cpu().numpy()
    miou = [mask_iou_reward(pred[i], e.mask_600) for i, e in enumerate(rollouts)]

    total = [math.nan if b is None else f + b + m for f, b, m in zip(fmt, box, miou)]
    rewards = torch.tensor(total, dtype=torch.float32, device=logp.device)
    advantages = group_advantages(rewards, group)
    grpo, parts = policy_loss(logp, logp.detach(), ref_logp, advantages, out.completion_mask,
                              epsilon=config.epsilon, beta=config.beta)
    loss = total_loss(grpo, masks)
    scored = [b for b in box if b is not None]
    lengths = out.completion_mask.sum(dim=1).float()
    return loss, {
        "reward": _mean([t for t in total if not math.isnan(t)]),
        "reward_std": float(np.nanstd(total)) if scored else math.nan,
        "reward_format": _mean(fmt),
        "reward_box": _mean(scored),
        "reward_mask_iou": _mean(miou),
        "kl": parts["kl"],
        "clip_fraction": parts["clip_fraction"],
        "mask_loss": float(masks.detach()),
        "policy_loss": float(grpo.detach()),
        "completion_length": float(lengths.mean()),
        "unscorable": len(total) - len(scored),
    }


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan
