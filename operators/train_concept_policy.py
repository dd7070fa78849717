"""Operator: train a bundle on the dataset's own concepts (stage 1 alignment or Meta-GRPO), delegated only."""

import math
import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

from ._forms import field_choice, model_input, with_hf_token

STAGES = {"1": "1: align the translator (policy frozen)", "2": "2: Meta-GRPO on the policy"}


class TrainConceptPolicy(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="train_concept_policy",
            label="Train concept policy",
            description="Fine-tune a bundle on this dataset's concepts; the result is a bundle directory",
            dynamic=True,
            # Minutes to days of GPU time: only a delegated worker may run it.
            allow_immediate_execution=False,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        concept = _concept_field_choice(inputs, ctx)
        mask = field_choice(inputs, ctx, "mask_field", "Mask field", "The concept's masks", "ground_truth")
        model_input(inputs, ctx, "Bundle directory, zoo name or Hugging Face id to start from", required=True)
        inputs.str("out_dir", required=True, label="Output directory",
                   description="Where the trained bundle, metrics.jsonl and checkpoints go (on the worker)")
        inputs.enum("stage", list(STAGES), default="2", label="Stage", view=_radio(STAGES))
        inputs.int("steps", default=100, min=1, required=True, label="Steps",
                   description="Optimizer steps in total (a resumed run counts those already done)")
        if str(ctx.params.get("stage", "2")) == "2":
            inputs.bool("lora", default=True, label="LoRA adapters",
                        description="Off: fine-tune every policy weight (needs twice the policy's memory)")
            inputs.int("group_size", default=8, min=2, label="Group size",
                       description="Rollouts per episode (the paper's 8)")
        inputs.str("test_tag", default="test", label="Test tag",
                   description="Samples with this tag are held out of training")
        if ctx.dataset is not None:
            _episodes_notice(inputs, ctx, ctx.params.get("concept_field") or concept.default,
                             ctx.params.get("mask_field") or mask.default)
        _resume_notice(inputs, ctx.params.get("out_dir"))
        return types.Property(inputs, view=types.View(label="Train concept policy"))

    def execute(self, ctx):
        from conceptseg.runs.jobs import train_concept_policy
        from conceptseg.training.config import TrainConfig

        params = ctx.params
        stage = int(params.get("stage", 2))
        config = TrainConfig(
            stage=stage,
            steps=int(params.get("steps", 100)),
            lora=bool(params.get("lora", True)),
            group_size=int(params.get("group_size", 8)),
        )

        def progress(step: int, total: int, metrics: dict) -> None:
            ctx.set_progress(progress=step / total, label=_progress_label(step, total, metrics))

        summary = with_hf_token(
            ctx, train_concept_policy,
            ctx.target_view(),
            params["concept_field"],
            params["mask_field"],
            params["model"],
            params["out_dir"],
            config=config,
            test_tag=params.get("test_tag") or "test",
            progress=progress,
        )
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("bundle", label="Trained bundle")
        outputs.int("steps", label="Steps")
        outputs.str("metrics_file", label="Metrics per step")
        outputs.str("run_key", label="Run record")
        return types.Property(outputs)


def _radio(labels: dict) -> types.RadioGroup:
    radio = types.RadioGroup()
    for value, label in labels.items():
        radio.add_choice(value, label=label)
    return radio


def string_fields(collection) -> list[str]:
    """Top-level string fields that could name a concept (not the media path)."""
    if collection is None:
        return []
    schema = collection.get_field_schema(ftype=fo.StringField)
    return sorted(name for name in schema if name != "filepath")


def _concept_field_choice(inputs, ctx):
    """A dropdown of string fields; invalid with a sentence when there are none."""
    fields = string_fields(ctx.dataset)
    prop = inputs.enum(
        "concept_field",
        fields,
        default="concept" if "concept" in fields else (fields[0] if fields else None),
        required=True,
        label="Concept field",
        description="The string field naming each sample's concept",
        view=types.DropdownView(),
    )
    if not fields:
        prop.invalid = True
        prop.error_message = "This dataset has no string field naming the concepts; add one (e.g. 'concept')."
    return prop


def _episodes_notice(inputs, ctx, concept_field, mask_field) -> None:
    """How many train samples and concepts can make episodes; invalid when none can."""
    schema = ctx.dataset.get_field_schema()
    if concept_field not in schema or mask_field not in schema:
        return
    test_tag = ctx.params.get("test_tag") or "test"
    train = ctx.target_view().match_tags(test_tag, bool=False).exists(mask_field).match(
        (F(concept_field) != None) & (F(concept_field) != ""))  # noqa: E711 (a MongoDB expression)
    counts = train.count_values(concept_field)
    usable = {c: n for c, n in counts.items() if n >= 2}
    if not usable:
        prop = inputs.view("episodes", types.Warning(
            label=f"No concept in {concept_field!r} has two or more train samples with masks in "
                  f"{mask_field!r} (samples tagged {test_tag!r} are held out): label more samples per concept."))
        prop.invalid = True
        return
    skipped = len(counts) - len(usable)
    text = f"{sum(usable.values())} train samples in {len(usable)} concepts make the episodes"
    if skipped:
        text += f"; {skipped} concept(s) with a single train sample are left out"
    inputs.view("episodes", types.Notice(label=text + "."))


def _resume_notice(inputs, out_dir) -> None:
    """Says when the output directory already holds checkpoints: the run resumes from the newest."""
    if not out_dir:
        return
    # The loop's own rule (complete checkpoints only), from a module without torch.
    from conceptseg.training.checkpoints import checkpoint_step, latest_checkpoint

    latest = latest_checkpoint(os.path.expanduser(out_dir))
    if latest:
        inputs.view("resume", types.Notice(
            label=f"{out_dir} holds checkpoints up to step {checkpoint_step(latest)}: the run resumes from there."))


def _progress_label(step: int, total: int, metrics: dict) -> str:
    shown = [f"{k} {metrics[k]:.3f}" for k in ("loss", "reward", "mask_loss")
             if isinstance(metrics.get(k), float) and not math.isnan(metrics[k])]
    return f"step {step}/{total}" + (f": {', '.join(shown)}" if shown else "")

