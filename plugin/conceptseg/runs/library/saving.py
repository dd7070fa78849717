"""Saving a concept: the demonstrations' pixels, their classes and the route's settings, as a new version."""

from __future__ import annotations

import datetime
import json
import os
import re

import cv2
import numpy as np

from conceptseg.runs.library import store
from conceptseg.runs.library.concepts import (FORMAT, LibraryError, new_version, package_versions, write_png,
                                              check_name, exists)


def select_demonstrations(dataset, ids) -> tuple[object, list[str]]:
    """(the samples of ``dataset`` with these ids, warnings): ids that are no sample are named, not dropped.

    LibraryError when an id is not an id at all, or when none is a sample of the dataset.
    """
    from bson import ObjectId

    from conceptseg.runs.review import id_list

    ids = id_list(ids)
    malformed = [i for i in ids if not ObjectId.is_valid(i)]
    if malformed:
        raise LibraryError(f"{', '.join(repr(i) for i in malformed[:5])} is not a sample id (24 hexadecimal "
                           "digits, as `dataset.values('id')` gives them).")
    view = dataset.select(ids)
    found = set(view.values("id"))
    unknown = [i for i in ids if i not in found]
    if not found:
        raise LibraryError(f"None of the {len(ids)} id(s) given is a sample of {dataset.name!r}: nothing to save.")
    warnings = []
    if unknown:
        warnings.append(f"{len(unknown)} of the {len(ids)} id(s) given are not samples of {dataset.name!r} and were "
                        f"left out: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}.")
    return view, warnings


def save(name: str, demonstrations, mask_field: str, classes: list[str] | None = None, route: str = "auto",
         model: str | None = None, threshold: float | None = None, overwrite: bool = False,
         warnings: list[str] | None = None) -> dict:
    """Saves the concept the ``demonstrations`` (a FiftyOne view) show in ``mask_field``; returns its record.

    The route is chosen and verified now (as a run would, at ``segment``'s threshold unless
    given), so the record holds its rule and verification. Images are copied as 8-bit PNGs,
    masks as the concept's 0/255 pixels. ``warnings`` (e.g. ids left out) are kept in the record.
    """
    from conceptseg.runs import fiftyone_io as fio
    from conceptseg.runs.names import class_list
    from conceptseg.runs.plan import load_model
    from conceptseg.routes.router import DEFAULT_THRESHOLD, make_router

    check_name(name)
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if isinstance(classes, str):
        classes = classes.split(",")
    classes = [str(c).replace("\ufeff", "") for c in classes] if classes else classes
    if exists(name) and not overwrite:
        raise LibraryError(f"A concept named {name!r} is saved already; pass --overwrite to replace it.")
    if model is not None and not isinstance(model, str):
        raise LibraryError("Save a concept with a model given by directory, zoo name or hub id, not a loaded bundle.")
    classes = class_list(classes)
    if len(demonstrations) == 0:
        raise LibraryError("No demonstrations: select samples (or a tag) whose masks show the concept.")
    ids, paths = demonstrations.values("id"), demonstrations.values("filepath")
    demos, concept = fio.read_demonstrations(demonstrations, mask_field, classes=classes)
    router = make_router(route, threshold, bundle=load_model(model), question=", ".join(concept.classes or []) or None)
    choice = router.choose(demos)
    record = {
        "format": FORMAT, "name": name, "classes": concept.classes, "concept": concept.describe(),
        "settings": {"route": route, "threshold": threshold, "model": model, "mask_field": mask_field,
                     "classes": classes, "label_type": _label_type(demonstrations, mask_field),
                     "shown_class": None if classes else _shown_class(demonstrations, mask_field)},
        "route": choice.route.name, "rule": choice.route.rule(), "verification": choice.verification,
        "verified": choice.verified, "reason": choice.reason, "demonstrations": [],
        "warnings": list(warnings or []),
        "provenance": {"dataset": demonstrations._dataset.name, "sample_ids": ids,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "versions": package_versions()},
    }

    def fill(directory: str, version: int) -> None:
        record["demonstrations"] = write_demos(directory, [], zip(demos, ids, paths))
        record["version"] = version
        write_record(directory, record)

    new_version(name, fill, overwrite)
    return record


def _label_type(collection, field: str) -> str | None:
    """The label type's name of ``field`` (what `accept` creates on a dataset without it)."""
    schema = collection.get_field_schema()
    if field not in schema and collection.media_type == "video":
        schema = collection.get_frame_field_schema() or {}
    return getattr(getattr(schema.get(field), "document_type", None), "__name__", None)


def _shown_class(collection, field: str) -> dict | None:
    """The one class the demonstrations show in ``field`` when no classes were named: its name and, in
    a Segmentation, its value. An accept on a run applying the concept writes under that class
    (e.g. value 1 "concept"), not a new class named after the concept. None for several classes.
    """
    from conceptseg.runs import classes as classes_

    label_type = _label_type(collection, field)
    if collection.media_type == "video" or label_type is None:
        return None
    labels = [label for label in collection.values(field) if label is not None]
    targets = classes_.mask_targets_of(collection, field)
    if label_type == "Segmentation":
        values = {v for label in labels for v in classes_.segmentation_values(label)}
        if len(values) != 1:
            return None
        value = values.pop()
        return {"name": classes_._name_of(value, targets),
                "value": list(value) if isinstance(value, tuple) else int(value)}
    names = set().union(*(classes_.label_classes(label, targets) for label in labels))
    return {"name": names.pop(), "value": None} if len(names) == 1 else None


def write_demos(directory: str, entries: list[dict], new) -> list[dict]:
    """``entries`` plus each (Demonstration, sample id, filepath[, extra keys]) of ``new`` written as PNGs.

    Names continue after the ones ``entries`` use; returns the grown list.
    """
    from conceptseg.imaging import to_uint8

    os.makedirs(os.path.join(directory, "demos"), exist_ok=True)
    taken = {e[k] for e in entries for k in ("image", "mask")}
    out, i = list(entries), 0
    for demo, sample_id, filepath, *extra in new:
        while f"demos/{i:03d}.png" in taken or f"demos/{i:03d}_mask.png" in taken:
            i += 1
        image, mask = f"demos/{i:03d}.png", f"demos/{i:03d}_mask.png"
        taken |= {image, mask}
        write_png(os.path.join(directory, image), cv2.cvtColor(to_uint8(demo.image), cv2.COLOR_RGB2BGR))
        write_png(os.path.join(directory, mask), demo.mask.astype(np.uint8) * 255)
        out.append({"image": image, "mask": mask, "negative": not demo.mask.any(), "sample_id": sample_id,
                    "filepath": filepath, **(extra[0] if extra else {})})
    return out


def write_record(directory: str, record: dict) -> None:
    with open(os.path.join(directory, store.RECORD), "w") as f:
        json.dump(record, f, indent=1)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # matched whole


def check_model(record: dict):
    """The concept's model, or LibraryError when its bundle directory is gone."""
    model = record["settings"].get("model")
    if not model:
        return None
    from conceptseg.model.zoo import ZOO

    if model in ZOO or os.path.isdir(model) or HUB_ID.fullmatch(model):
        return model
    raise LibraryError(
        f"Concept {record['name']!r} was saved with the model bundle {model!r}, which is missing: restore "
        "the bundle there, or save the concept again with another --model."
    )
