"""GRPO's arithmetic: group advantages, the clipped policy loss with a k3 KL, the mask loss.

Shapes: B = groups × G rollouts (the G rollouts of a group are consecutive), T completion
tokens. Defaults follow the paper's code (method.md §2.6): ε = 0.2, β = 0.04, advantages
(r − mean) / (std + 1e-4) with the unbiased std over the G rollouts, per-sequence token
mean, total = GRPO + 0.01 × (BCE + Dice) on the translator's masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPSILON = 0.2
BETA = 0.04
STD_EPS = 1e-4
MASK_LOSS_WEIGHT = 0.01


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) rewards → (B,) advantages normalised within each group of ``group_size``.

    NaN rewards (unscorable rollouts) get advantage 0 and do not enter their group's
    mean or std: an unscorable rollout should neither be pushed up nor down. A group
    whose scorable rewards are all equal has std 0 and gets advantages 0.
    """
    if group_size < 2:
        raise ValueError(f"GRPO needs at least 2 rollouts per group, got {group_size}.")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    grouped = rewards.view(-1, group_size).float()
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1, keepdim=True)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    var = (torch.where(valid, grouped - mean, torch.zeros_like(grouped)) ** 2).sum(dim=1, keepdim=True)
    std = torch.sqrt(var / (count - 1).clamp(min=1))
    advantages = (grouped - mean) / (std + STD_EPS)
    advantages = torch.where(valid & (count > 1), advantages, torch.zeros_like(advantages))
    return advantages.view(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π‖π_ref): exp(r − l) − (r − l) − 1, always ≥ 0."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = EPSILON,
    beta: float = BETA,
) -> tuple[torch.Tensor, dict]:
    """The clipped GRPO loss, (B,T) log-probs in; a scalar and its parts (kl, clip_fraction) out.

    Each sequence's loss is its token mean over ``mask``; the batch loss is the mean of those.
    """
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv
    per_token = -torch.min(unclipped, clipped)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = per_token + beta * kl
    lengths = mask.sum(dim=1).clamp(min=1)
    loss = ((per_token * mask).sum(dim=1) / lengths).mean()
    clip_fraction = (((ratio < 1 - epsilon) | (ratio > 1 + epsilon)).float() * mask).sum() / mask.sum().clamp(min=1)
    mean_kl = ((kl * mask).sum(dim=1) / lengths).mean()
    return loss, {"kl": float(mean_kl.detach()), "clip_fraction": float(clip_fraction)}


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of pixel-mean BCE-with-logits + Dice(sigmoid, smooth 1); (B,H,W) in."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(dim=1)
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = 1 - (2 * (prob * flat).sum(dim=1) + 1) / (prob.sum(dim=1) + flat.sum(dim=1) + 1)
    return (bce + dice).mean()


def total_loss(grpo: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Stage-2 loss: the policy loss plus 0.01 × the translator's mask loss."""
    return grpo if masks is None else grpo + MASK_LOSS_WEIGHT * masks
