"""The loop both training stages share: load a bundle, step, log, checkpoint, resume.

Runs through accelerate, so `python -m ...` on a CPU, one GPU, or `accelerate launch` on
several runs the same code: each process takes its own slice of every step's episodes and
gradients are averaged across processes. A checkpoint is a complete bundle (loadable by
`conceptseg segment --model`) plus ``trainer_state.pt`` (optimizer, step, random states);
a run started again with the same ``out_dir`` resumes from the newest one and ends at the
same step count it would have reached uninterrupted.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from conceptseg.errors import ConceptSegError
from conceptseg.training.config import TrainConfig
from conceptseg.training.checkpoints import STATE_FILE, checkpoint_dir, latest_checkpoint, prune
from conceptseg.training.episodes import EpisodeReport, EpisodeSpec, TrainingEpisode, materialise

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """What a run produced: the final bundle, where it started, its last metrics."""

    bundle: str
    steps: int
    resumed_from: int | None
    metrics_file: str
    report: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)


@dataclass
class StepContext:
    """What a stage's step function works with."""

    policy: object  # conceptseg.model.policy.Policy (its model unwrapped)
    model: object  # the model forward passes with gradients go through (maybe DDP-wrapped)
    translator: torch.nn.Module
    segmenter: object
    config: TrainConfig
    reference: object | None = None  # frozen policy copy for a full fine-tune's KL


def _episode_stream(specs: Sequence[EpisodeSpec], seed: int):
    """Endless episode indices: a fresh seeded permutation each epoch (same order on resume)."""
    epoch = 0
    while True:
        yield from np.random.default_rng([seed, epoch]).permutation(len(specs)).tolist()
        epoch += 1


def _take(stream, specs, count: int, report: EpisodeReport, tries: int) -> list[TrainingEpisode]:
    """The next ``count`` episodes that can be read; unreadable ones are counted and passed."""
    out = []
    for _ in range(tries):
        if len(out) == count:
            return out
        episode = materialise(specs[next(stream)], report)
        if episode is not None:
            out.append(episode)
    raise ConceptSegError(
        f"Only {len(out)} of {count} episodes could be read after {tries} tries; "
        f"{len(report.unreadable)} samples were unreadable. Check the images and masks of the view."
    )


def _trainable_policy(bundle, config: TrainConfig, start_from: Callable | None = None):
    """Sets which policy weights learn; returns (model, reference model or None).

    A full fine-tune's reference is a frozen copy of the model the stage starts from;
    ``start_from`` loads that model when ``bundle`` is a checkpoint that has moved on.
    """
    model = bundle.policy.model
    if config.stage == 1:
        model.requires_grad_(False)
        return model, None
    is_peft = hasattr(model, "peft_config")
    if config.lora:
        from peft import LoraConfig, get_peft_model

        if is_peft:  # continue the bundle's own adapters
            model.peft_config["default"].inference_mode = False
            for name, p in model.named_parameters():
                p.requires_grad_("lora_" in name)
        else:
            # The language model's layers only: the vision tower's MLPs share these names. The
            # language model is model.language_model.* from transformers 4.52 on, model.* before.
            targets = rf"(?!(.*\.)?visual\.).*\.({'|'.join(config.lora_targets)})"
            model = get_peft_model(model, LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                target_modules=targets, task_type="CAUSAL_LM"))
        bundle.policy.model = model
        return model, None
    if is_peft:  # a full fine-tune starts from the adapted weights
        model = model.merge_and_unload()
        bundle.policy.model = model
    model.requires_grad_(True)
    if config.beta <= 0:
        return model, None
    reference = start_from() if start_from is not None else copy.deepcopy(model)
    return model, reference.eval().requires_grad_(False)


def _input_policy(model_path: str, device: str):
    """The policy model of the run's input (bundle or release; adapters merged), alone."""
    from conceptseg.model.checkpoint import load_policy

    model = load_policy(model_path, device=device).model
    return model.merge_and_unload() if hasattr(model, "peft_config") else model


def enable_checkpointing(model) -> None:
    """Recomputes the policy's activations in the backward pass (non-reentrant: LoRA-safe)."""
    # transformers 5.24 renamed gradient_checkpointing_enable; older versions have only that.
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _save_checkpoint(path: str, bundle, ctx: StepContext, accelerator, optimizer, step: int, base_policy: str | None,
                     base_adapter: str | None, copy_segmenter: bool) -> None:
    """A bundle at ``path`` plus the trainer state (optimizer, step, random states)."""
    from conceptseg.model.checkpoint import save_bundle

    os.makedirs(path, exist_ok=True)
    model = accelerator.unwrap_model(ctx.model)
    policy_dir, adapter_dir = base_policy, base_adapter
    if ctx.config.stage == 2 and ctx.config.lora:
        adapter_dir = os.path.join(path, "adapter")
        model.save_pretrained(adapter_dir)
    elif ctx.config.stage == 2:
        policy_dir, adapter_dir = os.path.join(path, "policy"), None
        model.save_pretrained(policy_dir)
        bundle.policy.processor.save_pretrained(policy_dir)
    translator = accelerator.unwrap_model(ctx.translator)
    save_bundle(path, policy_dir, translator, ctx.segmenter, adapter_dir=adapter_dir,
                max_new_tokens=bundle.policy.config.max_new_tokens, copy_segmenter=copy_segmenter)
    # Only tensors, dicts, lists, tuples, strings and numbers: the state loads with weights_only=True
    # (no pickled objects, so no code runs when a checkpoint is resumed).
    state = {"step": step, "optimizer": optimizer.state_dict(), "torch": torch.get_rng_state(),
             "numpy": _numpy_rng_state(), "python": random.getstate(), "config": asdict(ctx.config),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(state, os.path.join(path, STATE_FILE))


def _numpy_rng_state() -> dict:
    """NumPy's global random state as plain values (its key array as an int64 tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["bit_generator"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def load_trainer_state(path: str) -> dict:
    """A checkpoint's trainer state, read with ``weights_only=True``: a file that needs more is refused."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConceptSegError(
            f"Cannot resume from {path}: it is not a trainer state this version can read safely "
            f"({' '.join(str(e).split())[:160]}); delete that checkpoint directory or train into a new folder."
        ) from None
    if not isinstance(state, dict) or not {"step", "optimizer", "torch", "numpy", "python"} <= set(state):
        raise ConceptSegError(f"Cannot resume from {path}: it is not a conceptseg trainer state; delete that "
                              "checkpoint directory or train into a new folder.")
    return state


def _restore(state: dict, optimizer) -> int:
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch"])
    _set_numpy_rng_state(state["numpy"])
    random.setstate(_as_tuples(state["python"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return int(state["step"])


def _as_tuples(value):
    """random.setstate wants the tuples getstate gave (a list in their place is refused)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def json_ready(value):
    """NaN (an unscorable mean) becomes None, in nested dicts and lists: strict JSON everywhere."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _trim_metrics(path: str, step: int) -> None:
    """Drops lines logged after the checkpoint being resumed: those steps run again."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(kept)


def _bundle_to_train(path: str, model: str, device: str, config: TrainConfig):
    """The bundle to start from (or a checkpoint's), with the rollouts' length and temperature set."""
    from conceptseg.model.checkpoint import load_bundle

    bundle = load_bundle(path, device=device)
    if bundle.policy is None:
        raise ConceptSegError(f"{model} has no reasoning policy to train; give a bundle with a policy (see `conceptseg tiny-bundle`).")
    if config.max_new_tokens:
        bundle.policy.config.max_new_tokens = config.max_new_tokens
    bundle.policy.config.temperature = config.temperature
    return bundle


def _optimizer(translator, policy_model, config: TrainConfig):
    """AdamW over the translator and the policy's trainable weights, each group with its own learning rate."""
    trained = [p for p in policy_model.parameters() if p.requires_grad]
    groups = [{"params": list(translator.parameters()), "lr": config.translator_lr, "base_lr": config.translator_lr}]
    if trained:
        groups.append({"params": trained, "lr": config.lr, "base_lr": config.lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay), list(translator.parameters()) + trained


def _report_step(last: dict, metrics_file: str | None, bar, progress, steps: int) -> None:
    """One step's metrics: a line of metrics.jsonl (main process only), the bar, the caller's progress."""
    if metrics_file is not None:
        with open(metrics_file, "a") as f:
            f.write(json.dumps(json_ready(last)) + "\n")
    bar.update(1)
    bar.set_postfix({k: round(v, 3) for k, v in last.items() if k in ("loss", "reward", "mask_loss")})
    if progress is not None:
        progress(last["step"], steps, last)


def train(
    model: str,
    specs: Sequence[EpisodeSpec],
    out_dir: str,
    config: TrainConfig,
    report: EpisodeReport | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> TrainResult:
    """Trains the bundle ``model`` on ``specs`` with ``config.stage``; the result is a bundle in ``out_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from conceptseg.training import stage1, stage2

    if not specs:
        raise ConceptSegError("No training episodes: the view needs at least one concept with two or more samples with masks.")
    report = report if report is not None else EpisodeReport()
    out_dir = os.path.abspath(out_dir)
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)
    set_seed(config.seed)
    model_path = os.path.abspath(model) if os.path.isdir(model) else model
    resume = latest_checkpoint(out_dir)
    # A checkpoint is a bundle too: resuming loads it instead of the input. Its policy path
    # is the input's base (stage 1, LoRA) or its own full copy, so saving stays the same.
    bundle = _bundle_to_train(resume or model_path, model, str(accelerator.device), config)
    base_policy, base_adapter = bundle.policy_path, bundle.adapter_path
    # Resuming a full fine-tune: the checkpoint has moved on, the KL reference is the input.
    start_from = (lambda: _input_policy(model_path, str(accelerator.device))) if resume else None
    policy_model, reference = _trainable_policy(bundle, config, start_from)
    if config.gradient_checkpointing and config.stage == 2:
        enable_checkpointing(policy_model)
    translator = bundle.translator.train().requires_grad_(True)
    optimizer, params = _optimizer(translator, policy_model, config)
    if config.stage == 2:
        policy_model, translator, optimizer = accelerator.prepare(policy_model, translator, optimizer)
    else:
        translator, optimizer = accelerator.prepare(translator, optimizer)
    ctx = StepContext(bundle.policy, policy_model, translator, bundle.segmenter, config, reference)
    start = 0
    metrics_file = os.path.join(out_dir, METRICS_FILE)
    if resume:
        start = _restore(load_trainer_state(os.path.join(resume, STATE_FILE)), optimizer)
        _trim_metrics(metrics_file, start)
    os.makedirs(out_dir, exist_ok=True)
    step_fn = stage1.step if config.stage == 1 else stage2.step
    stream = _episode_stream(specs, config.seed)
    per_step = config.batch_size * accelerator.num_processes
    for _ in range(start * per_step):  # the episodes earlier steps consumed, so order matches
        next(stream)
    # A caller with its own progress report (the CLI, an operator) gets no second one.
    bar = tqdm(total=config.steps, initial=start, desc=f"stage {config.stage}",
               disable=progress is not None or not accelerator.is_main_process)
    last: dict = {}
    for step in range(start + 1, config.steps + 1):
        began = time.perf_counter()
        batch = _take(stream, specs, per_step, report, tries=per_step * 20)
        mine = batch[accelerator.process_index * config.batch_size:][: config.batch_size]
        loss, metrics = step_fn(ctx, mine)
        accelerator.backward(loss)
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * config.lr_factor(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last = {"step": step, "stage": config.stage, "loss": float(loss.detach()), **metrics,
                "lr": config.lr * config.lr_factor(step), "seconds": round(time.perf_counter() - began, 3), "targets": [e.target_id for e in mine]}
        _report_step(last, metrics_file if accelerator.is_main_process else None, bar, progress, config.steps)
        if (step % config.save_every == 0 or step == config.steps) and accelerator.is_main_process:
            path = checkpoint_dir(out_dir, step)
            _save_checkpoint(path, bundle, ctx, accelerator, optimizer, step, base_policy, base_adapter, copy_segmenter=False)
            prune(out_dir, config.keep_checkpoints)
        accelerator.wait_for_everyone()
    bar.close()
    if accelerator.is_main_process:
        _save_checkpoint(out_dir, bundle, ctx, accelerator, optimizer, config.steps, base_policy, base_adapter, copy_segmenter=True)
        os.remove(os.path.join(out_dir, STATE_FILE))  # the final bundle is not a resume point
    return TrainResult(bundle=out_dir, steps=config.steps, resumed_from=start or None, metrics_file=metrics_file,
                       report=report.to_dict(), last=last)
