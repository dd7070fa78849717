"""What a training run is asked to do: stage, steps, optimiser, rollouts, rewards; checked on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from conceptseg.errors import ConceptSegError


# Paper values (method.md §7): 3e-5 for stage 1, 1e-6 for a full stage-2 fine-tune. LoRA
# adapters start at zero and need a larger step; 1e-5 is the usual order for LoRA on 7B.
DEFAULT_LR = {1: 3e-5, (2, "full"): 1e-6, (2, "lora"): 1e-5}


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        stage: 1 aligns the translator (policy and segmenter frozen); 2 is Meta-GRPO
        steps: optimizer steps in total (a resumed run counts the steps already done)
        batch_size: episodes per step per process
        group_size: G rollouts per episode in stage 2 (the paper's 8)
        learning_rate: the policy's; None takes the stage's default (``DEFAULT_LR``)
        translator_learning_rate: the translator's; None shares the policy's (the official
            run trains both at 1e-6 in stage 2; stage 1 trains the translator alone)
        weight_decay: AdamW's decoupled weight decay (official: 0, the Trainer default)
        lr_schedule: "linear" decays every learning rate to 0 over ``steps`` without warm-up
            (official: the Trainer default), "constant" keeps it
        reward: "official" (method.md §2.5, the default) or "strict" (every reward needs the
            whole completion to parse, as inference does)
        lora: stage 2 trains LoRA adapters (the reference policy is the same weights with
            the adapters disabled); False fine-tunes every policy weight and keeps a
            frozen copy as the reference, doubling the policy's memory
        lora_rank, lora_alpha, lora_targets: the adapters' shape (targets: linear layers of
            the language model, by name; the vision tower stays as it is)
        beta, epsilon: the KL weight and the PPO clip range (paper: 0.04, 0.2)
        temperature: rollout sampling temperature (paper: 1.0)
        max_new_tokens: longest rollout; None keeps the bundle's
        gradient_checkpointing: recompute activations in the backward pass (less memory)
        max_grad_norm: gradients are clipped to this norm (Hugging Face's default 1.0)
        save_every: steps between checkpoints (the last step is always saved)
        keep_checkpoints: newest checkpoints kept on disk
        seed: drives the episode order and the rollouts' sampling
        mixed_precision: accelerate's "no", "bf16" or "fp16"
        sam_text: SAM 3's text prompt during stage 1 (the paper's "visual")
        cpu: force the CPU even where a GPU is present
    """

    stage: int = 2
    steps: int = 100
    batch_size: int = 1
    group_size: int = 8
    learning_rate: float | None = None
    translator_learning_rate: float | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "linear"
    reward: str = "official"
    lora: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    beta: float = 0.04
    epsilon: float = 0.2
    temperature: float = 1.0
    max_new_tokens: int | None = None
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    save_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    mixed_precision: str = "no"
    sam_text: str = "visual"
    cpu: bool = False

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ConceptSegError(f"stage must be 1 (translator alignment) or 2 (Meta-GRPO), got {self.stage!r}.")
        for name in ("steps", "batch_size", "save_every", "keep_checkpoints", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConceptSegError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConceptSegError(f"The learning rate must be a positive number (e.g. 1e-5), got {self.learning_rate}.")
        if self.stage == 2 and self.group_size < 2:
            raise ConceptSegError(f"Stage 2 needs group_size >= 2 rollouts per episode, got {self.group_size}.")
        self.lora_targets = tuple(self.lora_targets)
        if self.lr_schedule not in ("linear", "constant"):
            raise ConceptSegError(f"lr_schedule must be linear or constant, got {self.lr_schedule!r}.")
        if self.reward not in ("official", "strict"):
            raise ConceptSegError(f"reward must be official or strict, got {self.reward!r}.")
        if self.weight_decay < 0:
            raise ConceptSegError(f"weight_decay must be >= 0, got {self.weight_decay}.")

    @property
    def lr(self) -> float:
        """The learning rate this run uses."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LR[1] if self.stage == 1 else DEFAULT_LR[(2, "lora" if self.lora else "full")]

    @property
    def translator_lr(self) -> float:
        """The translator's learning rate."""
        return self.translator_learning_rate if self.translator_learning_rate is not None else self.lr

    def lr_factor(self, step: int) -> float:
        """The schedule's multiplier for optimizer step ``step`` (1-based): linear is 1 at the
        first step and 1/steps at the last, as the Trainer's linear schedule without warm-up."""
        return 1.0 if self.lr_schedule == "constant" else (self.steps - step + 1) / self.steps
