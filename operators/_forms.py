"""Small form helpers shared by the operators (no torch import: forms must stay fast)."""

import dataclasses
import os
import re
import time

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

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
    from conceptseg.runs import classes as classes_

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

    The token goes to the engine's downloads (``conceptseg.model.hub``) for this call only; it is
    not put in ``os.environ``, where other operators and child processes would see it.
    """
    from conceptseg.model.hub import using_hf_token

    with using_hf_token(hf_token(ctx)):
        return job(*args, **kwargs)


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
        from conceptseg.model.templates import load_prompt_template

        try:
            load_prompt_template(path)
        except ConceptSegError as e:
            field.invalid = True
            field.error_message = str(e)


# ---- checks the form can make before Execute ----------------------------------------------

SEGMENT_METHODS = ("conceptseg.segment_by_demonstration", "conceptseg.segment_by_query")
# A Hugging Face repository id: owner/name, nothing else (conceptseg.model.checkpoint reads any other "/" as a path).
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def field_name_problem(name, role: str = "output") -> str | None:
    """Why ``name`` cannot be a field we write (``a.b``, spaces, a leading digit), or None."""
    from conceptseg.errors import ConceptSegError
    from conceptseg.runs.names import check_field_name

    try:
        check_field_name(name, role)
    except ConceptSegError as e:
        return str(e)
    return None


def _looks_like_path(model: str) -> bool:
    return (model.startswith(("/", "~", ".", "\\")) or "\\" in model or model.count("/") > 1
            or model.endswith("/") or bool(re.match(r"^[A-Za-z]:", model)))


def model_problem(model: str | None) -> str | None:
    """Why ``model`` names no bundle this machine can load, as far as a form can tell cheaply; None if it may.

    A zoo name or an existing directory is fine; something that looks like a path but does
    not exist is refused (it would otherwise be read as a Hugging Face id); an id of the form
    owner/name is left to the download.
    """
    if not model:
        return None
    from conceptseg.model.zoo import ZOO

    model = model.strip()
    if model in ZOO:
        return None
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return None
    if os.path.exists(path):
        return f"{model!r} is a file: give the bundle's directory (the one holding its config), not a file in it."
    zoo = ", ".join(ZOO)
    if _looks_like_path(model):
        return (f"There is no directory {model!r} on the machine that runs the App: give an existing bundle "
                f"directory, a Hugging Face id (owner/name) or a zoo model ({zoo}).")
    if HF_ID.match(model):
        return None
    return f"Unknown model {model!r}: give a bundle directory, a Hugging Face id (owner/name) or a zoo model ({zoo})."


_NEEDS = {
    "prototype": "The prototype route needs a model with a SAM 2 segmenter: give a bundle directory, zoo name or "
                 "Hugging Face id (e.g. conceptseg-sam2-hiera-large).",
    "exemplar": "The exemplar route needs a model with SAM 3: give a bundle directory, zoo name or Hugging Face id "
                "(e.g. conceptseg-sam3).",
    "reasoning": "The reasoning routes need a model: give a bundle directory, zoo name or Hugging Face id.",
}


def route_needs(route: str) -> str | None:
    """The sentence the Model field shows when ``route`` needs a model and none is given."""
    return _NEEDS.get(route.replace("-fast", ""))


def model_input(inputs, ctx, description: str, required: bool = False, needed_for: str | None = None):
    """The Model field, invalid with a sentence when the model cannot be loaded or is needed but missing."""
    prop = inputs.str("model", required=required, label="Model", description=description)
    value = (ctx.params.get("model") or "").strip()
    problem = model_problem(value) if value else needed_for
    if problem:
        prop.invalid, prop.error_message = True, problem
    return prop


def masked_count(demonstrations, mask_field: str) -> int:
    """How many of ``demonstrations`` hold a label with pixels or shapes in ``mask_field``."""
    schema = demonstrations.get_field_schema()
    doc_type = getattr(schema.get(mask_field), "document_type", None)
    if doc_type is None:
        return 0
    if doc_type in (fo.Detections, fo.Polylines):
        kind = "detections" if doc_type is fo.Detections else "polylines"
        return demonstrations.match(F(f"{mask_field}.{kind}").length() > 0).count()
    if doc_type is fo.Segmentation:
        return demonstrations.match(F(f"{mask_field}.mask").exists() | F(f"{mask_field}.mask_path").exists()).count()
    return demonstrations.exists(mask_field).count()


def concept_default(demonstrations, classes) -> str | None:
    """The concept's name by default: the classes, else the demonstrations' one ``concept`` value, else None."""
    if classes:
        return ", ".join(str(c) for c in classes)
    if demonstrations is None or not isinstance(demonstrations.get_field("concept"), fo.StringField):
        return None
    values = [v for v in demonstrations.distinct("concept") if v]
    return values[0] if len(values) == 1 else None


def run_prediction_fields(dataset) -> list[str]:
    """Prediction fields written by our segmentation runs (demonstration, query, saved concept), newest first."""
    if dataset is None:
        return []
    found = {}
    for key in dataset.list_runs():
        info = dataset.get_run_info(key)
        field = getattr(info.config, "pred_field", None)
        if getattr(info.config, "method", None) in SEGMENT_METHODS and field and dataset.has_field(field):
            found[field] = max(found.get(field, info.timestamp), info.timestamp)
    return [f for f, _ in sorted(found.items(), key=lambda kv: kv[1], reverse=True)]


def run_config(dataset, pred_field: str):
    """The config of our run that wrote ``pred_field``, or None."""
    from conceptseg.runs.names import run_key_for

    key = run_key_for(pred_field)
    if dataset is None or key not in dataset.list_runs():
        return None
    config = dataset.get_run_info(key).config
    return config if getattr(config, "method", None) in SEGMENT_METHODS else None


# Reading the ground truth of more samples than this is left to accept itself (a form redraws on every change).
TRUTH_CHECK_LIMIT = 50


def acceptance_problem(dataset, pred_field: str, ids, action: str = "accept", done: str | None = None,
                       replace: bool = False, mask_field: str | None = None) -> str | None:
    """Why the samples ``ids`` cannot be accepted (or rejected) in the run of ``pred_field`` (one sentence), or None.

    Refused: a demonstration (its mask is ground truth already), a sample without this run's
    prediction (not one of its targets, or it failed), one accepted already; for accept without
    ``replace``, one whose ground truth already shows the concept's class.
    """
    from conceptseg.errors import ConceptSegError
    from conceptseg.runs.names import run_key_for
    from conceptseg.runs.review import state

    ids = list(ids or [])
    done = done or action + "ed"
    if not ids:
        return f"Select the samples to {action}, or open one."
    try:
        record = state(dataset, pred_field)
    except ConceptSegError as e:
        return str(e)
    demos = set(record["rounds"][-1]["demonstrations"]) | set(record["negatives"])
    with_prediction = set()
    if dataset.has_field(pred_field):
        with_prediction = set(dataset.select(ids).match(F(f"{pred_field}.run_key") == run_key_for(pred_field))
                              .values("id"))

    def some(found: list[str]) -> str:
        return "this sample" if len(ids) == 1 else f"{len(found)} of the {len(ids)} selected samples"

    def verb(found: list[str], one: str, many: str) -> str:
        return one if len(found) == 1 else many

    found = [i for i in ids if i in demos]
    if found:
        return (f"Cannot {action}: {some(found)} {verb(found, 'is a demonstration', 'are demonstrations')} of this "
                "run (a demonstration's mask is its ground truth already).")
    found = [i for i in ids if i in record["accepted"]]
    if found:
        return (f"Cannot {action}: {some(found)} {verb(found, 'is', 'are')} accepted already; to change a mask, "
                "promote a corrected one.")
    found = [i for i in ids if i not in with_prediction]
    if found:
        return (f"Cannot {action}: {some(found)} {verb(found, 'has', 'have')} no prediction of this run in "
                f"{pred_field!r} (not one of its targets); only segmented targets can be {done}.")
    if action == "accept" and not replace and len(ids) <= TRUTH_CHECK_LIMIT:
        from conceptseg.runs.review import holding_truth

        found = holding_truth(dataset, pred_field, ids, mask_field)
        if found:
            return (f"Cannot accept: {some(found)} already {verb(found, 'has', 'have')} ground truth of the concept's "
                    "class; tick 'Replace existing ground truth of this class' to replace it.")
    return None
