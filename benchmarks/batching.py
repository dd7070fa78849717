"""Issue 15: the reasoning route in batches, the demonstrations encoded once, and rule reuse.

Usage: python benchmarks/batching.py [--bundle DIR] [--targets 16] [--threads N]

Without --bundle a tiny random bundle is built (CPU: its numbers are ratios of the
plumbing, not a 7B policy's). Targets are nuclei tiles (128², real images) from the
stardist wheel, 3 tiles are the demonstrations. Three tables:

1. Batching: images/s of the reasoning route (episode → generate → hidden pass →
   translator → segmenter) at B = 1, 4, 8, with the prefix reused, and B = 1 without it.
   Goal on GPU: B = 8 ≥ 2.5× B = 1.
2. Prefill: seconds per target of the prompt's encoding (generate with one new token),
   re-encoding everything vs the canvas's cache reused. Goal: ≤ 0.3× on the reused side.
   The prompt order (canvas, target, text: the released model's) limits what can be
   reused to the system prompt and the canvas; the table gives the token counts.
3. Decoded tokens per target, reasoning-fast ÷ reasoning, on the same targets (goal ≤ 0.1×):
   with the bundle's own policy, and with a scripted policy writing a full answer of
   typical length (a chain of thought of ~500 tokens, as issue 15 puts it) against the
   rule-reuse answer, which measures what the two formats cost. A random tiny policy never
   writes its end-of-turn token, so both of its routes decode max_new_tokens (ratio 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np

THINK = ("The reference image shows several bright oval blobs on a dark background; the red boxes each "
         "hold one blob of similar size and brightness, with smooth edges and no internal texture. ") * 14


def _tiles(n: int):
    from conceptseg import demo_data
    from conceptseg.imaging import to_rgb_float
    from conceptseg.types import Demonstration

    image, labels = demo_data.nuclei(demo_data.fetch_demo_files())
    image = to_rgb_float(image)
    tiles = [(image[r:r + 128, c:c + 128], labels[r:r + 128, c:c + 128] > 0)
             for r in range(0, 512, 128) for c in range(0, 512, 128)]
    demos = [Demonstration(tiles[i][0], tiles[i][1], f"demo{i}") for i in (0, 5, 10)]
    targets = [t for i, (t, _) in enumerate(tiles) if i not in (0, 5, 10)]
    return demos, [targets[i % len(targets)] for i in range(n)]


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


def _prefill(bundle, demos, targets) -> tuple[float, float, int, int]:
    """Seconds per target of encoding the prompt, without and with the canvas's cache; L and P."""
    from conceptseg.prefix import PrefixStore
    from conceptseg.routes.reasoning import ReasoningConfig, ReasoningRoute

    route = ReasoningRoute(bundle, ReasoningConfig(question="nucleus"))
    route.fit(demos)
    requests = [route._episode(t)[0] for t in targets]
    policy = bundle.policy
    tokens = policy.config.max_new_tokens
    policy.config.max_new_tokens = 1
    try:
        store = PrefixStore()
        policy.generate(requests[:1], hidden=False, prefix=store)  # the canvas, once per run
        times = {}
        for name, prefix in (("plain", None), ("reused", store)):
            policy.generate(requests[:1], hidden=False, prefix=prefix)  # warm-up
            start = time.perf_counter()
            for r in requests:
                policy.generate([r], hidden=False, prefix=prefix)
            times[name] = (time.perf_counter() - start) / len(requests)
    finally:
        policy.config.max_new_tokens = tokens
    prompt = policy.encode(requests[:1])["input_ids"].shape[1]
    return times["plain"], times["reused"], store.prefix.length, prompt


def _released_counts(bundle, demos, targets) -> tuple[int, int]:
    """(prompt tokens, prefix tokens) of one episode with the released processor's image size
    (Qwen2.5-VL's default max_pixels: a 600² image becomes 21 × 21 = 441 tokens)."""
    from conceptseg.policy import Policy
    from conceptseg.prefix import _prefix_of
    from conceptseg.routes.reasoning import ReasoningConfig, ReasoningRoute
    from conceptseg.testing import TINY_TEXT, TINY_VISION, qwen25vl_processor_and_config, qwen_tokenizer_dir

    processor, _ = qwen25vl_processor_and_config(qwen_tokenizer_dir(), TINY_TEXT, TINY_VISION, 12845056)
    released = Policy(bundle.policy.model, processor)
    route = ReasoningRoute(bundle, ReasoningConfig(question="nucleus"))
    route.fit(demos)
    inputs = released.encode([route._episode(targets[0])[0]])
    return inputs["input_ids"].shape[1], _prefix_of(released, inputs)[1]


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
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()

    import torch

    from conceptseg.checkpoint import load_bundle
    from conceptseg.testing import build_tiny_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.bundle or build_tiny_bundle(tempfile.mkdtemp(prefix="tiny-bundle-"), tie_embeddings=False)
    bundle = load_bundle(path)
    demos, targets = _tiles(args.targets)
    device = str(bundle.policy.device)
    print(f"bundle {path} on {device}, {len(targets)} targets, max_new_tokens {bundle.policy.config.max_new_tokens}, "
          f"torch threads {torch.get_num_threads()}\n")

    base = _throughput(bundle, demos, targets, 1, reuse=False)
    print("1. batching (reasoning route, images/s)")
    print(f"{'B':>3} {'prefix reused':>14} {'images/s':>9} {'× B=1 plain':>12}")
    print(f"{1:>3} {'no':>14} {base:>9.3f} {1.0:>12.2f}")
    for batch in (1, 4, 8):
        rate = _throughput(bundle, demos, targets, batch, reuse=True)
        print(f"{batch:>3} {'yes':>14} {rate:>9.3f} {rate / base:>12.2f}")

    plain, reused, length, prompt = _prefill(bundle, demos, targets[:8])
    print("\n2. prefill per target (generate with one new token, B = 1)")
    print(f"{'prompt tokens':>14} {'prefix tokens':>14} {'plain s':>9} {'reused s':>9} {'reused ÷ plain':>15} (goal ≤ 0.3)")
    print(f"{prompt:>14} {length:>14} {plain:>9.4f} {reused:>9.4f} {reused / plain:>15.2f}")
    full_prompt, full_prefix = _released_counts(bundle, demos, targets)
    print(f"at the released processor's image size: {full_prompt} prompt tokens, {full_prefix} in the reusable "
          f"prefix ({full_prefix / full_prompt:.0%}); the rest (target image and text) is encoded per target")

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
