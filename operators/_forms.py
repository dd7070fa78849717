"""Small form helpers shared by the operators (no engine import: forms must stay fast)."""

import fiftyone as fo
import fiftyone.operators.types as types

MASK_TYPES = (fo.Segmentation, fo.Detections)


def mask_fields(collection) -> list[str]:
    """Fields whose labels can hold masks."""
    if collection is None:
        return []
    return [
        name
        for name, field in collection.get_field_schema().items()
        if getattr(field, "document_type", None) in MASK_TYPES
    ]


def field_choice(inputs, ctx, name: str, label: str, description: str, default: str | None = None):
    """A dropdown of mask fields; invalid with a sentence when the dataset has none."""
    fields = mask_fields(ctx.dataset)
    choices = types.DropdownView()
    for f in fields:
        choices.add_choice(f, label=f)
    prop = inputs.enum(
        name,
        fields,
        default=default if default in fields else (fields[0] if fields else None),
        required=True,
        label=label,
        description=description,
        view=choices,
    )
    if not fields:
        prop.invalid = True
        prop.error_message = "This dataset has no Segmentation or Detections field to use."
    return prop


def progress_callback(ctx):
    """Forwards (done, total) to the App when delegated; immediate runs report at the end."""
    if not ctx.delegated:
        return None

    def report(done: int, total: int) -> None:
        ctx.set_progress(progress=done / max(total, 1), label=f"{done}/{total} samples")

    return report


def prompt_template_input(ctx, inputs) -> None:
    """The optional prompt template file field; marked invalid, with the reason, when unusable."""
    field = inputs.str(
        "prompt_template",
        label="Prompt template file",
        description="Optional: a text file with the policy prompt's wording ({question}, {output_format}, ...)",
    )
    path = ctx.params.get("prompt_template")
    if path:
        from conceptseg.errors import ConceptSegError
        from conceptseg.prompts import load_prompt_template

        try:
            load_prompt_template(path)
        except ConceptSegError as e:
            field.invalid = True
            field.error_message = str(e)
