"""One Meta-GRPO (stage 2) step at the 7B shape on a GPU: time per phase and peak memory.

The policy is Qwen2.5-VL-7B's architecture with random bf16 weights (no checkpoint can be
downloaded where this runs) and the real Qwen tokenizer; LoRA adapters on every linear
layer of the language model (rank 16); the translator at H = 3584 (the paper's CTM, 617 M
parameters, float32); SAM 2.1 hiera-large with random weights at 1024 px. G = 8 rollouts of
one episode (a 2×2 demonstration mosaic + target, 600² each, the paper's max_pixels). A
random policy never writes its end-of-turn token, so every rollout runs to max_new_tokens:
the generation time is an upper bound for that length. Each configuration runs two steps;
the table reports the second (the first warms kernels and the allocator).

Usage (GPU): python benchmarks/stage2_step.py --tokenizer DIR [--max-new-tokens 256]
Prints a table and writes it as JSON with --out. Imports no FiftyOne.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np
import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _episode():
    from conceptseg.training.episodes import TrainingSample, build_specs, in_memory, materialise

    rng = np.random.default_rng(0)
    samples = []
    for k in range(5):
        image = (rng.random((480, 640, 3)) * 80).astype(np.uint8)
        mask = np.zeros((480, 640), bool)
        y, x = rng.integers(40, 300), rng.integers(40, 450)
        mask[y : y + 120, x : x + 150] = True
        image[mask] = (220, 40, 40)
        samples.append(TrainingSample(f"s{k}", "red box", in_memory(image, mask)))
    return materialise(build_specs(samples)[0])


class _Clock:
    """Synchronised wall time per named phase (benchmark instrumentation only)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._wrapped: list[tuple[object, str, object]] = []

    def wrap(self, owner, name: str, label: str):
        inner = getattr(owner, name)
        self._wrapped.append((owner, name, owner.__dict__.get(name)))

        def timed(*args, **kwargs):
            _sync()
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            _sync()
            self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - start
            return out

        setattr(owner, name, timed)

    def restore(self) -> None:
        """Puts back what ``wrap`` replaced (an instance attribute is removed again)."""
        for owner, name, original in reversed(self._wrapped):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def run(config_name: str, gradient_checkpointing: bool, args, parts) -> list[dict]:
    from conceptseg.training import stage2
    from conceptseg.training.loop import StepContext, _trainable_policy, enable_checkpointing
    from conceptseg.training.config import TrainConfig

    policy, translator, segmenter, episode = parts
    config = TrainConfig(stage=2, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                         gradient_checkpointing=gradient_checkpointing)
    policy.config.max_new_tokens = args.max_new_tokens
    if not hasattr(policy.model, "peft_config"):
        _trainable_policy(SimpleNamespace(policy=policy), config)
    model = policy.model
    if gradient_checkpointing:
        enable_checkpointing(model)
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(list(translator.parameters()) + trainable, lr=1e-5)
    ctx = StepContext(policy, model, translator, segmenter, config)
    rows = []
    for repeat in range(2):
        clock = _Clock()
        clock.wrap(policy, "generate", "generate")
        clock.wrap(policy, "score", "score+reference")
        clock.wrap(stage2, "logits_600", "segmenter")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _sync()
        start = time.perf_counter()
        loss, metrics = stage2.step(ctx, [episode])
        _sync()
        forward = time.perf_counter() - start
        loss.backward()
        _sync()
        backward = time.perf_counter() - start - forward
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        total = time.perf_counter() - start
        clock.restore()
        rows.append({"config": config_name, "repeat": repeat, "step_s": round(total, 2),
                     **{k: round(v, 2) for k, v in clock.times.items()},
                     "backward_s": round(backward, 2), "optimizer_s": round(total - forward - backward, 2),
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None,
                     "completion_tokens": metrics["completion_length"], "loss": round(float(loss), 4)})
        print(rows[-1], flush=True)
    del optimizer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", required=True, help="directory with the Qwen tokenizer files")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: checks this script, measures nothing")
    args = parser.parse_args()

    import transformers
    from transformers import Qwen2_5_VLForConditionalGeneration

    from conceptseg.model.policy import Policy, PolicyConfig
    from conceptseg.segmenters.sam2 import Sam2Segmenter, Sam2SegmenterConfig
    from conceptseg.testing import (
        QWEN25VL_7B_TEXT,
        QWEN25VL_7B_VISION,
        TINY_SAM2_CONFIG,
        TINY_TEXT,
        TINY_VISION,
        qwen25vl_processor_and_config,
    )
    from conceptseg.model.translator import ConceptTranslator, TranslatorConfig

    device = "cpu" if args.tiny else "cuda"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{'cpu' if args.tiny else torch.cuda.get_device_name()}", flush=True)
    start = time.perf_counter()
    text, vision, pixels = (TINY_TEXT, TINY_VISION, 112 * 112) if args.tiny else (QWEN25VL_7B_TEXT, QWEN25VL_7B_VISION, 600 * 600)
    processor, config = qwen25vl_processor_and_config(args.tokenizer, text, vision, pixels)
    torch.set_default_dtype(torch.float32 if args.tiny else torch.bfloat16)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    policy = Policy(model.eval(), processor, PolicyConfig(max_new_tokens=args.max_new_tokens, device=device))
    hidden = config.text_config.hidden_size
    translator = ConceptTranslator(TranslatorConfig(hidden_size=hidden, num_heads=4 if args.tiny else 16)).to(device).train()
    seg_config = (Sam2SegmenterConfig(config_name=TINY_SAM2_CONFIG, image_size=256, device=device) if args.tiny
                  else Sam2SegmenterConfig(config_name="configs/sam2.1/sam2.1_hiera_l.yaml", device=device))
    segmenter = Sam2Segmenter.from_config(seg_config)
    episode = _episode()
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"built in {time.perf_counter() - start:.0f} s: policy {billions:.2f} B, translator "
          f"{sum(p.numel() for p in translator.parameters()) / 1e6:.0f} M", flush=True)
    parts = (policy, translator, segmenter, episode)
    rows = run("lora r16, grad ckpt", True, args, parts)
    try:
        rows += run("lora r16, no ckpt", False, args, parts)
    except torch.OutOfMemoryError:
        rows.append({"config": "lora r16, no ckpt", "step_s": "out of memory"})
    header = list(rows[0])
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in header) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
