"""Issue 15: the reasoning route in batches, the demonstrations encoded once, and rule reuse.

Usage: python benchmarks/batching.py [--bundle DIR] [--targets 16] [--repeats 3] [--threads N]

Without --bundle a tiny random bundle is built whose processor sizes images as the
released model's does (441 tokens per 600² image, so an episode has the released token
counts; the weights are tiny: on CPU the numbers are ratios, not a 7B policy's). Targets
are nuclei tiles (128², real images) from the stardist wheel, 3 tiles are the
demonstrations. Each configuration runs ``--repeats`` times, interleaved with the others,
and the median is shown (the CPUs are shared). Three tables:

1. Batching: images/s of the reasoning route (episode → generate → hidden pass →
   translator → segmenter) at B = 1, 4, 8, with the prefix reused, and B = 1 without it.
   Goal on GPU: B = 8 ≥ 2.5× B = 1.
2. Prefill: seconds per target of the prompt's encoding (the model's generate with one new
   token, inputs prepared beforehand), re-encoding everything vs the canvas's cache reused,
   and the processor's CPU time (both ways the same). Goal: ≤ 0.3× on the reused side.
   The prompt order (canvas, target, text: the released model's) limits what can be
   reused to the system prompt and the canvas; the table gives the token counts and the
   ratio of the two at the 7B shape by FLOPs (the tiny model's arithmetic is too small for
   its time to show it).
3. Decoded tokens per target, reasoning-fast ÷ reasoning, on the same targets (goal ≤ 0.1×):
   with the bundle's own policy, and with a scripted policy writing a full answer of
   typical length (a chain of thought of ~500 tokens, as issue 15 puts it) against the
   rule-reuse answer, which measures what the two formats cost. A random tiny policy never
   writes its end-of-turn token, so both of its routes decode max_new_tokens (ratio 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

THINK = ("The reference image shows several bright oval blobs on a dark background; the red boxes each "
         "hold one blob of similar size and brightness, with smooth edges and no internal texture. ") * 14


def _tiles(n: int):
    from conceptseg.datasets import demo_data
    from conceptseg.imaging import to_rgb_float
    from conceptseg.types import Demonstration

    image, labels = demo_data.nuclei(demo_data.fetch_demo_files())
    image = to_rgb_float(image)
    tiles = [(image[r:r + 128, c:c + 128], labels[r:r + 128, c:c + 128] > 0)
             for r in range(0, 512, 128) for c in range(0, 512, 128)]
    demos = [Demonstration(tiles[i][0], tiles[i][1], f"demo{i}") for i in (0, 5, 10)]
    targets = [t for i, (t, _) in enumerate(tiles) if i not in (0, 5, 10)]
    return demos, [targets[i % len(targets)] for i in range(n)]


def _median_rates(bundle, demos, targets, configs, repeats: int) -> list[float]:
    """Median images/s per (batch, reuse) configuration, the configurations interleaved."""
    rates = [[] for _ in configs]
    for _ in range(repeats):
        for i, (batch, reuse) in enumerate(configs):
            rates[i].append(_throughput(bundle, demos, targets, batch, reuse))
    return [float(np.median(r)) for r in rates]


def _throughput(bundle, demos, targets, batch: int, reuse: bool) -> float:
    from conceptseg.routes.reasoning import ReasoningConfig, ReasoningRoute

    route = ReasoningRoute(bundle, ReasoningConfig(question="nucleus", reuse_prefix=reuse))
    route.fit(demos)
    route.segment_batch(targets[:1])  # warm-up: first calls allocate
    bundle.segmenter.clear_cache()
    start = time.perf_counter()
    for i in range(0, len(targets), batch):
        route.segment_batch(targets[i:i + batch])
    return len(targets) / (time.perf_counter() - start)


def _prefill(bundle, demos, targets, repeats: int) -> dict:
    """Seconds per target: the processor (CPU, both ways) and the model's prefill, re-encoding
    everything vs the canvas's cache reused; and the token counts L (prefix) and P (prompt)."""
    import torch

    from conceptseg.model.prefix import PrefixStore
    from conceptseg.routes.reasoning import ReasoningConfig, ReasoningRoute

    route = ReasoningRoute(bundle, ReasoningConfig(question="nucleus"))
    route.fit(demos)
    policy = bundle.policy
    requests = [route._episode(t)[0] for t in targets]
    start = time.perf_counter()
    encoded = [policy.encode([r]) for r in requests]
    processor = (time.perf_counter() - start) / len(requests)
    store = PrefixStore()
    shared = store.lookup(policy, encoded[0])  # the canvas, once per run
    one = dict(max_new_tokens=1, do_sample=False, pad_token_id=policy.processor.tokenizer.pad_token_id)
    times = {"plain": [], "reused": []}
    with torch.no_grad():
        for _ in range(repeats):
            for name in times:
                start = time.perf_counter()
                for inputs in encoded:
                    kwargs = inputs if name == "plain" else shared.generate_inputs(inputs)
                    policy.model.generate(**kwargs, **one)
                times[name].append((time.perf_counter() - start) / len(encoded))
    return dict(processor=processor, plain=float(np.median(times["plain"])), reused=float(np.median(times["reused"])),
                prefix=shared.length, prompt=encoded[0]["input_ids"].shape[1])


def _flops_7b(prompt: int, prefix: int, image_tokens: int = 441) -> float:
    """Per-target prefill FLOPs at the 7B shape, reused ÷ plain (2 x parameters x tokens; the
    ViT (0.67 B) sees 4 patches per image token, the language model (6.5 B without
    embeddings) every token; attention over ~1 k tokens is a few % and left out)."""
    vit, llm, patches = 0.67e9, 6.5e9, 4 * image_tokens
    plain = 2 * vit * 2 * patches + 2 * llm * prompt
    reused = 2 * vit * patches + 2 * llm * (prompt - prefix)
    return reused / plain


def _tokens(bundle, demos, targets) -> tuple[float, float]:
    """Mean decoded tokens per target: reasoning, reasoning-fast (None when no rule could be induced)."""
    from conceptseg.routes.reasoning import ReasoningConfig, ReasoningRoute
    from conceptseg.routes.reasoning_fast import ReasoningFastRoute, RuleInductionError

    config = ReasoningConfig(question="nucleus")
    full = ReasoningRoute(bundle, config)
    full.fit(demos)
    n_full = np.mean([d["decoded_tokens"] for _, d in full.segment_batch(targets)])
    fast = ReasoningFastRoute(bundle, config)
    try:
        fast.fit(demos)
    except RuleInductionError:
        return float(n_full), None
    n_fast = np.mean([d["decoded_tokens"] for _, d in fast.segment_batch(targets)])
    return float(n_full), float(n_fast)


def _scripted(bundle):
    from conceptseg.testing import ScriptedPolicy

    full = (f"<think>{THINK.strip()}</think><rule>nuclei are bright, smooth ovals of similar size</rule>"
            "<check>[12, 20, 80, 90]</check><bbox>[150, 300, 449, 599]</bbox><answer>nucleus</answer>")
    fast = "<bbox>[150, 300, 449, 599]</bbox><answer>nucleus</answer>"
    policy = ScriptedPolicy(bundle.policy, lambda r: fast if "Do not reason" in r.text else full)
    return dataclasses.replace(bundle, policy=policy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle directory (default: build a tiny one)")
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()

    import torch

    from conceptseg.model.checkpoint import load_bundle
    from conceptseg.testing import RELEASED_MAX_PIXELS, build_tiny_bundle
    from conceptseg.testing.scratch import scratch_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.bundle or build_tiny_bundle(scratch_dir("tiny-bundle-"), tie_embeddings=False,
                                            max_pixels=RELEASED_MAX_PIXELS)
    bundle = load_bundle(path)
    demos, targets = _tiles(args.targets)
    device = str(bundle.policy.device)
    print(f"bundle {path} on {device}, {len(targets)} targets, max_new_tokens {bundle.policy.config.max_new_tokens}, "
          f"torch threads {torch.get_num_threads()}\n")

    configs = [(1, False), (1, True), (4, True), (8, True), (8, False)]
    rates = _median_rates(bundle, demos, targets, configs, args.repeats)
    print(f"1. batching (reasoning route, images/s, median of {args.repeats}; goal on GPU: B = 8 ≥ 2.5× B = 1)")
    print(f"{'B':>3} {'prefix reused':>14} {'images/s':>9} {'× B=1 plain':>12}")
    for (batch, reuse), rate in zip(configs, rates):
        print(f"{batch:>3} {'yes' if reuse else 'no':>14} {rate:>9.3f} {rate / rates[0]:>12.2f}")

    pre = _prefill(bundle, demos, targets[:8], args.repeats)
    print(f"\n2. prefill per target (B = 1, median of {args.repeats}; goal: reused ≤ 0.3× plain)")
    print(f"{'prompt tokens':>14} {'prefix tokens':>14} {'processor s':>12} {'plain s':>9} {'reused s':>9} "
          f"{'reused ÷ plain':>15}")
    print(f"{pre['prompt']:>14} {pre['prefix']:>14} {pre['processor']:>12.4f} {pre['plain']:>9.4f} "
          f"{pre['reused']:>9.4f} {pre['reused'] / pre['plain']:>15.2f}")
    print(f"at the 7B shape, by FLOPs: reused ÷ plain = {_flops_7b(pre['prompt'], pre['prefix']):.2f} "
          "(the tiny model's time is mostly overhead, not arithmetic)")
    print("\n3. decoded tokens per target (reasoning-fast ÷ reasoning, goal ≤ 0.1)")
    print(f"{'policy':<34} {'reasoning':>10} {'fast':>8} {'ratio':>7}")
    for name, b in (("this bundle's", bundle), ("scripted, typical full answer", _scripted(bundle))):
        full, fast = _tokens(b, demos, targets[:4])
        if fast is None:
            print(f"{name:<34} {full:>10.1f} {'no rule':>8} {'-':>7}")
        else:
            print(f"{name:<34} {full:>10.1f} {fast:>8.1f} {fast / full:>7.3f}")


if __name__ == "__main__":
    main()
