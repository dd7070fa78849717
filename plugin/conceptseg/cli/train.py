"""`conceptseg train`: stage 1 (translator alignment) and stage 2 (Meta-GRPO) on a dataset's concepts."""

from __future__ import annotations

import math
import sys

from conceptseg.cli.common import emit_json, load_dataset, saved_view, zoo_names
from conceptseg.errors import ConceptSegError


def _train_progress(step: int, total: int, metrics: dict) -> None:
    """About ten lines per run: the step and its loss, reward and mask loss where the stage has them."""
    if step == total or step == 1 or step % max(1, total // 10) == 0:
        shown = "  ".join(f"{k} {_number(metrics.get(k))}" for k in ("loss", "reward", "mask_loss", "mask_iou")
                          if k in metrics)
        print(f"  step {step}/{total}  {shown}", file=sys.stderr, flush=True)


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def cmd_train(args) -> int:
    from conceptseg.model.episode import MAX_REFERENCES
    from conceptseg.runs.jobs import train_concept_policy
    from conceptseg.runs.outputs import creatable_dir
    from conceptseg.training.config import TrainConfig

    if not 1 <= args.demonstrations <= MAX_REFERENCES:
        raise ConceptSegError(
            f"--demonstrations must be 1 to {MAX_REFERENCES} (the mosaic's tiles), got {args.demonstrations}.")
    dataset = load_dataset(args.dataset)
    view = saved_view(dataset, args.view)
    config = TrainConfig(
        stage=args.stage, steps=args.steps, batch_size=args.batch_size, group_size=args.group_size,
        learning_rate=args.lr, lora=args.lora, max_new_tokens=args.max_new_tokens,
        gradient_checkpointing=args.gradient_checkpointing, save_every=args.save_every, seed=args.seed,
        mixed_precision=args.mixed_precision, cpu=args.cpu, reward=args.reward,
        translator_learning_rate=args.translator_lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
    )
    creatable_dir(args.out, "output directory")  # created by the run, after the data was checked
    summary = train_concept_policy(
        view, args.concept_field, args.mask_field, args.model, args.out, config=config,
        test_tag=args.test_tag, num_demonstrations=args.demonstrations,
        progress=None if args.json else _train_progress,
    )
    if args.json:
        return emit_json(summary)
    resumed = f", resumed from step {summary['resumed_from']}" if summary["resumed_from"] else ""
    print(f"stage {summary['stage']}: {summary['steps']} steps{resumed}; bundle {summary['bundle']} "
          "(self-contained: policy, translator and segmenter inside; move or copy it as one directory)")
    last = summary["last"]
    if last:
        keys = ("loss", "reward", "reward_box", "reward_mask_iou", "mask_loss", "mask_iou")
        print("last step: " + ", ".join(f"{k} {_number(last[k])}" for k in keys if k in last))
    e, out = summary["episodes"], summary["left_out"]
    print(f"episodes {e.get('episodes', 0)} from {e.get('concepts', 0)} concepts; left out: "
          f"{e.get('skipped_concepts', 0)} concepts with fewer than two samples, "
          f"{out.get('without_concept', 0)} samples without a concept, {out.get('without_mask', 0)} without a mask, "
          f"{e.get('unreadable', 0)} unreadable")
    print(f"metrics per step: {summary['metrics_file']}; run recorded on {args.dataset!r} as {summary['run_key']}")
    return 0


def add_train_command(sub) -> None:
    """`train`."""
    zoo = zoo_names()

    p = sub.add_parser(
        "train", help="train a bundle on a dataset's concepts (1: translator alignment, 2: Meta-GRPO)",
        description="Episodes pair each train sample (not tagged --test-tag) with other train samples of its "
                    "concept as demonstrations. OUT receives a bundle (loadable by --model), metrics.jsonl "
                    "(one line per step) and checkpoints/; running again with the same OUT resumes.",
    )
    p.add_argument("--stage", type=int, choices=[1, 2], required=True,
                   help="1 aligns the translator (policy and segmenter frozen); 2 is Meta-GRPO on the policy")
    p.add_argument("--dataset", required=True)
    p.add_argument("--concept-field", required=True, help="string field naming each sample's concept")
    p.add_argument("--mask-field", required=True, help="Segmentation or Detections field with the masks")
    p.add_argument("--model", required=True, help=f"bundle to start from: directory, Hugging Face id or zoo name ({zoo})")
    p.add_argument("--out", required=True, help="output directory (the trained bundle; resumed if it has checkpoints)")
    p.add_argument("--view", help="saved view to train on (default: the whole dataset)")
    p.add_argument("--test-tag", default="test", help="samples with this tag are left out of training")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps in total, counting resumed ones")
    p.add_argument("--batch-size", type=int, default=1, help="episodes per step")
    p.add_argument("--group-size", type=int, default=8, help="stage 2: rollouts per episode (G, at least 2)")
    p.add_argument("--demonstrations", type=int, default=4, help="demonstrations per episode, 1 to 4")
    p.add_argument("--lr", type=float, help="learning rate (default: 3e-5 stage 1, 1e-5 LoRA, 1e-6 full)")
    p.add_argument("--translator-lr", type=float, help="the translator's learning rate (default: --lr's)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (official: 0)")
    p.add_argument("--lr-schedule", default="linear", choices=["linear", "constant"],
                   help="linear decay to 0 over --steps, no warm-up (official), or constant")
    p.add_argument("--reward", default="official", choices=["official", "strict"],
                   help="official: the official rewards' semantics; strict: every reward needs a parsable completion")
    p.add_argument("--save-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--max-new-tokens", type=int, help="longest rollout (default: the bundle's)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="stage 2: less memory, slower steps")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="accelerate's mixed precision")
    p.add_argument("--seed", type=int, default=0, help="drives the episode order, draws and rollouts")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON (no progress lines)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--lora", dest="lora", action="store_true", help="stage 2: train LoRA adapters (default)")
    weights.add_argument("--full", dest="lora", action="store_false", help="stage 2: fine-tune every policy weight")
    p.set_defaults(func=cmd_train, lora=True)
