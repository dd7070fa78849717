"""Per-image time of each stage of the reasoning route, with a tiny random bundle on CPU.

Stages: episode (mosaic + 600² target), policy generate (max_new_tokens of the bundle),
hidden-state pass (one forward over prompt + completion), translator, segmenter embed
(first time and cached), segmenter predict (box + concept tokens). A tiny bundle's
numbers measure the plumbing, not a 7B policy; the table says what each stage costs
around the models. Usage: python benchmarks/reasoning_stages.py [--bundle DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", help="bundle directory (default: build a tiny one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from conceptseg.datasets import demo_data
    from conceptseg.model.checkpoint import load_bundle
    from conceptseg.model.episode import build_episode
    from conceptseg.imaging import to_rgb_float, to_uint8
    from conceptseg.model.policy import PolicyRequest
    from conceptseg.model.prompts import build_prompt
    from conceptseg.testing import build_tiny_bundle
    from conceptseg.testing.scratch import scratch_dir
    from conceptseg.types import Demonstration

    path = args.bundle or build_tiny_bundle(scratch_dir("tiny-bundle-"))
    bundle = load_bundle(path)
    files = demo_data.fetch_demo_files()
    image, labels = demo_data.nuclei(files)
    image = to_rgb_float(to_uint8(to_rgb_float(image)))
    tiles = [(image[r:r + 128, c:c + 128], labels[r:r + 128, c:c + 128] > 0) for r in (0, 128, 256) for c in (0,)]
    demos = [Demonstration(t, m, str(i)) for i, (t, m) in enumerate(tiles)]
    photo, _ = demo_data.quokka(files)
    rows = []
    for name, target in (("nuclei tile 128x128", image[384:, 384:]), ("quokka 643x960", to_rgb_float(photo))):
        t_episode, episode = _timed(lambda: build_episode(demos, target), args.repeats)
        request = PolicyRequest([episode.canvas, episode.target], build_prompt("nucleus", episode.reference_boxes, True, True))
        t_generate, out = _timed(lambda: bundle.policy.generate([request]), args.repeats)
        t_hidden, _ = _timed(lambda: bundle.policy.completion_hidden_states(out.inputs, out.sequences, out.completion_mask), args.repeats)
        t_translate, tokens = _timed(lambda: bundle.translator(out.hidden_states, out.completion_mask).tokens[0], args.repeats)
        key = f"bench-{name}"
        start = time.perf_counter()
        bundle.segmenter.embed(to_uint8(target), key)
        t_embed = time.perf_counter() - start
        t_cached, _ = _timed(lambda: bundle.segmenter.embed(to_uint8(target), key), args.repeats)
        box = [0, 0, target.shape[1] // 2, target.shape[0] // 2]
        t_predict, _ = _timed(lambda: bundle.segmenter.predict(key, box=box, concept_tokens=tokens), args.repeats)
        rows.append((name, t_episode, t_generate, t_hidden, t_translate, t_embed, t_cached, t_predict, out.completion_mask.sum().item()))

    header = ("target", "episode", "generate", "of which hidden pass", "translator", "embed", "embed (cached)", "predict", "tokens")
    print(f"bundle: {path}  (median of {args.repeats}; seconds)")
    print(" | ".join(header))
    for name, *values, tokens in rows:
        print(" | ".join([name] + [f"{v:.4f}" for v in values] + [str(int(tokens))]))


if __name__ == "__main__":
    main()
