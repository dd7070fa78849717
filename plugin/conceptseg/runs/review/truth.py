"""Writing ground truth: the concept's class in the demonstrations' mask field, never over other classes.

A run made by `concepts apply` learned from demonstrations that are not samples here: its accepted
masks go into a mask field of this dataset that the user names once (:func:`truth_field`).
"""

from __future__ import annotations

import os

import cv2
import fiftyone as fo
import numpy as np

from conceptseg.runs import classes as classes_
from conceptseg.runs import fiftyone_io as fio
from conceptseg.runs import names
from conceptseg.errors import ConceptSegError, FieldError
from conceptseg.runs.review.record import ReviewError, check_demonstrations_here, concept_label_type, applied_source


def truth_class(dataset, config) -> tuple[type, str, object]:
    """(label type, class name, Segmentation value or None) under which accepted masks are written."""
    check_demonstrations_here(dataset, config)
    field = config.mask_field
    schema = dataset.get_field_schema()
    if field not in schema:
        raise FieldError(f"The demonstrations' mask field {field!r} no longer exists on {dataset.name!r}.")
    label_type = schema[field].document_type
    if label_type not in (fo.Segmentation, fo.Detections, fo.Polylines):
        raise FieldError(
            f"Field {field!r} holds {label_type.__name__}: accepted masks can be written into a Segmentation, "
            "Detections or Polylines field only."
        )
    requested = list(config.classes or [])
    if len(requested) > 1:
        raise ReviewError(
            f"The concept is several classes ({', '.join(requested)}): an accepted mask cannot say which "
            "pixels are which. Promote corrections per class from a field that has them."
        )
    demos = dataset.select(list(config.demonstration_ids or []))
    if label_type is fo.Segmentation:
        if requested:
            concept = classes_.named(dataset, field, requested)
            return label_type, concept.classes[0], concept.values[0]
        for label in demos.values(field):
            if mask_file_missing(label):
                raise FieldError(f"The mask file {label.mask_path} of a demonstration in {field!r} is missing; "
                                 "restore it (or segment again) before accepting.")
            values = classes_.segmentation_values(label) if label is not None else []
            if len(values) == 1:
                return label_type, classes_._name_of(values[0], classes_.mask_targets_of(dataset, field)), values[0]
        return label_type, "1", 1
    if requested:
        return label_type, requested[0], None
    present = set().union(*(classes_.label_classes(label, {}) for label in demos.values(field)))
    if len(present) != 1:
        raise ReviewError(f"Field {field!r} shows {len(present)} classes on the demonstrations; re-run with --classes.")
    return label_type, next(iter(present)), None


def truth_dir(dataset, field: str) -> str:
    """Ground truth's own folder: no prediction field reaches it (see :mod:`conceptseg.runs.outputs`)."""
    from conceptseg.runs.outputs import REVIEWED, mask_dir

    return mask_dir(dataset.name, REVIEWED, field)


def mask_file_missing(label) -> bool:
    return (isinstance(label, fo.Segmentation) and label.mask is None and bool(label.mask_path)
            and not os.path.isfile(label.mask_path))


def has_class(label, target: tuple, pixels: np.ndarray | None = None) -> bool:
    """Whether a ground-truth label already shows the concept's class (``pixels``: its mask, if read already)."""
    label_type, name, value = target
    if label is None:
        return False
    if label_type is not fo.Segmentation:
        return any(str(i.label) == name for i in classes_._items(label))
    if pixels is None:
        if label.mask is None and not label.mask_path:
            return False
        pixels = label.get_mask()
    if isinstance(value, tuple):
        return pixels.ndim == 3 and bool(np.all(pixels[..., :3] == np.array(value, pixels.dtype), axis=2).any())
    return bool((pixels == value).any())


def truth_problems(view, field: str, target: tuple, masks: dict, replace: bool = False,
                   may_replace=()) -> tuple[dict[str, str], list[str]]:
    """Reads each sample's ground truth before anything is written: (why an id cannot take its mask, ids
    whose ground truth of the class would be replaced).

    Ground truth of the concept's class already there is a problem unless ``replace`` (or the id is
    in ``may_replace``: truth this loop wrote itself); so are a missing mask file, a mask of
    another size, and a class value that the mask's integer type cannot hold.
    """
    label_type, name, value = target
    problems, replaced = {}, []
    for sample in view.select_fields(field):
        label, old = sample[field], None
        if label is None:
            continue
        if label_type is fo.Segmentation and (label.mask is not None or label.mask_path):
            if mask_file_missing(label):
                problems[sample.id] = f"its ground-truth mask file {label.mask_path} is missing (restore it, or clear the label)"
                continue
            old, mask = label.get_mask(), masks[sample.id]
            if old.shape[:2] != mask.shape:
                problems[sample.id] = (f"its mask in {field!r} is {old.shape[1]}x{old.shape[0]} but the new one is "
                                       f"{mask.shape[1]}x{mask.shape[0]} (fix the existing mask's size first)")
                continue
            if not isinstance(value, tuple) and np.issubdtype(old.dtype, np.integer):
                bits = np.iinfo(old.dtype)
                if not bits.min <= value <= bits.max:
                    problems[sample.id] = (f"the class value {value} of {name!r} does not fit its {bits.bits}-bit mask "
                                           f"in {field!r} (values {bits.min}..{bits.max}); give the class a value that fits "
                                           "in the field's mask targets")
                    continue
        if has_class(label, target, old):
            if replace or sample.id in may_replace:
                replaced.append(sample.id)
            else:
                problems[sample.id] = (f"already has ground truth of {name!r} in {field!r} (to replace it, pass "
                                       "--replace, or tick 'Replace existing ground truth of this class')")
    return problems, replaced


def grouped(problems: dict[str, str]) -> str:
    """"A, B: why; C: why" (ids with the same reason together)."""
    by_reason: dict[str, list[str]] = {}
    for sample_id, why in problems.items():
        by_reason.setdefault(why, []).append(sample_id)
    return "; ".join(f"{', '.join(ids)}: {why}" for why, ids in by_reason.items())


def write_truth(sample, field: str, target: tuple, mask: np.ndarray, out_dir: str) -> None:
    """Writes ``mask`` as the concept's ground truth on ``sample[field]``, keeping every other label.

    The class's ground truth is replaced, never added to: Segmentation: the concept's old pixels
    are cleared, then the mask's pixels that no other class holds get the concept's value (a mask
    file of the user's is never rewritten: the result goes to a new file). Detections /
    Polylines: the labels of the concept's class are replaced by the mask's instances;
    everything else stays. Callers refuse first what must not be replaced (:func:`truth_problems`).
    """
    label_type, name, value = target
    existing = sample[field]
    if label_type is fo.Segmentation:
        sample[field] = _segmentation_truth(existing, mask, value, os.path.join(out_dir, f"{sample.id}.png"))
        return
    height, width = mask.shape
    items = list(getattr(existing, "detections" if label_type is fo.Detections else "polylines", None) or [])
    # The class's labels are replaced (not duplicated); nothing else is touched.
    items = [i for i in items if str(i.label) != name]
    if label_type is fo.Detections:
        new = fio.mask_to_detections(mask, mask.astype(np.float32), name, min_area=1).detections
        for d in new:
            d.confidence = None
            d["conceptseg_review"] = True
        label = existing if existing is not None else fo.Detections()
        label.detections = items + new
    else:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        new = [fo.Polyline(label=name, points=[[(float(x) / width, float(y) / height) for x, y in c[:, 0]]],
                           closed=True, filled=True, conceptseg_review=True) for c in contours if len(c) >= 3]
        label = existing if existing is not None else fo.Polylines()
        label.polylines = items + new
    sample[field] = label


def _segmentation_truth(existing, mask: np.ndarray, value, path: str) -> fo.Segmentation:
    rgb = isinstance(value, tuple)
    old = None
    if existing is not None and (existing.mask is not None or existing.mask_path):
        old = existing.get_mask()
        if old.shape[:2] != mask.shape:
            raise FieldError(
                f"The existing mask is {old.shape[1]}x{old.shape[0]} but the prediction is "
                f"{mask.shape[1]}x{mask.shape[0]}; fix the existing mask's size first."
            )
    if old is None:
        dtype = np.uint16 if not rgb and value > 255 else np.uint8
        old = np.zeros(mask.shape + ((3,) if rgb else ()), dtype)
    out = old.copy()
    if rgb:
        colour = np.array(value, out.dtype)
        mine = np.all(out[..., :3] == colour, axis=2)
        out[mine] = 0
        free = ~out[..., :3].any(axis=2)
        out[mask & free, :3] = colour
    else:
        out[out == value] = 0
        out[mask & (out == 0)] = value
    label = existing if existing is not None else fo.Segmentation()
    if existing is not None and existing.mask_path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = cv2.cvtColor(out, cv2.COLOR_RGB2BGR) if rgb else out
        if not cv2.imwrite(path, pixels):
            raise ConceptSegError(f"Could not write mask file {path}; check that the directory is writable.")
        label.mask_path = os.path.abspath(path)
    else:
        label.mask = out
    return label


def truth_field(dataset, config, record: dict, mask_field: str | None = None) -> str:
    """The field accepted and promoted masks are written into.

    A run on this dataset's demonstrations: their mask field. A run made by `concepts apply`:
    ``mask_field`` when given (then kept for the loop), the one named before, else the
    concept's own field when this dataset has it; without any, a sentence asks for one.
    """
    source = applied_source(config)
    if source is None:
        if mask_field and mask_field != config.mask_field:
            raise ReviewError(f"This run learned from the demonstrations' masks in {config.mask_field!r}: accepted "
                              f"masks go there, not into {mask_field!r}; leave --mask-field out.")
        return config.mask_field
    chosen, own = record.get("mask_field"), source.get("mask_field")
    outputs = {config.pred_field, getattr(config, "instances_field", None)}
    if mask_field:
        names.check_field_name(mask_field, "mask")
        if chosen and mask_field != chosen:
            raise ReviewError(f"This run's accepted masks are in {chosen!r} already: one loop writes one field, so "
                              f"pass --mask-field {chosen} (or leave it out).")
        if mask_field in outputs:
            raise ReviewError(
                f"{mask_field!r} holds this run's predictions; name another field for the accepted masks.")
        return mask_field
    if chosen:
        return chosen
    if own and own not in outputs and dataset.has_field(own):
        return own
    raise ReviewError(
        f"This run applied the saved concept {source['concept']!r}, whose mask field {own!r} is not on "
        f"{dataset.name!r}: name the field to write accepted masks into (--mask-field F; a new one is created as "
        f"{concept_label_type(source).__name__})."
    )


def remember_truth_field(config, record: dict, field: str) -> None:
    """Keeps the field an applied run's accepts went into, for the loop's later accepts, re-runs and update."""
    if applied_source(config) is not None:
        record["mask_field"] = field


def shown_mask_field(dataset, config, record: dict) -> str | None:
    """The field accepted masks go (or went) into, as `review` shows it; None when not known yet."""
    if applied_source(config) is None:
        return config.mask_field
    try:
        return truth_field(dataset, config, record)
    except ReviewError:
        return None


def truth_target(dataset, config, field: str) -> tuple[type, str, object]:
    """(label type, class name, Segmentation value or None) under which accepted masks are written into ``field``."""
    source = applied_source(config)
    if source is None:
        return truth_class(dataset, config)
    return applied_truth_class(dataset, source, field)


def applied_truth_class(dataset, source: dict, field: str, create: bool = True) -> tuple[type, str, object]:
    """The concept's class in ``field`` here; with ``create``, a missing field is made (the concept's label type).

    A new Segmentation field gets the mask target {1: class}; an existing one with mask
    targets but not the class gets it under the lowest free value.
    """
    classes = list(source.get("classes") or [])
    if len(classes) > 1:
        raise ReviewError(
            f"The concept is several classes ({', '.join(classes)}): an accepted mask cannot say which pixels are "
            "which. Promote corrections per class from a field that has them."
        )
    # Without named classes, the class the concept's demonstrations showed (library.saving._shown_class), when known.
    shown = None if classes else source.get("shown_class")
    name = classes[0] if classes else (shown or {}).get("name") or source["concept"]
    schema = dataset.get_field_schema()
    if field not in schema:
        if not create:
            raise FieldError(
                f"The mask field {field!r} of this run's accepted samples no longer exists on {dataset.name!r}.")
        label_type = concept_label_type(source)
        name = classes[0] if classes else source["concept"]  # a new field: its one class is the concept
        dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=label_type)
        if label_type is fo.Segmentation:
            _add_mask_target(dataset, field, 1, name)
            return label_type, name, 1
        return label_type, name, None
    label_type = getattr(schema[field], "document_type", None)
    if label_type not in (fo.Segmentation, fo.Detections, fo.Polylines):
        raise FieldError(
            f"Field {field!r} holds {getattr(label_type, '__name__', 'no labels')}: accepted masks can be written into "
            "a Segmentation, Detections or Polylines field only; name another --mask-field."
        )
    if label_type is not fo.Segmentation:
        return label_type, name, None
    targets = classes_.mask_targets_of(dataset, field)
    if any(str(v) == name for v in targets.values()):
        concept = classes_.named(dataset, field, [name])
        return label_type, concept.classes[0], concept.values[0]
    if shown and shown.get("value") is not None and not targets:  # a field without names: its values are the classes
        value = shown["value"]
        return label_type, name, tuple(value) if isinstance(value, list) else int(value)
    if shown:  # this field names its classes otherwise: a new class under the concept's own name
        name = source["concept"]
        if any(str(v) == name for v in targets.values()):
            concept = classes_.named(dataset, field, [name])
            return label_type, concept.classes[0], concept.values[0]
    rgb = any(str(k).startswith("#") for k in targets)
    free = next((v for v in range(1, 256) if v not in {int(k) for k in targets if str(k).isdigit()}), None)
    if not targets or rgb or free is None or not create:
        raise ReviewError(
            f"{field!r} has no class {name!r} in its mask targets, so its pixels could not be told apart: add it "
            f"(dataset.mask_targets[{field!r}]), or name another --mask-field (a new one is created)."
        )
    _add_mask_target(dataset, field, free, name)
    return label_type, name, free


def _add_mask_target(dataset, field: str, value: int, name: str) -> None:
    mask_targets = dict(dataset.mask_targets)
    mask_targets[field] = {**dict(mask_targets.get(field) or {}), value: name}
    dataset.mask_targets = mask_targets
    dataset.save()


def absence_check(dataset, config, record: dict, mask_field: str | None = None):
    """(field, Concept or None) in which a sample rejected as absent must not show the concept; None: no such field."""
    source = applied_source(config)
    if source is None:
        return config.mask_field, classes_.named(dataset, config.mask_field, config.classes)
    try:
        field = truth_field(dataset, config, record, mask_field)
    except ReviewError:
        return None  # no ground truth of the concept on this dataset yet: nothing to contradict
    if not dataset.has_field(field):
        return None
    try:
        _, name, _ = applied_truth_class(dataset, source, field, create=False)
    except ConceptSegError:
        return None  # the field has no class of the concept
    return field, classes_.named(dataset, field, [name])
