"""Does Meta-GRPO learn? Stage 2 on procedural concepts, reward measured on held-out concepts.

CPU, fixed seed, the tiny random bundle (a ~10 M-parameter Qwen2.5-VL, random SAM 2 hiera-t).
Procedural concepts (shapes, colours, textures, camouflage, odd one out) are split by name:
training episodes come from some concepts, the held-out reward from the others, never seen
in training. A random policy never writes the answer format, so a supervised warm start
(``--sft-steps``) first teaches it on *training* concepts: the stage-1 teacher-forced
response with the concept as rule and answer, under a sampled softmax (the response tokens
plus 16 384 random vocabulary entries), because the full 151 k-entry softmax is what makes a
CPU step slow. Stage 2 then runs ``--steps`` Meta-GRPO steps (the engine's ``stage2.step``:
G rollouts, the paper's rewards and loss, full fine-tune with the warm start as reference),
and after every window of steps the held-out episodes are rolled out (sampled, temperature 1)
and scored with the same rewards. The table prints the held-out reward per window; the last
line compares the last fifth of the windows with the first fifth.

Finding (2026-11-26, 2-core CPU): with the defaults the run takes 934 s (15.6 min) and does
NOT clearly learn on held-out concepts (first fifth 0.066, last fifth 0.082): after 1000
warm-start steps (sampled-softmax NLL 0.58) no held-out rollout at temperature 1 is well
formed, so format and box rewards stay 0 and only the mask IoU (concept tokens alone into a
random SAM 2) moves, by noise. The reward on training episodes sits higher (0.18–0.36).

Usage: python benchmarks/learning.py [--steps 60] [--window 6] [--sft-steps 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

HELD_OUT = ("square", "blue object", "dotted object", "star")


def _specs(concepts, per_concept, size, seed):
    from conceptseg.training.episodes import TrainingSample, build_specs, in_memory
    from conceptseg.training.procedural import generate

    items = generate(list(concepts), per_concept=per_concept, size=size, seed=seed)
    samples = [TrainingSample(f"{i.concept}-{k}", i.concept, in_memory(i.image, i.mask)) for k, i in enumerate(items)]
    return build_specs(samples, seed=seed)


def _sft_response(episode) -> str:
    from conceptseg.prompts import Completion, format_completion

    # Rule and answer words that do not name the concept: the format must carry over to
    # held-out concepts, whose names the warm start never shows.
    return format_completion(Completion(think="", rule="the boxed objects", check=episode.proxy_box,
                                        bbox=episode.gt_box, answer="object", raw=""))


def _warm_start_loss(policy, episodes, rng, negatives: int = 16384):
    """Teacher-forced NLL of the responses under a sampled softmax (the tokens of the batch
    plus ``negatives`` random vocabulary entries): the full 151 k-entry softmax is what makes a
    CPU step slow, and the format needs only a few dozen tokens."""
    from conceptseg.policy import PolicyRequest, forward_inputs

    requests = [PolicyRequest(images=e.images, text=e.prompt) for e in episodes]
    inputs, sequences, mask = policy.encode_with_response(requests, [_sft_response(e) for e in episodes])
    prompt = inputs["input_ids"].shape[1]
    out = policy.model(**forward_inputs(inputs, sequences, mask), output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1][:, prompt - 1 : -1]  # the state before each response token
    targets = sequences[:, prompt:]
    weight = policy.model.get_output_embeddings().weight
    sampled = torch.from_numpy(rng.integers(0, weight.shape[0], negatives))
    candidates = torch.unique(torch.cat([targets[mask], sampled]))
    logits = hidden[mask] @ weight[candidates].T
    return torch.nn.functional.cross_entropy(logits, torch.searchsorted(candidates, targets[mask]))


def _held_out_reward(ctx, episodes) -> dict:
    from conceptseg.training import stage2

    rows = []
    with torch.no_grad():
        for start in range(0, len(episodes), 4):
            _, metrics = stage2.step(ctx, episodes[start : start + 4])
            rows.append(metrics)
    keys = ("reward", "reward_format", "reward_box", "reward_mask_iou")
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--sft-steps", type=int, default=1000)
    parser.add_argument("--sft-lr", type=float, default=1e-2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4, help="policy learning rate")
    parser.add_argument("--translator-lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--held-out", type=int, default=8, help="held-out episodes scored per window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from conceptseg.checkpoint import load_bundle
    from conceptseg.policy import PolicyRequest
    from conceptseg.testing import build_tiny_bundle
    from conceptseg.training import stage2
    from conceptseg.training.episodes import materialise
    from conceptseg.training.loop import StepContext, TrainConfig, _trainable_policy
    from conceptseg.training.procedural import concept_names

    began = time.perf_counter()
    torch.manual_seed(args.seed)
    train_concepts = [c for c in concept_names() if c not in HELD_OUT]
    train_eps = [materialise(s) for s in _specs(train_concepts, 6, args.size, args.seed)]
    held_specs = _specs(HELD_OUT, 4, args.size, args.seed + 1)
    held_eps = [materialise(s) for s in held_specs[:: max(1, len(held_specs) // args.held_out)]][: args.held_out]
    bundle = load_bundle(build_tiny_bundle(tempfile.mkdtemp(), seed=args.seed, max_new_tokens=args.max_new_tokens), device="cpu")
    policy = bundle.policy
    config = TrainConfig(stage=2, group_size=args.group_size, lora=False, learning_rate=args.lr, beta=0.04)
    model, reference = _trainable_policy(bundle, config)
    rng = np.random.default_rng(args.seed)

    # Supervised warm start on training concepts: the answer format, nothing about held-out ones.
    sft = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.sft_lr)
    model.train()
    for _ in range(args.sft_steps):
        batch = [train_eps[i] for i in rng.choice(len(train_eps), 8, replace=False)]
        loss = _warm_start_loss(policy, batch, rng)
        loss.backward()
        sft.step()
        sft.zero_grad(set_to_none=True)
    if args.sft_steps:
        print(f"warm start: {args.sft_steps} supervised steps, last token NLL {float(loss):.3f}", flush=True)
        reference = _trainable_policy(bundle, config)[1]  # the reference is the warm-started policy

    translator = bundle.translator.train()
    optimizer = torch.optim.AdamW([
        {"params": list(translator.parameters()), "lr": args.translator_lr},
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": args.lr},
    ])
    ctx = StepContext(policy, model, translator, bundle.segmenter, config, reference)
    rows = [{"window": 0, "steps": "0 (start)", **_held_out_reward(ctx, held_eps), "train_reward": float("nan")}]
    print(rows[-1], flush=True)
    window_rewards = []
    for step in range(1, args.steps + 1):
        batch = [train_eps[i] for i in rng.choice(len(train_eps), args.batch_size, replace=False)]
        loss, metrics = stage2.step(ctx, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(translator.parameters()) + list(model.parameters()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_rewards.append(metrics["reward"])
        if step % args.window == 0:
            rows.append({"window": step // args.window, "steps": f"{step - args.window + 1}-{step}",
                         **_held_out_reward(ctx, held_eps), "train_reward": float(np.nanmean(window_rewards))})
            window_rewards = []
            print(rows[-1], flush=True)

    print(f"\n{time.perf_counter() - began:.0f} s on CPU; held-out concepts: {', '.join(HELD_OUT)}\n")
    print("| window | stage-2 steps | held-out reward | format | box | mask IoU | train reward |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['window']} | {r['steps']} | {r['reward']:.3f} | {r['reward_format']:.3f} | {r['reward_box']:.3f} "
              f"| {r['reward_mask_iou']:.3f} | {r['train_reward']:.3f} |")
    windows = [r["reward"] for r in rows[1:]]
    fifth = max(1, len(windows) // 5)
    first, last = float(np.mean(windows[:fifth])), float(np.mean(windows[-fifth:]))
    verdict = "learns" if last > first + 0.1 else "DOES NOT clearly learn"
    print(f"\nfirst fifth {first:.3f} → last fifth {last:.3f} (Δ {last - first:+.3f}): {verdict}")


if __name__ == "__main__":
    main()
