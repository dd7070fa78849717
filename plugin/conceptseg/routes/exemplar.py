"""The SAM 3 exemplar route: the demonstrations' instances as exemplar boxes, every target searched.

SAM 3's own way to segment by example (Promptable Concept Segmentation): boxes around
examples of the concept (positive) and around what is not it (negative), plus the concept's
name, and SAM 3 returns every instance of the concept.

1. fit: each demonstration is embedded once (the segmenter's cache, keyed by content); its
   mask's connected components, largest first, become positive exemplar boxes, encoded on
   that demonstration's own features (``segmenters.sam3_exemplar``: why not a mosaic).
   Then the positives prompt SAM 3 on every demonstration: each instance it finds that lies
   mostly outside the demonstration's mask (all of them on a negative demonstration) is a
   mistake the concept must exclude, and becomes a negative exemplar box on that image.
2. segment: the target is embedded and prompted with the concept's name (classes; SAM 3's
   "visual" without one) and all exemplar tokens; the probability is the highest instance
   mask probability of the instances SAM 3 keeps. Targets are batched: one fusion/decoder
   pass for B targets.
3. verify: leave one demonstration out, fit on the others (their positive tokens are kept;
   negatives are mined again from the others alone), segment the held-out one.

Doubt (``routes.doubt.exemplar_doubt``) comes from SAM 3's own scores: how far the presence score is from
undecided, times how far the kept instances' scores are above the keep threshold (or, with
none kept, how far the best instance is below it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from conceptseg.errors import ConceptSegError
from conceptseg.imaging import content_key, to_uint8
from conceptseg.routes.base import BatchedRoute, mask_iou
from conceptseg.routes.doubt import exemplar_doubt
from conceptseg.types import Demonstration


@dataclass
class ExemplarConfig:
    """Settings of the exemplar route.

    Attributes:
        threshold: instance-mask probability above which a pixel is the concept (0.5:
            SAM 3's own mask threshold)
        min_score: instance score (sigmoid(logit) x presence) above which SAM 3's instance is
            kept; 0.3 is ``Sam3Processor.post_process_instance_segmentation``'s default
        max_positives: positive boxes per demonstration, its largest connected components
            (each box is one prompt token; the released SAM 3 was trained with a handful)
        max_negatives: negative boxes per demonstration, its highest-scoring false detections;
            0 turns mining off
        outside: a detection is false when at most this fraction of its pixels lies in the
            demonstration's mask
        text: the concept's name for SAM 3's text encoder; None: SAM 3's box-only "visual"
    """

    threshold: float = 0.5
    min_score: float = 0.3
    max_positives: int = 8
    max_negatives: int = 4
    outside: float = 0.5
    text: str | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "min_score", "outside"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1); got {value}.")
        if self.max_positives < 1:
            raise ValueError(f"max_positives must be at least 1; got {self.max_positives}.")
        if self.max_negatives < 0:
            raise ValueError(f"max_negatives must be 0 or more; got {self.max_negatives}.")


def component_boxes(mask: np.ndarray, limit: int) -> list[list[float]]:
    """Boxes (x0 y0 x1 y1, pixel edges) of a mask's connected components, largest first."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    slices = ndi.find_objects(labels)
    order = np.argsort(-areas, kind="stable")[:limit]
    return [[float(slices[i][1].start), float(slices[i][0].start), float(slices[i][1].stop), float(slices[i][0].stop)]
            for i in order]


class ExemplarRoute(BatchedRoute):
    """Segments by SAM 3 exemplars drawn from the demonstrations."""

    name = "exemplar"
    uses_negatives = True  # a negative demonstration's false detections are negative exemplars

    def __init__(self, segmenter, config: ExemplarConfig | None = None):
        if not (hasattr(segmenter, "features") and hasattr(getattr(segmenter, "model", None), "geometry_encoder")):
            raise ConceptSegError(
                f"The exemplar route needs a SAM 3 segmenter (Sam3Segmenter); got {type(segmenter).__name__}. "
                "Use a SAM 3 bundle (conceptseg-sam3, conceptseg-r1-7b, or `conceptseg tiny-bundle DIR "
                "--segmenter sam3`) or another route."
            )
        self.segmenter = segmenter
        self.config = config or ExemplarConfig()
        self._tokens = None  # (T, D) torch tensor, set by fit
        self._positive_cache: dict[str, object] = {}  # image and mask -> that demonstration's positive tokens
        # The demonstrations' features, kept while the route lives: verification mines negatives on
        # every demonstration once per held-out one, and the segmenter's LRU cache may hold fewer.
        self._demo_features: dict[str, dict] = {}
        self._counts = (0, 0, 0)  # demonstrations, positive boxes, negative boxes

    # ---- fitting ----------------------------------------------------------------------

    def fit(self, demonstrations: Sequence[Demonstration]) -> None:
        """Positive tokens from every demonstration's instances, negatives from SAM 3's mistakes."""
        import torch

        from conceptseg.segmenters.sam3_exemplar import detect, encode_boxes

        positives = [self._positives(d) for d in demonstrations]
        kept = [t for t in positives if t is not None]
        if not kept:
            raise ConceptSegError("The exemplar route needs at least one demonstration whose mask shows the concept.")
        tokens = torch.cat(kept)
        boxes_pos = sum(len(t) - 1 for t in kept)  # each encoding adds one CLS token
        negatives = []
        if self.config.max_negatives:
            entries = [self._demo_entry(d.image) for d in demonstrations]
            found = detect(self.segmenter, entries, self.config.text, tokens, self.config.min_score)
            for d, entry, dets in zip(demonstrations, entries, found):
                boxes = self._false_boxes(dets, np.asarray(d.mask, bool))
                if boxes:
                    negatives.append(encode_boxes(self.segmenter, entry, boxes, [0] * len(boxes)))
        boxes_neg = sum(len(t) - 1 for t in negatives)
        self._tokens = torch.cat([tokens, *negatives])
        self._counts = (len(demonstrations), boxes_pos, boxes_neg)

    def verify(self, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """Leave-one-out IoU per demonstration whose left-out set still shows the concept."""
        scores = {}
        for i, held_out in enumerate(demonstrations):
            others = [d for j, d in enumerate(demonstrations) if j != i]
            if not any(np.asarray(d.mask).any() for d in others):
                continue  # nothing left to take exemplars from
            self.fit(others)
            probability, _ = self.segment_with_details(held_out.image)
            scores[held_out.id or str(i)] = mask_iou(probability > self.config.threshold, held_out.mask)
        return scores

    def _positives(self, demonstration: Demonstration):
        """The demonstration's positive tokens (None for a negative one), encoded once per image and mask."""
        from conceptseg.segmenters.sam3_exemplar import encode_boxes

        mask = np.asarray(demonstration.mask, bool)
        boxes = component_boxes(mask, self.config.max_positives)
        if not boxes:
            return None
        image_key = content_key(to_uint8(np.asarray(demonstration.image)))
        cache_key = f"{image_key}:{content_key(np.packbits(mask))}"
        if cache_key not in self._positive_cache:
            entry = self._demo_entry(demonstration.image)
            self._positive_cache[cache_key] = encode_boxes(self.segmenter, entry, boxes, [1] * len(boxes))
        return self._positive_cache[cache_key]

    def _false_boxes(self, dets, mask: np.ndarray) -> list[list[float]]:
        """Boxes of kept detections lying mostly outside ``mask``, best first."""
        boxes = []
        for instance in dets.masks[: 4 * self.config.max_negatives]:  # best first
            area = instance.sum()
            if area == 0 or (instance & mask).sum() / area > self.config.outside:
                continue
            ys, xs = np.nonzero(instance)
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
            if len(boxes) == self.config.max_negatives:
                break
        return boxes

    # ---- segmenting -------------------------------------------------------------------

    def segment_batch(self, images: Sequence[np.ndarray]) -> list:
        """One batched SAM 3 pass for the targets that embed; a target that fails is its own failure."""
        from conceptseg.segmenters.sam3_exemplar import detect

        if self._tokens is None:
            raise RuntimeError("ExemplarRoute.fit(demonstrations) must be called before segmenting.")
        outcomes: list = [None] * len(images)
        # At most as many targets per pass as the segmenter's cache holds: memory stays what it allows.
        step = max(1, int(getattr(self.segmenter.config, "cache_size", len(images)) or 1))
        for start in range(0, len(images), step):
            entries = {}
            for i in range(start, min(start + step, len(images))):
                try:
                    entries[i] = self._target_entry(images[i])
                except Exception as e:  # one bad target is that target's failure, the batch goes on
                    outcomes[i] = e
            if not entries:
                continue
            try:
                found = detect(self.segmenter, list(entries.values()), self.config.text, self._tokens,
                               self.config.min_score)
            except Exception as e:
                found = [e] * len(entries)
            for i, dets in zip(entries, found):
                outcomes[i] = dets if isinstance(dets, Exception) else (dets.probability, self._details(dets))
        return outcomes

    def _details(self, dets) -> dict:
        kept = dets.scores[dets.kept]
        return {"presence": dets.presence, "instances": int(dets.kept.sum()),
                "best_score": float(dets.scores.max()) if dets.scores.size else 0.0,
                "mean_score": float(kept.mean()) if kept.size else 0.0,
                "doubt": exemplar_doubt(dets.scores, dets.presence, self.config.min_score)}

    def _target_entry(self, image: np.ndarray) -> dict:
        """A target's features: a demonstration's kept ones (verification), else embedded (cached)."""
        image8 = to_uint8(np.asarray(image))
        key = content_key(image8)
        if key in self._demo_features:
            return self._demo_features[key]
        self.segmenter.embed(image8, key)
        return self.segmenter.features(key)

    def _demo_entry(self, image: np.ndarray) -> dict:
        """A demonstration's features, embedded once while the route lives."""
        key = content_key(to_uint8(np.asarray(image)))
        if key not in self._demo_features:
            self._demo_features[key] = self.segmenter.features(self._embed(image))
        return self._demo_features[key]

    def _embed(self, image: np.ndarray) -> str:
        image8 = to_uint8(np.asarray(image))
        key = content_key(image8)
        self.segmenter.embed(image8, key)
        return key

    # ---- words ------------------------------------------------------------------------

    def rule(self) -> str:
        n, positives, negatives = self._counts
        if not n:
            return "SAM 3 exemplars: not fitted yet"
        text = f"the text {self.config.text!r}" if self.config.text else "no text (SAM 3's box-only prompt)"
        unlike = f", unlike {negatives} box{'es' * (negatives != 1)} it wrongly found on them" if negatives else ""
        return (f"every instance SAM 3 finds like {positives} exemplar box{'es' * (positives != 1)} from "
                f"{n} demonstration{'s' * (n != 1)}{unlike}; with {text}")
