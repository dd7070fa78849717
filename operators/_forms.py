"""Small form helpers shared by the operators (no torch import: forms must stay fast)."""

import dataclasses

import time

import fiftyone as fo
import fiftyone.operators.types as types

MASK_TYPES = (fo.Segmentation, fo.Detections, fo.Detection, fo.Polylines, fo.Polyline)
# Reading masks for the class picker: a Segmentation field's classes need its masks read.
MAX_MASKS_READ = 50


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
    fields = mask_fields(ctx.view if ctx.dataset is not None else None)
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
        prop.error_message = "This dataset has no Segmentation, Detections or Polylines field to use."
    return prop


@dataclasses.dataclass
class SelectedLabels:
    """What the labels selected in the App say: their field, their classes, or why they can't be used."""

    field: str | None = None
    classes: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None


def selected_labels(ctx) -> SelectedLabels:
    """The field and classes of the labels selected in the App (one field only)."""
    picked = ctx.selected_labels or []
    if not picked or ctx.dataset is None:
        return SelectedLabels()
    fields = sorted({label["field"] for label in picked})
    if len(fields) > 1:
        return SelectedLabels(error=(
            f"The selected labels come from {len(fields)} fields ({', '.join(fields)}): a concept lives in "
            "one field, so select labels of one field only."))
    name = fields[0]
    view = ctx.view.select_labels(labels=picked)
    paths = {fo.Detections: ".detections.label", fo.Polylines: ".polylines.label",
             fo.Detection: ".label", fo.Polyline: ".label"}
    schema = view.get_field_schema()
    doc_type = getattr(schema.get(name), "document_type", None)
    classes = sorted(str(c) for c in view.distinct(name + paths[doc_type])) if doc_type in paths else []
    return SelectedLabels(field=name, classes=classes)


def present_classes(demonstrations, mask_field: str) -> list[str]:
    """The classes the demonstrations show in ``mask_field`` (masks read for Segmentation fields)."""
    from conceptseg import classes as classes_

    schema = demonstrations.get_field_schema()
    doc_type = getattr(schema.get(mask_field), "document_type", None)
    if doc_type is None:
        return []
    if doc_type in (fo.Detections, fo.Polylines):
        kind = "detections" if doc_type is fo.Detections else "polylines"
        return sorted(str(c) for c in demonstrations.distinct(f"{mask_field}.{kind}.label"))
    if doc_type in (fo.Detection, fo.Polyline):
        return sorted(str(c) for c in demonstrations.distinct(f"{mask_field}.label"))
    targets = classes_.mask_targets_of(demonstrations, mask_field)
    found = set()
    for label in demonstrations.limit(MAX_MASKS_READ).values(mask_field):
        found |= classes_.label_classes(label, targets)
    return sorted(found)


def class_choice(inputs, demonstrations, mask_field: str, picked: list[str]):
    """The classes picker: the classes on the demonstrations; the only one, or the selected labels', by default."""
    try:
        present = present_classes(demonstrations, mask_field)
    except Exception as e:  # an unreadable mask: the engine will name it at run time
        inputs.view("classes_notice", types.Warning(label=f"Could not read the demonstrations' classes: {e}"))
        return None
    if len(present) <= 1 and not picked:
        return None  # one class (or a binary mask): it is the concept, nothing to choose
    choices = types.AutocompleteView(allow_user_input=False, allow_duplicates=False)
    for name in present:
        choices.add_choice(name, label=name)
    default = [c for c in picked if c in present] or (present if len(present) == 1 else None)
    prop = inputs.list(
        "classes",
        types.String(),
        default=default,
        required=len(present) > 1 and not default,
        label="Classes",
        description=f"Which classes of {mask_field!r} are the concept (the demonstrations show: {', '.join(present)})",
        view=choices,
    )
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


def hf_token(ctx) -> str | None:
    """The HF_TOKEN plugin secret (declared in fiftyone.yml), or None. Never log or return it."""
    value = ctx.secrets.get("HF_TOKEN")
    # A secret first resolved on access comes back as FiftyOne's secret object, later as a str.
    return getattr(value, "value", value) or None


def with_hf_token(ctx, job, *args, **kwargs):
    """Runs an engine ``job`` whose model downloads use the HF_TOKEN secret.

    The token goes to the engine's downloads (``conceptseg.hub``) for this call only; it is
    not put in ``os.environ``, where other operators and child processes would see it.
    """
    from conceptseg.hub import using_hf_token

    with using_hf_token(hf_token(ctx)):
        return job(*args, **kwargs)
