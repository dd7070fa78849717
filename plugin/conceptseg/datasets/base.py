"""What every importer shares: the import report, records, errors and mask conversion.

Importers read a source layout and yield `Record`s; nothing here imports FiftyOne
(``store.py`` turns records into samples). Source files are only read: every ground-truth
mask is written anew as a 0/1 PNG under the dataset's mask directory.

Mask binarisation (the threshold, documented once here):
- palette PNGs and integer masks wider than 8 bits are label images: label > 0;
- 8-bit masks: 0/1 masks as they are; otherwise ``conceptseg.metrics.binarize``'s
  > 127 cut (0/255 masks, anti-aliased or soft edges), except when the maximum is at
  most 127: such a mask holds small label ids, which a > 127 cut would erase, so > 0;
- RGB(A) masks: the brightest colour channel is the 8-bit mask (alpha ignored);
- float masks (TIFF): ``binarize``'s > 0.5.
Every mask that was not already 0/1 or 0/255 is listed in ``ImportReport.binarised``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from conceptseg.errors import ConceptSegError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Ground truth and, for ReasonSeg, the regions its annotators marked "ignore".
GT_FIELD = "ground_truth"
IGNORE_FIELD = "ignore_mask"


class DatasetFormatError(ConceptSegError):
    """A source dataset does not have the layout its format needs."""


class MaskSizeError(DatasetFormatError):
    """A ground-truth mask does not cover its image pixel for pixel."""


class DatasetExistsError(ConceptSegError):
    """The dataset to import into exists already."""


@dataclass
class Record:
    """One sample to create: an image, its tags, plain fields and mask files.

    Attributes:
        filepath: absolute path of the (unmodified) source image
        width, height: the image's size in pixels, read from its header
        tags: split tags ("train", "val", "test")
        fields: plain sample fields (level, concept, query, ...); None values are left out
        masks: label field → path of a 0/1 PNG written by the importer
    """

    filepath: str
    width: int
    height: int
    tags: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportReport:
    """What an import did; lists hold file paths (or ids) so the user can find them.

    Attributes:
        dataset, format, source: where it went, how it was read, where from
        imported: samples created; splits: samples per split tag
        skipped: entries not imported (missing or unreadable files, duplicates, invalid)
        missing: files named by the source (manifest, json, csv, a mask's stem) but absent
        unreadable: files present but not decodable as images
        duplicates: ids seen before (the first one is kept)
        invalid: manifest entries that could not be read, with the reason
        resized: masks resized (nearest) to their image's size (``resize_masks``)
        binarised: masks that were not 0/1 or 0/255 and were thresholded (see module doc)
        without_mask: images imported without ground truth (``folder`` format only)
    """

    dataset: str
    format: str
    source: str
    imported: int = 0
    skipped: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    binarised: list[str] = field(default_factory=list)
    without_mask: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-able copy."""
        return asdict(self)

    def summary(self) -> str:
        """One line a person can read."""
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items())) or "no split tags"
        return (
            f"imported {self.imported} samples into {self.dataset!r} ({splits}); skipped {self.skipped} "
            f"(missing files {len(self.missing)}, unreadable {len(self.unreadable)}, duplicates "
            f"{len(self.duplicates)}, invalid {len(self.invalid)}); masks resized {len(self.resized)}, "
            f"binarised {len(self.binarised)}; images without mask {len(self.without_mask)}"
        )


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the image header, or None when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def read_json(path: str) -> Any:
    """Parses a JSON file; LISA's files fall back to cp1252, as LISA's own loader does."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        with open(path, encoding="cp1252") as f:
            return json.load(f)


def read_binary_mask(path: str) -> tuple[np.ndarray, bool] | None:
    """Reads a mask file → (HxW bool, was it already 0/1 or 0/255); None if undecodable."""
    from PIL import Image, UnidentifiedImageError

    from conceptseg.metrics import binarize

    try:
        with Image.open(path) as image:
            palette = image.mode == "P"
            values = np.array(image)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    if values.ndim == 3:
        values = values[..., :3].max(axis=2)
    if values.dtype == bool:
        return values, True
    present = set(np.unique(values).tolist())
    plain = present <= {0, 1} or present <= {0, 255}
    if palette or (np.issubdtype(values.dtype, np.integer) and values.dtype != np.uint8):
        return values > 0, plain
    if values.dtype == np.uint8 and 1 < values.max() <= 127:
        return values > 0, plain
    return binarize(values), plain


def write_mask(mask: np.ndarray, path: str) -> str:
    """Writes an HxW bool mask as a 0/1 uint8 PNG; returns the absolute path."""
    # Encoded in memory and written by Python: cv2.imwrite crashes (SIGSEGV) on paths that
    # are not valid UTF-8, and Python's open() takes any path the file system does.
    ok, data = cv2.imencode(".png", mask.astype(np.uint8))
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if not ok:
            raise OSError("PNG encoding failed")
        with open(path, "wb") as f:
            f.write(data.tobytes())
    except OSError as e:
        raise ConceptSegError(
            f"Could not write mask file {printable(path)} ({e}); check that the directory is writable."
        ) from e
    return os.path.abspath(path)


def printable(path: str) -> str:
    """A path as valid UTF-8 text (undecodable bytes as \\xNN) for reports and the database."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def utf8_name(path: str, report: ImportReport) -> bool:
    """Whether the file name is valid UTF-8; if not, it is reported (FiftyOne stores paths as UTF-8)."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        report.invalid.append(f"{printable(path)}: the file name is not valid UTF-8; rename the file")
        report.skipped += 1
        return False


def fit_mask(mask: np.ndarray, size: tuple[int, int], source: str, resize: bool, report: ImportReport) -> np.ndarray:
    """Returns the mask at the image's (width, height); resizes only when allowed."""
    from conceptseg.metrics import resize_mask

    width, height = size
    if mask.shape == (height, width):
        return mask
    if not resize:
        raise MaskSizeError(
            f"Mask {source} is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}. "
            "Fix the mask, or pass resize_masks=True (--resize-masks) to resize masks (nearest neighbour)."
        )
    report.resized.append(source)
    return resize_mask(mask, (height, width))


def convert_mask(source: str, size: tuple[int, int], out_path: str, resize: bool, report: ImportReport) -> str | None:
    """Reads ``source``, binarises and fits it to ``size``, writes a 0/1 PNG; None if unreadable."""
    read = read_binary_mask(source)
    if read is None:
        report.unreadable.append(source)
        return None
    mask, plain = read
    if not plain:
        report.binarised.append(source)
    return write_mask(fit_mask(mask, size, source, resize, report), out_path)


def mask_name(index: int, source: str) -> str:
    """A unique, stable file name for the index-th record's mask."""
    return f"{index:07d}_{os.path.splitext(os.path.basename(source))[0]}.png"
