"""Small form helpers shared by the operators (no engine import: forms must stay fast)."""

import time

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


# Delegated progress is a database write: one every few seconds, not one per target.
PROGRESS_EVERY = 3.0


def progress_callback(ctx, every: float = PROGRESS_EVERY, clock=time.monotonic):
    """Forwards (done, total) to the App when delegated, at most every ``every`` s and always the last."""
    if not ctx.delegated:
        return None
    last = [None]

    def report(done: int, total: int) -> None:
        now = clock()
        if done < total and last[0] is not None and now - last[0] < every:
            return
        last[0] = now
        ctx.set_progress(progress=done / max(total, 1), label=f"{done}/{total} samples")

    return report
