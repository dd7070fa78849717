"""FiftyOne ↔ engine: demonstrations and targets from samples, masks back into labels.

Besides ``jobs.py`` (which orchestrates whole runs), this is the only engine module that
imports FiftyOne; everything here works on one sample or one label at a time.
"""

from __future__ import annotations

import os
from typing import Iterator

import cv2
import fiftyone as fo
import numpy as np

from conceptseg.errors import ConceptSegError, DemonstrationError, FieldError
from conceptseg.imaging import load_rgb
from conceptseg.types import Demonstration, Target

MASK_TYPES = (fo.Segmentation, fo.Detections, fo.Detection)


def label_to_mask(label, frame_size: tuple[int, int]) -> np.ndarray | None:
    """A Segmentation, Detection(s) with instance masks → HxW bool mask (None if absent).

    ``frame_size`` is (width, height). Segmentation values > 0 are the concept (RGB
    masks: any non-black pixel). A Detection without an instance mask counts as its
    filled box, so box-only ground truth still teaches a rough concept.
    """
    width, height = frame_size
    if label is None:
        return None
    if isinstance(label, fo.Segmentation):
        if label.mask is None and label.mask_path is None:
            return None
        mask = label.get_mask()
        if mask.ndim == 3:
            mask = mask.any(axis=2)
        mask = mask > 0
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        return mask
    detections = [label] if isinstance(label, fo.Detection) else label.detections
    if isinstance(label, fo.Detections) and not detections:
        return np.zeros((height, width), bool)
    out = np.zeros((height, width), bool)
    for det in detections:
        if det.mask is not None or det.mask_path is not None:
            out |= det.to_segmentation(frame_size=frame_size, target=1).get_mask() > 0
        else:
            out |= _box_mask(det.bounding_box, frame_size)
    return out


def frame_size(sample, *fields: str) -> tuple[int, int]:
    """(width, height) of a sample's image: from its metadata, a Segmentation mask, or the file."""
    if sample.metadata is not None and sample.metadata.width:
        return sample.metadata.width, sample.metadata.height
    for field in fields:
        label = sample[field]
        if isinstance(label, fo.Segmentation) and (label.mask is not None or label.mask_path):
            height, width = label.get_mask().shape[:2]
            return width, height
    # Read the header only; the sample is left as it is (no metadata written).
    meta = fo.ImageMetadata.build_for(sample.filepath)
    return meta.width, meta.height


def _box_mask(box, frame_size) -> np.ndarray:
    width, height = frame_size
    x, y, w, h = box
    out = np.zeros((height, width), bool)
    x1, y1 = int(round(x * width)), int(round(y * height))
    x2, y2 = int(round((x + w) * width)), int(round((y + h) * height))
    out[y1:y2, x1:x2] = True
    return out


def check_mask_field(collection, field: str, role: str) -> None:
    """Raises FieldError unless ``field`` exists and holds masks."""
    schema = collection.get_field_schema()
    if field not in schema:
        raise FieldError(
            f"The {role} field {field!r} does not exist on dataset {collection._dataset.name!r}; "
            f"label fields there: {', '.join(sorted(label_fields(collection))) or 'none'}."
        )
    doc_type = getattr(schema[field], "document_type", None)
    if doc_type not in MASK_TYPES:
        raise FieldError(
            f"The {role} field {field!r} holds {getattr(doc_type, '__name__', type(schema[field]).__name__)}; "
            "it must be a Segmentation or Detections with instance masks."
        )


def label_fields(collection) -> list[str]:
    """Names of the fields that can hold masks."""
    return [
        name
        for name, f in collection.get_field_schema().items()
        if getattr(f, "document_type", None) in MASK_TYPES
    ]


def read_demonstration(sample, mask_field: str) -> Demonstration:
    """One sample → Demonstration; raises DemonstrationError if it has no usable mask."""
    image = load_rgb(sample.filepath)
    height, width = image.shape[:2]
    mask = label_to_mask(sample[mask_field], (width, height))
    if mask is None:
        raise DemonstrationError(
            f"Demonstration sample {sample.id} ({os.path.basename(sample.filepath)}) has no mask "
            f"in field {mask_field!r}; give it one or deselect it."
        )
    return Demonstration(image=image, mask=mask, id=sample.id)


def read_demonstrations(collection, mask_field: str) -> list[Demonstration]:
    """Every sample of ``collection`` as a Demonstration (images read once)."""
    check_mask_field(collection, mask_field, "demonstration mask")
    return [read_demonstration(s, mask_field) for s in collection.select_fields(mask_field)]


def iter_targets(collection) -> Iterator[tuple[object, Target | None, str | None]]:
    """Yields (sample, Target or None, error) per sample; unreadable images don't stop it."""
    for sample in collection.iter_samples():
        try:
            yield sample, Target(image=load_rgb(sample.filepath), id=sample.id), None
        except ConceptSegError as e:
            yield sample, None, str(e)


def write_mask(mask: np.ndarray, path: str) -> None:
    """Writes an HxW bool mask as a 0/1 uint8 PNG (FiftyOne's mask convention)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, mask.astype(np.uint8)):
        raise ConceptSegError(f"Could not write mask file {path}; check that the directory is writable.")


def mask_to_segmentation(mask: np.ndarray, path: str, **attributes) -> fo.Segmentation:
    """Writes the mask to ``path`` and returns a Segmentation pointing at it."""
    write_mask(mask, path)
    return fo.Segmentation(mask_path=os.path.abspath(path), **attributes)


def mask_to_detections(
    mask: np.ndarray,
    probability: np.ndarray,
    label: str,
    min_area: int = 16,
    **attributes,
) -> fo.Detections:
    """Splits a mask into connected instances: box-cropped masks, confidence = mean probability.

    Components smaller than ``min_area`` pixels are specks, not instances, and are left
    out of the Detections (they stay in the Segmentation). ``attributes`` (route, rule,
    run_key, ...) go on the Detections container once, not on every instance.
    """
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    height, width = mask.shape
    detections = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        crop = components[y : y + h, x : x + w] == i
        confidence = float(probability[y : y + h, x : x + w][crop].mean())
        detections.append(
            fo.Detection(
                label=label,
                bounding_box=[x / width, y / height, w / width, h / height],
                mask=crop,
                confidence=confidence,
            )
        )
    return fo.Detections(detections=detections, **attributes)


def _training_loader(filepath: str, label):
    """Reads one sample's image and mask when its episode is built (not before)."""

    def load():
        image = load_rgb(filepath)
        height, width = image.shape[:2]
        return image, label_to_mask(label, (width, height))

    return load


def training_samples(collection, concept_field: str, mask_field: str, test_tag: str = "test",
                     question_field: str = "question", references_field: str = "references",
                     level_field: str = "level") -> tuple[list, dict]:
    """The view's samples as TrainingSamples, and counts of those left out (no concept, no mask).

    Samples tagged ``test_tag`` are held-out targets; all others are train. The optional
    fields give the task text (else the concept name), the reference images of a
    multi-image task (CR) and the level, when the dataset has them.
    """
    from conceptseg.training.episodes import TrainingSample

    schema = collection.get_field_schema()
    if concept_field not in schema:
        raise FieldError(
            f"The concept field {concept_field!r} does not exist on dataset {collection._dataset.name!r}; "
            f"fields there: {', '.join(sorted(schema))}. Give the field that names each sample's concept."
        )
    check_mask_field(collection, mask_field, "training mask")
    optional = [f for f in (question_field, references_field, level_field) if f and f in schema]
    names = ["id", "filepath", "tags", concept_field, mask_field, *optional]
    columns = dict(zip(names, collection.values(names)))
    samples, left_out = [], {"without_concept": 0, "without_mask": 0}
    for i, sample_id in enumerate(columns["id"]):
        concept, label = columns[concept_field][i], columns[mask_field][i]
        if concept is None or str(concept).strip() == "":
            left_out["without_concept"] += 1
            continue
        if label is None:
            left_out["without_mask"] += 1
            continue
        extra = {f: columns[f][i] for f in optional}
        references = extra.get(references_field) or None
        samples.append(TrainingSample(
            id=sample_id,
            concept=str(concept),
            load=_training_loader(columns["filepath"][i], label),
            split="test" if test_tag in (columns["tags"][i] or []) else "train",
            question=extra.get(question_field) or None,
            references=[(lambda p=p: load_rgb(p)) for p in references] if references else None,
            level=extra.get(level_field),
        ))
    return samples, left_out
