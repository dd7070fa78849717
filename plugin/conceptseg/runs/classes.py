"""What "the concept" is on a label: one or more classes of a label field.

The one place that turns a FiftyOne label into a bool mask of the concept. A field can be

- a ``Segmentation``: integer masks (a class per value) or RGB masks (a class per colour),
  named through ``mask_targets`` (the field's, else the dataset's default) when it has them;
- ``Detections`` / ``Detection`` with instance masks (a box-only detection counts as its
  filled box, and the run record says how many there were);
- ``Polylines`` / ``Polyline``, drawn as FiftyOne draws them: a filled polygon when
  ``filled=True``, otherwise a 1-pixel line (closed back to its start only when ``closed=True``).

Classes are given by name (``"car"``) or by value (``"3"``, ``"#ff0000"``). Without classes,
a field whose demonstrations show exactly one class is that class; several classes are an
error that lists them. A label with none of the concept's classes gives an empty mask: on a
demonstration that is a negative ("absent here").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import fiftyone as fo
import numpy as np

from conceptseg.errors import DemonstrationError, FieldError

SEGMENTATION = (fo.Segmentation,)
INSTANCES = (fo.Detections, fo.Detection)
SHAPES = (fo.Polylines, fo.Polyline)
# FiftyOne's line thickness for unfilled polylines (``Polyline.to_segmentation(thickness=1)``).
POLYLINE_THICKNESS = 1
CONCEPT_TYPES = SEGMENTATION + INSTANCES + SHAPES


@dataclass
class Concept:
    """The classes of one label field that make up the concept.

    Attributes:
        field: the label field
        classes: the names the user sees (None: every label of the field is the concept)
        values: Segmentation values of those classes (ints, or (r, g, b) tuples for RGB masks)
        box_only: demonstrations' detections without an instance mask (drawn as filled boxes)
        unshown: requested classes that no demonstration shows (they teach nothing)
    """

    field: str
    classes: list[str] | None = None
    values: list = field(default_factory=list)
    box_only: int = 0
    unshown: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What the run record and the CLI (on stderr) say about the concept's classes."""
        if not self.unshown:
            return []
        return [
            f"No demonstration shows class {', '.join(self.unshown)} in {self.field!r}: "
            f"{'it is' if len(self.unshown) == 1 else 'they are'} learned from no example "
            "(add a demonstration that shows it, or leave it out of the classes)."
        ]

    def describe(self) -> str:
        """The concept in words, for run records and labels."""
        return ", ".join(self.classes) if self.classes else self.field


def mask_targets_of(collection, field_name: str) -> dict:
    """The field's mask targets (value → name), else the dataset's default ones.

    On a video dataset (and its frames views) a frame field's targets are keyed ``frames.<field>``.
    """
    dataset = collection._root_dataset
    keys = [field_name]
    if dataset.media_type == "video":
        keys.insert(0, dataset._FRAMES_PREFIX + field_name)
    for key in keys:
        if dataset.mask_targets.get(key):
            return dict(dataset.mask_targets[key])
    return dict(dataset.default_mask_targets or {})


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def _name_of(value, mask_targets: dict) -> str:
    """A Segmentation value's class name: its mask target, else the value itself."""
    key = _hex(value) if isinstance(value, tuple) else int(value)
    for k, name in mask_targets.items():
        if _same_value(k, key):
            return str(name)
    return str(key)


def _same_value(target_key, value) -> bool:
    if isinstance(value, str):  # an RGB hex colour
        return isinstance(target_key, str) and target_key.lower() == value.lower()
    try:
        return int(target_key) == value
    except (TypeError, ValueError):
        return False


def segmentation_values(label) -> list:
    """The non-background values of a Segmentation's mask (ints, or RGB tuples)."""
    if label.mask is None and label.mask_path is None:
        return []
    mask = label.get_mask()
    if mask.ndim == 3:
        colours = np.unique(mask[..., :3].reshape(-1, 3), axis=0)
        return [tuple(int(c) for c in rgb) for rgb in colours if rgb.any()]
    return [int(v) for v in np.unique(mask) if v != 0]


def label_classes(label, mask_targets: dict) -> set[str]:
    """Names of the classes present on one label (empty for None or an empty label)."""
    if label is None:
        return set()
    if isinstance(label, fo.Segmentation):
        return {_name_of(v, mask_targets) for v in segmentation_values(label)}
    return {str(item.label) for item in _items(label)}


def _items(label) -> list:
    if isinstance(label, fo.Detections):
        return list(label.detections)
    if isinstance(label, fo.Polylines):
        return list(label.polylines)
    return [label]


def resolve(field_name: str, label_type, requested: list[str] | None, present: set[str],
            mask_targets: dict) -> Concept:
    """Checks the requested classes against the field and the demonstrations; the Concept.

    ``present`` is the set of class names seen on the demonstrations.
    """
    requested = [c.strip() for c in requested or [] if c and c.strip()]
    is_segmentation = issubclass(label_type, fo.Segmentation)
    if not requested:
        if len(present) > 1:
            raise FieldError(
                f"Field {field_name!r} holds several classes on the demonstrations: "
                f"{', '.join(sorted(present))}. Say which are the concept (--classes A[,B], "
                "classes=[...], or the form's Classes field)."
            )
        if not present:
            raise DemonstrationError(
                f"No demonstration has a label in {field_name!r}: at least one must show the concept."
            )
        only = next(iter(present))
        if is_segmentation:
            return Concept(field_name, classes=None, values=_values_for([only], mask_targets, field_name))
        return Concept(field_name, classes=[only])
    if is_segmentation:
        if not mask_targets and len(present) <= 1 and not all(_is_value(c) for c in requested):
            raise FieldError(
                f"Field {field_name!r} is binary (no mask_targets, one class on the demonstrations): "
                f"it has no class {', '.join(requested)!s}; leave classes out."
            )
        values = _values_for(requested, mask_targets, field_name)
        names = [_name_of(v, mask_targets) for v in values]
    else:
        names = requested
    missing = [n for n in names if n not in present]
    if len(missing) == len(names):
        raise DemonstrationError(
            f"No demonstration shows class {', '.join(missing)} in {field_name!r}; classes present on "
            f"the demonstrations: {', '.join(sorted(present)) or 'none'}."
        )
    return Concept(field_name, classes=names, values=values if is_segmentation else [], unshown=missing)


def named(collection, field_name: str, requested: list[str] | None) -> Concept | None:
    """The Concept of ``requested`` classes of a field, without looking at any label (None: all labels)."""
    requested = [c.strip() for c in requested or [] if c and c.strip()]
    if not requested:
        return None
    label_type = collection.get_field_schema()[field_name].document_type
    if issubclass(label_type, fo.Segmentation):
        mask_targets = mask_targets_of(collection, field_name)
        values = _values_for(requested, mask_targets, field_name)
        return Concept(field_name, [_name_of(v, mask_targets) for v in values], values)
    return Concept(field_name, requested)


_HEX = frozenset("0123456789abcdefABCDEF")


def _is_colour(name: str) -> bool:
    """``#rrggbb``: a hash and six hex digits."""
    return len(name) == 7 and name.startswith("#") and all(c in _HEX for c in name[1:])


def _is_value(name: str) -> bool:
    return (name.lstrip("-").isascii() and name.lstrip("-").isdigit()) or _is_colour(name)


def _values_for(names: list[str], mask_targets: dict, field_name: str) -> list:
    """Segmentation values of class names or values, through the mask targets."""
    values = []
    for name in names:
        hits = [k for k, v in mask_targets.items() if str(v) == name]
        if hits:
            values.extend(_parse_value(k) for k in hits)
        elif _is_value(name):
            values.append(_parse_value(name))
        elif name.startswith("#"):
            raise FieldError(
                f"Class {name!r} is not a mask colour: a colour is '#' and six hex digits (#rrggbb, "
                "e.g. #ff0000), and no mask target of "
                f"{field_name!r} is named {name!r}."
            )
        else:
            known = ", ".join(f"{k}: {v}" for k, v in mask_targets.items()) or "none"
            raise FieldError(
                f"Class {name!r} is not in the mask targets of {field_name!r} ({known}); give a class "
                "name from there or a mask value."
            )
    return values


def _parse_value(key):
    if isinstance(key, str) and key.startswith("#"):
        return tuple(int(key[i : i + 2], 16) for i in (1, 3, 5))
    return int(key)


def concept_mask(label, frame_size: tuple[int, int], concept: Concept | None = None,
                 resize: bool = False) -> np.ndarray | None:
    """The concept's pixels on one label as an HxW bool mask; None when the label is absent.

    ``frame_size`` is (width, height). Without a concept every labelled pixel counts.
    A Segmentation mask of another size is an error unless ``resize`` (then nearest-neighbour).
    """
    width, height = frame_size
    if label is None:
        return None
    if isinstance(label, fo.Segmentation):
        if label.mask is None and label.mask_path is None:
            return None
        mask = _segmentation_mask(label.get_mask(), concept)
        if mask.shape != (height, width):
            if not resize:
                raise DemonstrationError(
                    f"A mask is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; "
                    "masks must cover their image pixel for pixel (pass resize_masks / --resize-masks "
                    "to stretch them with nearest neighbour)."
                )
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        return mask
    out = np.zeros((height, width), bool)
    for item in _items(label):
        if concept is not None and concept.classes is not None and str(item.label) not in concept.classes:
            continue
        out |= _item_mask(item, frame_size)
    return out


def _segmentation_mask(mask: np.ndarray, concept: Concept | None) -> np.ndarray:
    if concept is None or not concept.values:
        return mask.any(axis=2) if mask.ndim == 3 else mask > 0
    if mask.ndim == 3:
        out = np.zeros(mask.shape[:2], bool)
        for rgb in concept.values:
            if isinstance(rgb, tuple):
                out |= np.all(mask[..., :3] == np.array(rgb, mask.dtype), axis=2)
        return out
    return np.isin(mask, [v for v in concept.values if not isinstance(v, tuple)])


def _item_mask(item, frame_size) -> np.ndarray:
    width, height = frame_size
    if isinstance(item, fo.Polyline):
        return polyline_mask(item, frame_size)
    if item.mask is not None or item.mask_path is not None:
        return item.to_segmentation(frame_size=frame_size, target=1).get_mask() > 0
    return box_mask(item.bounding_box, frame_size)


def polyline_mask(item, frame_size) -> np.ndarray:
    """One Polyline as an HxW bool mask, drawn as FiftyOne draws it (``Polyline.to_segmentation``).

    ``filled=True``: each shape is a filled polygon (their union). Otherwise each shape is a line of
    FiftyOne's default thickness (1 px), joined back to its start only when ``closed=True``:
    an open polyline (a crack, a wire) is its line, never the polygon its points happen to
    enclose. Vertices are ``round(x * width), round(y * height)``, as in FiftyOne.
    """
    width, height = frame_size
    out = np.zeros((height, width), np.uint8)
    shapes = [
        np.array([(int(round(x * width)), int(round(y * height))) for x, y in shape], np.int32)
        for shape in item.points or []
    ]
    shapes = [s for s in shapes if len(s)]
    if not shapes:
        return out > 0
    if item.filled:
        # each shape filled on its own (their union; one fillPoly call over all of them would
        # punch a hole where two overlap); one or two points enclose nothing: their line
        for s in shapes:
            if len(s) >= 3:
                cv2.fillPoly(out, [s], 1)
            else:
                cv2.polylines(out, [s], False, 1, thickness=POLYLINE_THICKNESS)
    else:
        cv2.polylines(out, shapes, bool(item.closed), 1, thickness=POLYLINE_THICKNESS)
    return out > 0


def is_box_only(item) -> bool:
    """A detection without an instance mask (it counts as its filled box)."""
    return isinstance(item, fo.Detection) and item.mask is None and item.mask_path is None


def box_only_count(label, concept: Concept | None) -> int:
    """How many of a label's detections of the concept have no instance mask."""
    if label is None or not isinstance(label, INSTANCES):
        return 0
    return sum(
        1 for d in _items(label)
        if is_box_only(d) and (concept is None or concept.classes is None or str(d.label) in concept.classes)
    )


def box_mask(box, frame_size) -> np.ndarray:
    """A relative [x, y, w, h] box as a filled HxW bool mask."""
    width, height = frame_size
    x, y, w, h = box
    out = np.zeros((height, width), bool)
    x1, y1 = int(round(x * width)), int(round(y * height))
    x2, y2 = int(round((x + w) * width)), int(round((y + h) * height))
    out[y1:y2, x1:x2] = True
    return out
