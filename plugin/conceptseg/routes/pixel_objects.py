"""Candidate objects from a pixel forest fitted on the demonstrations (ilastik's first stage).

The colour rule of ``routes/objects.py`` proposes objects without knowing the concept. Where
objects differ from the background by more than one colour threshold can tell (touching
nuclei of uneven brightness, a blob in its background's own texture) it merges, cuts and
misses them. ilastik classifies pixels first and takes its objects from that; so does this:

1. what the pixel forest learns from: a demonstration's mask shows some objects and is
   silent on the objects it leaves. For "nuclei larger than the median" the small nuclei
   are unmarked, yet they are nuclei, not background. So the colour rule's objects that lie
   mostly outside the mask are left out of the draw (``pixel_target``); the mask's pixels
   are objects; every other pixel is background, the rim around a marked object included,
   so the forest learns where the annotation puts an object's boundary;
2. its features are the appearance route's, computed on the image minus its dominant
   colour (``relative``): the forest reads how a pixel stands out from its own image's
   background, not its absolute colour, which changes from image to image;
3. objects: pixels above ``threshold``, touching objects split by the distance-transform
   watershed of ``objects.split_at_necks`` with a low ``split_h`` (nuclei touch along wide
   necks; a high one keeps pairs merged);
4. refined (``refine``): each object's boundary moves to a fraction of its peak contrast,
   within ``refine_grow`` pixels of the forest's: the fraction at which the demonstrations'
   masks draw their boundaries (``boundary_fraction``), half where they mark none. The
   forest's features blur over up to 16 px, so its probability spreads around bright
   objects and one threshold makes a bright nucleus larger than a dim one of the same size.

Measured on the nuclei size concept (the object route's target IoU; the demo's tiles and
two other choices of demonstration tiles, forest seeds 0-4 where said). Leaving the
unmarked objects out rather than calling them background: oracle IoU 0.850 vs 0.702 (the
best any object classifier could do with the candidates), route 0.448 vs 0.423 (one
choice, threshold 0.5, h 2); threshold 0.6 and h 0.5 (merged nuclei 22 → 7 of 66): 0.577
over three choices; refined 0.620, or 0.628 with relative colours (five seeds; half
maximum is near the best fraction: 0.35-0.55 gave 0.606, 0.605, 0.637, 0.623, 0.565 over
three). Relative rather than absolute colours on the camouflaged blob: 0.43, 0.55, 0.23 vs
0.09, 0.13, 0.17 (three seeds), where refining does not help (0.30, 0.51, 0.23), so the object route
picks its candidates by leave-one-out (``routes/object.py``). The limit is the candidates:
the best single area cut on the refined objects, chosen with the targets' truth, reaches
0.654 on the demo's tiles (merged clusters of overlapping nuclei, a bright nucleus cut from
the dim one it overlaps). Tried and dropped: seeds from blob detection or from the
probability's cores, the watershed flooded on the image's gradient, splitting by solidity,
refinement before the split or recursively on what it leaves, a greedier object forest
(each 0.01-0.1 lower, or higher on the nuclei and lower on shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from conceptseg.routes.appearance import AppearanceConfig, AppearanceRoute
from conceptseg.routes.objects import (
    CandidateConfig,
    dominant_colour,
    keep_objects,
    object_labels,
    propose,
    split_at_necks,
)


DEFAULT_FRACTION = 0.5  # half maximum: a blurred edge's midpoint


@dataclass
class PixelConfig:
    """How objects are taken from the pixel forest.

    Attributes:
        threshold: probability above which a pixel belongs to an object
        split_h: touching objects split where both sides are this many pixels thicker
            than their neck
        refine_fraction: a refined object keeps the pixels whose contrast (distance from
            the dominant colour) reaches this fraction of its peak; ``None``: the fraction
            at which the demonstrations' masks draw their objects' boundaries
            (``boundary_fraction``; half where they mark no object). The default: on the
            nuclei it places boundaries better (0.45 and 0.48 learned; target IoU 0.614 →
            0.653 and 0.675 → 0.677 on the two cuts of benchmarks/concepts.py, 0.626 →
            0.650 and 0.641 → 0.648 averaged over the object forest's seeds 0-2)
        refine_grow: how many pixels a refined object may reach beyond the forest's boundary
        appearance: the pixel forest's features, trees and pixel draw
    """

    threshold: float = 0.6
    split_h: float = 0.5
    refine_fraction: float | None = None
    refine_grow: int = 3
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)


def relative(image: np.ndarray) -> np.ndarray:
    """HxWx3 float image minus its dominant colour (``objects.dominant_colour``)."""
    return (image - dominant_colour(image)).astype(np.float32)


def contrast(image: np.ndarray) -> np.ndarray:
    """HxW distance of each (lightly smoothed) pixel's colour from the image's dominant colour."""
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(image, (1.0, 1.0, 0))  # pixel noise would fray the boundary
    return np.linalg.norm(smooth - dominant_colour(image), axis=-1)


def boundary_fraction(images, masks) -> float | None:
    """Where the masks draw their objects' boundaries, as a fraction of each object's peak contrast.

    Per connected component of a mask: the contrast midway across its boundary (the mean
    of the median just inside and the median just outside) over its peak (90th
    percentile inside); the median over all components. ``None`` when no mask marks one.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    fractions = []
    for image, mask in zip(images, masks):
        level = contrast(image)
        parts, _ = ndi.label(mask, structure=np.ones((3, 3)))
        for i, box in enumerate(ndi.find_objects(parts), 1):
            box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)  # room for the outer rim
            own = parts[box] == i
            peak = np.percentile(level[box][own], 90)
            rims = [find_boundaries(own, mode="inner"), find_boundaries(own, mode="outer") & (parts[box] == 0)]
            if peak > 0 and all(r.any() for r in rims):
                fractions.append(np.mean([np.median(level[box][r]) for r in rims]) / peak)
    return float(np.clip(np.median(fractions), 0.05, 0.95)) if fractions else None


def pixel_target(image: np.ndarray, mask: np.ndarray, candidates: CandidateConfig) -> np.ndarray:
    """HxW int8 for the pixel forest: 1 in the mask, -1 on the colour rule's objects the mask
    leaves (most of their pixels outside it), 0 on every other pixel."""
    labels = propose(image, candidates)
    positive, _ = object_labels(labels, mask)
    target = mask.astype(np.int8)
    target[np.isin(labels, np.flatnonzero(~positive) + 1) & ~mask] = -1
    return target


class PixelObjects:
    """A pixel forest fitted on demonstrations, and the objects it finds in an image."""

    def __init__(self, config: PixelConfig, candidates: CandidateConfig):
        self.config = config
        self.candidates = candidates  # the colour rule for the target; min_area and max_objects
        self._forest = AppearanceRoute(config.appearance)
        fixed = config.refine_fraction
        self.fraction = DEFAULT_FRACTION if fixed is None else fixed  # ``learn_boundary`` may replace it

    def prepare(self, images) -> None:
        """Chooses the feature stack (one grey stack when every image is grey)."""
        self._forest.prepare(images)

    def features(self, image: np.ndarray, remember: bool = False) -> np.ndarray:
        """The pixel forest's features of an image (of its colours relative to its background);
        ``remember`` as ``AppearanceRoute.features``: a demonstration's."""
        return self._forest.features(relative(image), remember)

    def fit(self, examples: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Trains the forest on (features, ``pixel_target``) pairs."""
        self._forest.fit_features(examples)

    def objects(self, image: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """HxW int32 labels (0 = none) of the objects above the threshold, touching ones split."""
        from scipy import ndimage as ndi

        c = self.config
        found = self._forest.predict_features(feats, image.shape[:2]) > c.threshold
        labels, count = ndi.label(found, structure=np.ones((3, 3)))
        if count:
            labels = split_at_necks(found, labels, c.split_h)
        return keep_objects(labels, self.candidates.min_area, self.candidates.max_objects)

    def learn_boundary(self, images, masks) -> None:
        """Takes the refine fraction from the demonstrations' masks unless the config sets one."""
        if self.config.refine_fraction is None:
            learned = boundary_fraction(images, masks)
            self.fraction = DEFAULT_FRACTION if learned is None else learned

    def refine(self, labels: np.ndarray, image: np.ndarray) -> np.ndarray:
        """Each object's boundary at ``fraction`` of its peak contrast (see the module docstring)."""
        out = refine(labels, image, self.fraction, self.config.refine_grow)
        return keep_objects(out, self.candidates.min_area, self.candidates.max_objects)


def refine(labels: np.ndarray, image: np.ndarray, fraction: float, grow: int) -> np.ndarray:
    """Per object: the pixels within ``grow`` of it whose contrast reaches ``fraction`` of its peak."""
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    level = contrast(image)
    grown = expand_labels(labels, grow)  # a partition: grown objects never overlap
    out = np.zeros_like(labels)
    for i, box in enumerate(ndi.find_objects(grown), 1):
        if box is None:
            continue
        own = labels[box] == i
        # The 90th percentile, not the maximum: a few hot pixels are not the object's brightness.
        peak = np.percentile(level[box][own], 90)
        keep = (grown[box] == i) & (level[box] >= fraction * peak)
        parts, count = ndi.label(keep)
        if count > 1:  # only the parts on the forest's object: a neighbour's halo is not this one
            keep = np.isin(parts, np.unique(parts[own & keep])) & (parts > 0)
        out[box][keep] = i
    return out
