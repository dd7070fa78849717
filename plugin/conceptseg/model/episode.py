"""Demonstrations → Episode: the paper's reference canvas, 600² target and coordinate maps.

Geometry (method.md §2.2): one demonstration is resized to a 600² canvas with no boxes; two or
more fill a row-major 2×2 mosaic of 300² tiles. The box of tile 1 (top-left) is withheld as the
proxy query the policy must find (``<check>``); the boxes of tiles 2–4 are drawn in red and
listed in the prompt. Every resize goes straight to a square: aspect ratio is not preserved.

Box convention everywhere: ``[x1, y1, x2, y2]`` in inclusive pixel coordinates, so ``x2`` is
the index of the last foreground column, not one past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from conceptseg.errors import DemonstrationError
from conceptseg.types import Demonstration

TARGET_SIZE = 600
TILE_SIZE = 300
MAX_REFERENCES = 4
BOX_COLOR = (255, 0, 0)  # red in RGB, the canvas's channel order
BOX_WIDTH = 2

Box = tuple[int, int, int, int]


def mask_box(mask: np.ndarray) -> Box | None:
    """Inclusive box [x1, y1, x2, y2] of all nonzero pixels of an HxW mask; None if empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _round(value: float) -> int:
    # Half-up, not Python's banker's rounding, so x.5 maps the same way on every axis.
    return int(np.floor(value + 0.5))


@dataclass
class BoxMap:
    """Maps boxes between an original HxW image and a square region of side ``size`` at an origin.

    The original is stretched onto the square (aspect ratio not preserved). Inclusive boxes are
    mapped by their pixel edges: x1 by its left edge, x2 by its right edge (x2 + 1), so a box
    covering a whole image covers the whole region.
    """

    height: int
    width: int
    size: int
    origin_x: int = 0
    origin_y: int = 0

    @property
    def scale_x(self) -> float:
        """Region pixels per original column."""
        return self.size / self.width

    @property
    def scale_y(self) -> float:
        """Region pixels per original row."""
        return self.size / self.height

    def to_canvas(self, box: Sequence[float]) -> Box:
        """Original-image box → region box in canvas coordinates, clipped to the region."""
        x1, y1, x2, y2 = box
        lo_x, lo_y = self.origin_x, self.origin_y
        hi_x, hi_y = lo_x + self.size - 1, lo_y + self.size - 1
        return (
            int(np.clip(_round(x1 * self.scale_x) + lo_x, lo_x, hi_x)),
            int(np.clip(_round(y1 * self.scale_y) + lo_y, lo_y, hi_y)),
            int(np.clip(_round((x2 + 1) * self.scale_x) - 1 + lo_x, lo_x, hi_x)),
            int(np.clip(_round((y2 + 1) * self.scale_y) - 1 + lo_y, lo_y, hi_y)),
        )

    def to_original(self, box: Sequence[float]) -> Box:
        """Canvas box inside the region → original-image box, clipped to the image."""
        x1, y1, x2, y2 = box
        ox, oy = self.origin_x, self.origin_y
        return (
            int(np.clip(_round((x1 - ox) / self.scale_x), 0, self.width - 1)),
            int(np.clip(_round((y1 - oy) / self.scale_y), 0, self.height - 1)),
            int(np.clip(_round((x2 - ox + 1) / self.scale_x) - 1, 0, self.width - 1)),
            int(np.clip(_round((y2 - oy + 1) / self.scale_y) - 1, 0, self.height - 1)),
        )


@dataclass
class Episode:
    """What the policy sees for one target: reference canvas, target and the boxes between them.

    Attributes:
        canvas: 600x600x3 uint8 RGB; one resized demonstration, or the 2×2 mosaic with red boxes
        target: 600x600x3 uint8 RGB resized target, None when built without a target
        reference_boxes: canvas boxes of tiles 2–4 (drawn and listed); empty for one demonstration
        proxy_box: tile 1's withheld canvas box; None for one demonstration
        demonstration_ids: ids of the demonstrations used, in tile order
        tile_maps: per used demonstration, original demonstration coords → canvas coords
        target_map: original target coords → 600² target coords, None without a target
    """

    canvas: np.ndarray
    target: np.ndarray | None = None
    reference_boxes: list[Box] = field(default_factory=list)
    proxy_box: Box | None = None
    demonstration_ids: list[str] = field(default_factory=list)
    tile_maps: list[BoxMap] = field(default_factory=list)
    target_map: BoxMap | None = None

    @property
    def has_proxy(self) -> bool:
        """Whether the episode carries a withheld box to check (only mosaics do)."""
        return self.proxy_box is not None


def as_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 float in [0, 1] (or uint8) → HxWx3 uint8."""
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 image → size x size x 3 uint8, stretched (the paper's square resize)."""
    return cv2.resize(as_uint8(image), (size, size), interpolation=cv2.INTER_LINEAR)


def _check_demonstration(demo: Demonstration) -> None:
    """Raise DemonstrationError unless the image is HxWx3 with a matching, non-empty mask."""
    image, mask = np.asarray(demo.image), np.asarray(demo.mask)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DemonstrationError(
            f"Demonstration {demo.id!r} has an image of shape {image.shape}; "
            "give it an HxWx3 RGB image."
        )
    if mask.shape != image.shape[:2]:
        raise DemonstrationError(
            f"Demonstration {demo.id!r} has a mask of shape {mask.shape} for an image of "
            f"shape {image.shape[:2]}; give it a mask of the image's size."
        )
    if not mask.any():
        raise DemonstrationError(
            f"Demonstration {demo.id!r} has an empty mask; "
            "draw the concept on it or leave it out."
        )


def _tile_box(demo: Demonstration, tile_map: BoxMap) -> Box:
    """Canvas box of a demonstration's mask once the mask is resized to its 300² tile."""
    mask = np.asarray(demo.mask).astype(np.uint8)
    small = cv2.resize(mask, (TILE_SIZE, TILE_SIZE), interpolation=cv2.INTER_NEAREST)
    box = mask_box(small)
    if box is None:
        # Nearest sampling can skip a thin object entirely; its mapped full-resolution box
        # still says where it is, so every tile keeps a box.
        return tile_map.to_canvas(mask_box(demo.mask))
    x1, y1, x2, y2 = box
    ox, oy = tile_map.origin_x, tile_map.origin_y
    return x1 + ox, y1 + oy, x2 + ox, y2 + oy


def build_episode(
    demonstrations: Sequence[Demonstration], target_image: np.ndarray | None = None
) -> Episode:
    """Demonstrations (+ optional HxWx3 float [0, 1] or uint8 target) → the paper's Episode.

    Only the first ``MAX_REFERENCES`` (4) demonstrations are used; extras are ignored, so the
    caller chooses which ones appear. Every used demonstration needs a non-empty mask.
    """
    if len(demonstrations) == 0:
        raise DemonstrationError(
            "No demonstrations were given; give at least one image with a mask."
        )
    used = list(demonstrations[:MAX_REFERENCES])
    for demo in used:
        _check_demonstration(demo)

    if len(used) == 1:
        demo = used[0]
        height, width = demo.image.shape[:2]
        episode = Episode(
            canvas=resize_square(demo.image, TARGET_SIZE),
            demonstration_ids=[demo.id],
            tile_maps=[BoxMap(height, width, TARGET_SIZE)],
        )
    else:
        canvas = np.zeros((TARGET_SIZE, TARGET_SIZE, 3), dtype=np.uint8)
        boxes: list[Box] = []
        tile_maps: list[BoxMap] = []
        for index, demo in enumerate(used):
            row, col = divmod(index, 2)
            height, width = demo.image.shape[:2]
            tile_map = BoxMap(height, width, TILE_SIZE, col * TILE_SIZE, row * TILE_SIZE)
            box = _tile_box(demo, tile_map)
            tile = resize_square(demo.image, TILE_SIZE).copy()
            if index > 0:
                # Drawn on the tile, not the canvas, so a stroke on a tile edge cannot spill
                # into a neighbour (least of all into tile 1, whose box must stay hidden).
                ox, oy = tile_map.origin_x, tile_map.origin_y
                corner1 = (box[0] - ox, box[1] - oy)
                corner2 = (box[2] - ox, box[3] - oy)
                cv2.rectangle(tile, corner1, corner2, BOX_COLOR, BOX_WIDTH)
            top, left = row * TILE_SIZE, col * TILE_SIZE
            canvas[top : top + TILE_SIZE, left : left + TILE_SIZE] = tile
            boxes.append(box)
            tile_maps.append(tile_map)
        episode = Episode(
            canvas=canvas,
            reference_boxes=boxes[1:],
            proxy_box=boxes[0],
            demonstration_ids=[demo.id for demo in used],
            tile_maps=tile_maps,
        )

    if target_image is not None:
        target = np.asarray(target_image)
        if target.ndim != 3 or target.shape[2] != 3:
            raise ValueError(f"target_image must be HxWx3, got shape {target.shape}")
        episode.target = resize_square(target, TARGET_SIZE)
        episode.target_map = BoxMap(target.shape[0], target.shape[1], TARGET_SIZE)
    return episode


def build_reference_episode(references: Sequence[np.ndarray], target_image: np.ndarray) -> Episode:
    """Reference images without masks (a multi-image CR item) + target → an Episode.

    As the official multi-image episodes: one reference is the canvas, resized to 600²;
    two to four make the 2×2 mosaic, with no boxes drawn and none withheld (method.md §2.2).
    """
    if len(references) == 0:
        raise DemonstrationError("A multi-image item needs at least one reference image.")
    used = list(references[:MAX_REFERENCES])
    if len(used) == 1:
        canvas = resize_square(used[0], TARGET_SIZE)
    else:
        canvas = np.zeros((TARGET_SIZE, TARGET_SIZE, 3), dtype=np.uint8)
        for index, image in enumerate(used):
            row, col = divmod(index, 2)
            canvas[row * TILE_SIZE:(row + 1) * TILE_SIZE, col * TILE_SIZE:(col + 1) * TILE_SIZE] = \
                resize_square(image, TILE_SIZE)
    target = np.asarray(target_image)
    return Episode(canvas=canvas, target=resize_square(target, TARGET_SIZE),
                   target_map=BoxMap(target.shape[0], target.shape[1], TARGET_SIZE))


def format_boxes(boxes: Sequence[Sequence[int]]) -> str:
    """Boxes → the prompt's text form "[[x1, y1, x2, y2], ...]" ("[]" when there are none)."""
    return "[" + ", ".join("[" + ", ".join(str(int(v)) for v in box) + "]" for box in boxes) + "]"
