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

from conceptseg.runs import classes as classes_
from conceptseg.errors import ConceptSegError, DemonstrationError, FieldError, ImageReadError
from conceptseg.imaging import load_rgb, to_rgb_float
from conceptseg.types import Demonstration, Target
from conceptseg.runs.video import FrameReader, is_video_path

MASK_TYPES = classes_.CONCEPT_TYPES


def label_to_mask(label, frame_size: tuple[int, int], concept: classes_.Concept | None = None,
                  resize: bool = True) -> np.ndarray | None:
    """A label's concept pixels as an HxW bool mask (None if absent); see :mod:`conceptseg.runs.classes`.

    ``frame_size`` is (width, height). Without a concept every labelled pixel counts; a
    Detection without an instance mask counts as its filled box. Ground truth read for
    evaluation and training is resized to its image (``resize``); demonstrations are read
    strictly by :func:`read_demonstrations`.
    """
    return classes_.concept_mask(label, frame_size, concept, resize=resize)


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
            "it must be a Segmentation, Detections (with instance masks, or boxes) or Polylines."
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


def read_demonstrations(collection, mask_field: str, classes: list[str] | None = None,
                        resize_masks: bool = False) -> tuple[list[Demonstration], "classes_.Concept"]:
    """Every sample of ``collection`` as a Demonstration of the concept, and that Concept.

    The concept is ``classes`` of ``mask_field`` (see :mod:`conceptseg.runs.classes`); the labels
    are read through the collection, so a view's label filters count. A demonstration
    without any label of the concept is a negative (an empty mask: "absent here"); at
    least one must show the concept. Images are read once.
    """
    check_mask_field(collection, mask_field, "demonstration mask")
    mask_targets = classes_.mask_targets_of(collection, mask_field)
    label_type = collection.get_field_schema()[mask_field].document_type
    frames = FrameReader()
    rows = []
    try:
        for sample in collection.select_fields(mask_field).iter_samples():
            rows.append((sample.id, sample.filepath, load_sample_image(sample, frames), sample[mask_field]))
    finally:
        frames.close()
    present = set().union(*(classes_.label_classes(label, mask_targets) for *_, label in rows))
    concept = classes_.resolve(mask_field, label_type, classes, present, mask_targets)
    demonstrations = []
    for sample_id, filepath, image, label in rows:
        height, width = image.shape[:2]
        try:
            mask = classes_.concept_mask(label, (width, height), concept, resize=resize_masks)
        except DemonstrationError as e:
            raise DemonstrationError(f"Demonstration {sample_id} ({os.path.basename(filepath)}): {e}") from None
        concept.box_only += classes_.box_only_count(label, concept)
        if mask is None:
            mask = np.zeros((height, width), bool)
        demonstrations.append(Demonstration(image=image, mask=mask, id=sample_id))
    if demonstrations and not any(d.mask.any() for d in demonstrations):
        raise DemonstrationError(
            f"None of the {len(demonstrations)} demonstrations shows {concept.describe()!r} in "
            f"{mask_field!r}: they are all negatives. Add at least one that shows the concept."
        )
    return demonstrations, concept


def load_sample_image(sample, frames: FrameReader | None = None) -> np.ndarray:
    """A sample's image as HxWx3 float; a frame sample of a video is decoded from the video."""
    if frames is not None and is_video_path(sample.filepath):
        number = sample["frame_number"] if sample.has_field("frame_number") else None
        if number is None:
            raise ImageReadError(
                f"{sample.filepath} is a video: segment its frames (a frames view), not the file."
            )
        return to_rgb_float(frames.read(sample.filepath, int(number)))
    return load_rgb(sample.filepath)


def iter_targets(collection) -> Iterator[tuple[object, Target | None, str | None]]:
    """Yields (sample, Target or None, error) per sample; unreadable images don't stop it.

    Frames of a video are decoded in order from the video itself.
    """
    frames = FrameReader()
    try:
        for sample in collection.iter_samples():
            try:
                yield sample, Target(image=load_sample_image(sample, frames), id=sample.id), None
            except ConceptSegError as e:
                yield sample, None, str(e)
    finally:
        frames.close()


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
