"""The object route: objects first, then a classifier on per-object features (ilastik's second stage).

For concepts that live at the level of whole objects ("the triangles", "the large
nuclei", "the odd one out"), which a per-pixel classifier cannot see:

1. candidates, from one of three sources (``SOURCES``): ``proposal``, a rule that does not
   know the concept (``routes/objects.py``; by default the pixels that stand out from the
   image's dominant colour, touching blobs split at narrow necks); ``pixels``, the objects
   of a pixel forest fitted on the demonstrations (``routes/pixel_objects.py``: it learns
   what an object's pixels look like, touching ones split by a distance-transform
   watershed); ``refined``, those objects with their boundaries where the demonstrations'
   masks draw them (a fraction of their peak contrast, learned once from all the masks).
   The route keeps the first of ``ObjectConfig.sources`` (the rule) unless another's
   leave-one-out IoU on the demonstrations is higher by more than ``margin``, or higher on
   each of at least ``fold_wins`` demonstrations (with one demonstration, the first). The
   rule is exact on drawn shapes; the pixel forest's objects win on nuclei, whose areas
   decide a size concept and which the rule merges and cuts, and on the camouflaged blob.
   Objects under
   ``min_area`` pixels are dropped and at most ``max_objects`` kept, so a crowded image
   costs bounded time;
2. features per object from ``skimage.measure.regionprops_table`` (area, perimeter,
   eccentricity, solidity, extent, holes, Hu moments, mean and spread of each channel),
   corners of the outline, the blobs of detail inside it (stripes, dots, checks), plus
   context (size relative to the image's other objects, distance to the nearest one, how
   far its colour, shape and size stray from theirs, how many of them it differs from).
   Orientation is left out: with a dozen training objects a forest splits on it by chance
   (it named it for the star concept, whose objects are drawn at random angles). Zernike
   moments are not in scikit-image; Hu moments stand in;
3. a random forest learns from the demonstrations' objects. An object is the concept when
   most of its pixels lie inside its demonstration's mask (the majority rule: a mask that
   covers part of an object decides it by more than half); a demonstration with an empty
   mask is a negative example, every object in it is not the concept;
4. a target's probability map paints each candidate object with the forest's probability;
   pixels outside every object are 0. A target with no candidate object gets an empty mask.

No weights, CPU only. The router tries it after the appearance route: verifying compares
the three sources (one pixel forest per held-out demonstration) and costs 2.4-3.5 s on 3
demonstrations of 128 px (0.35 s with the rule alone; the appearance route 1.2 s, measured
on a quiet 2-core machine); fit reuses that choice when verify made it on the same
demonstrations. Per 128 px target 0.02 s with the rule's objects, 0.05 s with the pixel
forest's (appearance 0.02-0.03 s). On colour concepts the appearance route is the better
one (benchmarks/concepts.py), so it must be asked first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from conceptseg.routes.base import Route, mask_iou
from conceptseg.routes.objects import FEATURES, WORDS, CandidateConfig, features, object_labels, propose
from conceptseg.routes.pixel_objects import PixelConfig, PixelObjects, pixel_target
from conceptseg.types import Demonstration

SOURCES = ("proposal", "pixels", "refined")


@dataclass
class ObjectConfig:
    """Settings of the object route.

    Attributes:
        candidates: how the ``proposal`` source proposes objects (``CandidateConfig``); its
            ``min_area`` and ``max_objects`` bound every source
        pixels: how the ``pixels`` and ``refined`` sources take objects from the pixel
            forest (``PixelConfig``)
        sources: the candidate sources the route chooses among by leave-one-out; the first
            is the default (one demonstration, or no other source clearly better)
        margin: another source replaces the first only when its mean leave-one-out IoU is
            higher by more than this. Measured over 3 seeds of the procedural concepts and
            two cuts of the nuclei (benchmarks/concepts.py): where the pixel forest's sources
            led the colour rule by less than 0.1 they lost on the targets 3 times in 5
            (striped 0.26 vs 0.69, circle 0.68 vs 1.00); 0.07-0.12 score the same, 0 and 0.2 lower
        fold_wins: another source also replaces the first when it scores higher on every
            held-out demonstration, if there are at least this many (0: never). A lead under
            the margin that holds on each demonstration is not the forest's luck on one of
            them: the nuclei's shifted cut, refined 0.769/0.520/0.618 vs the rule's
            0.724/0.486/0.545 (benchmarks/results/concepts_cpu.md); no procedural concept's
            choice changes (seeds 0-2)
        n_estimators: trees in the forest
        threshold: probability above which an object is the concept
        rule_features: how many of the most important features the rule names
        seed: makes the forest reproducible
    """

    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    pixels: PixelConfig = field(default_factory=PixelConfig)
    sources: tuple[str, ...] = SOURCES
    margin: float = 0.1
    fold_wins: int = 3
    n_estimators: int = 100
    threshold: float = 0.5
    rule_features: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        unknown = [s for s in self.sources if s not in SOURCES]
        if not self.sources or unknown or len(set(self.sources)) < len(self.sources):
            raise ValueError(f"sources must be distinct names among {', '.join(SOURCES)}; got {self.sources!r}.")


@dataclass
class _Objects:
    """One image's candidate objects: labels (HxW int32), features (N x F)."""

    labels: np.ndarray
    features: np.ndarray


class ObjectRoute(Route):
    """Random forest on candidate objects' shape, size, intensity and context features."""

    name = "object"
    uses_negatives = True  # an empty mask makes every object in it a negative example

    def __init__(self, config: ObjectConfig | None = None):
        self.config = config or ObjectConfig()
        self._forest = None
        self._constant: bool | None = None  # every training object had this label
        self._x = np.zeros((0, len(FEATURES)))
        self._y = np.zeros(0, bool)
        self._split = 0
        self._demonstrations = 0
        self._pixels = PixelObjects(self.config.pixels, self.config.candidates)
        self._source = self.config.sources[0]
        # (fingerprint of the demonstrations, leave-one-out IoU per source and demonstration): fit reuses
        # what verify measured on the same demonstrations.
        self._choice: tuple[str, dict[str, list[float]]] | None = None
        self._source_scores: dict[str, float] = {}

    @property
    def source(self) -> str:
        """Where the fitted route takes its candidates from (one of ``SOURCES``)."""
        return self._source

    def objects(self, image: np.ndarray, pixel_features: np.ndarray | None = None) -> _Objects:
        """The candidate objects of an image, from the fitted source, and their features
        (``pixel_features``: the pixel forest's features of the image, when already computed)."""
        image = np.asarray(image, np.float32)
        if self._source == "proposal":
            return self._objects(image, propose(image, self.config.candidates))
        if pixel_features is None:
            pixel_features = self._pixels.features(image)
        labels = self._pixels.objects(image, pixel_features)
        if self._source == "refined":
            labels = self._pixels.refine(labels, image)
        return self._objects(image, labels)

    @staticmethod
    def _objects(image: np.ndarray, labels: np.ndarray) -> _Objects:
        return _Objects(labels, features(image, labels))

    def fit(self, demonstrations: Sequence[Demonstration]) -> None:
        """Learns the concept from all demonstrations' objects, taken from the best source."""
        images = [np.asarray(d.image, np.float32) for d in demonstrations]
        masks = [np.asarray(d.mask, bool) for d in demonstrations]
        self._source = self._pick_source(demonstrations)
        feats = [None] * len(images)
        if self._source != "proposal":
            self._pixels.prepare(images)
            feats = [self._pixels.features(im, remember=True) for im in images]
            targets = [pixel_target(im, m, self.config.candidates) for im, m in zip(images, masks)]
            self._pixels.fit(list(zip(feats, targets)))
            self._pixels.learn_boundary(images, masks)
        self._fit([(self.objects(im, f), m) for im, f, m in zip(images, feats, masks)])

    def _pick_source(self, demonstrations: Sequence[Demonstration]) -> str:
        """The source ``_best`` picks by leave-one-out IoU (measured now unless verify did on these)."""
        sources = self.config.sources
        self._source_scores = {}
        if len(sources) == 1 or len(demonstrations) < 2:
            return sources[0]
        if self._choice is None or self._choice[0] != _digest(demonstrations):
            self._compare(demonstrations)
        self._source_scores = {s: float(np.mean(v)) for s, v in self._choice[1].items()}
        return _best(self._choice[1], sources, self.config.margin, self.config.fold_wins)

    def _fit(self, examples: list[tuple[_Objects, np.ndarray]]) -> None:
        xs, ys, split = [], [], 0
        for objects, mask in examples:
            positive, n_split = object_labels(objects.labels, np.asarray(mask, bool))
            xs.append(objects.features)
            ys.append(positive)
            split += n_split
        self._x, self._y = np.concatenate(xs), np.concatenate(ys)
        self._split, self._demonstrations = split, len(examples)
        self._forest, self._constant = None, None
        if self._y.size == 0 or self._y.all() or not self._y.any():
            self._constant = bool(self._y.size and self._y.all())  # nothing to tell apart
            return
        from sklearn.ensemble import RandomForestClassifier

        self._forest = RandomForestClassifier(
            n_estimators=self.config.n_estimators,
            class_weight="balanced",
            random_state=self.config.seed,
            n_jobs=1,  # tens of objects: threads cost more than they save
        ).fit(self._x, self._y)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 float image → HxW float32 probability of the concept."""
        self._require_fit()
        return self._paint(self.objects(image))

    def _paint(self, objects: _Objects) -> np.ndarray:
        n = objects.features.shape[0]
        if n == 0:
            return np.zeros(objects.labels.shape, np.float32)
        if self._forest is None:
            proba = np.full(n, float(self._constant))
        else:
            proba = self._forest.predict_proba(objects.features)[:, list(self._forest.classes_).index(True)]
        lookup = np.concatenate([[0.0], proba]).astype(np.float32)
        return lookup[objects.labels]

    def verify(self, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """Leave-one-out IoU per demonstration, of the candidate source that scores best."""
        scores = self._compare(demonstrations)
        return scores[_best(self._choice[1], self.config.sources, self.config.margin, self.config.fold_wins)]

    def _compare(self, demonstrations: Sequence[Demonstration]) -> dict[str, dict[str, float]]:
        """Leave-one-out IoU per source and demonstration; they are remembered for fit.

        The rule's objects are found once per image; the pixel forest is fitted once per
        held-out demonstration, on the others, and finds the objects of all of them. The
        refined boundary's fraction is learned once, from all the masks, as fit learns it:
        it is how the annotator draws a boundary, not the concept, and learned from two
        masks per fold it moved enough (0.45-0.47 on the nuclei) to swing the classifier
        on the refined objects (a fold's IoU 0.61 → 0.37), so the route fell back to the
        rule where the learned boundary scores higher on the targets (concepts_cpu.md).
        """
        images = [np.asarray(d.image, np.float32) for d in demonstrations]
        masks = [np.asarray(d.mask, bool) for d in demonstrations]
        sources, c = self.config.sources, self.config
        fixed = [self._objects(im, propose(im, c.candidates)) for im in images] if "proposal" in sources else None
        learned = [s for s in sources if s != "proposal"]
        if learned:
            self._pixels.prepare(images)
            feats = [self._pixels.features(im, remember=True) for im in images]
            targets = [pixel_target(im, m, c.candidates) for im, m in zip(images, masks)]
            self._pixels.learn_boundary(images, masks)
        scores: dict[str, dict[str, float]] = {s: {} for s in sources}
        for i, held_out in enumerate(demonstrations):
            found = {"proposal": fixed} if fixed is not None else {}
            if learned:
                self._pixels.fit([(f, t) for j, (f, t) in enumerate(zip(feats, targets)) if j != i])
                labels = [self._pixels.objects(im, f) for im, f in zip(images, feats)]
                if "pixels" in learned:
                    found["pixels"] = [self._objects(im, lab) for im, lab in zip(images, labels)]
                if "refined" in learned:
                    refined = [self._pixels.refine(lab, im) for im, lab in zip(images, labels)]
                    found["refined"] = [self._objects(im, lab) for im, lab in zip(images, refined)]
            for source, objects in found.items():
                self._fit([(o, m) for j, (o, m) in enumerate(zip(objects, masks)) if j != i])
                proba = self._paint(objects[i])
                scores[source][held_out.id or str(i)] = mask_iou(proba > c.threshold, masks[i])
        self._forest, self._constant = None, None  # fitted on a subset: must not segment targets
        self._choice = (_digest(demonstrations), {s: list(v.values()) for s, v in scores.items()})
        return scores

    def rule(self) -> str:
        """The deciding features in words, with the majority rule and the training counts."""
        n, pos = self._y.size, int(self._y.sum())
        counts = (
            f"random forest on {n} objects ({pos} the concept) from {self._demonstrations} "
            f"demonstrations; an object counts as the concept when most of its pixels lie inside "
            f"its demonstration's mask ({self._split} objects were split by a mask); "
            f"candidates: {self._candidate_words()}"
        )
        if self._forest is None:
            what = "every object" if self._constant else "no object"
            return f"{what}: the demonstrations' objects were all {'inside' if self._constant else 'outside'} the masks ({counts})"
        importance = self._forest.feature_importances_
        top = np.argsort(-importance)[: self.config.rule_features]
        words = " and ".join(self._stump(i) for i in top)
        named = ", ".join(f"{FEATURES[i]} {importance[i]:.2f}" for i in top)
        return f"objects with {words} ({counts}; top feature importances: {named})"

    def _candidate_words(self) -> str:
        if self._source == "proposal":
            proposal = self.config.candidates.proposal
            words = ("the pixels that stand out from the image's dominant colour" if proposal == "background"
                     else f"{proposal} regions")
        else:
            words = "the objects of a pixel forest fitted on the demonstrations"
            if self._source == "refined":
                words += f", their boundaries at {self._pixels.fraction:.2f} of their peak contrast"
        if self._source_scores:
            measured = ", ".join(f"{s} {v:.3f}" for s, v in self._source_scores.items())
            words += f" (leave-one-out IoU per source: {measured})"
        return words

    def _stump(self, i: int) -> str:
        """The single cut on feature ``i`` that best separates the training objects, in words."""
        values, y = self._x[:, i], self._y
        cuts = np.unique(values)
        cuts = (cuts[:-1] + cuts[1:]) / 2 if cuts.size > 1 else cuts
        best, text = -1.0, WORDS[FEATURES[i]]
        for cut in cuts:
            above = values > cut
            # Balanced accuracy, so a rare concept is not ignored.
            for sign, pred in ((">", above), ("<", ~above)):
                score = (pred[y].mean() + (~pred[~y]).mean()) / 2
                if score > best:
                    best, text = score, f"{WORDS[FEATURES[i]]} {sign} {cut:.3g}"
        return text

    def _require_fit(self) -> None:
        if self._forest is None and self._constant is None:
            raise RuntimeError("ObjectRoute.fit(demonstrations) must be called before segmenting.")


def _best(folds: dict[str, list[float]], sources: Sequence[str], margin: float, fold_wins: int = 0) -> str:
    """The first source, unless another is clearly better (then the best such by mean): its mean
    leave-one-out IoU higher by more than ``margin``, or, over at least ``fold_wins`` held-out
    demonstrations (0: never), higher on every one of them."""
    first = sources[0]
    means = {s: float(np.mean(v)) for s, v in folds.items()}

    def clear(source: str) -> bool:
        lead = np.subtract(folds[source], folds[first])
        return means[source] > means[first] + margin or (0 < fold_wins <= lead.size and bool((lead > 0).all()))

    better = [s for s in sources[1:] if clear(s)]
    return max(better, key=lambda s: means[s]) if better else first  # a tie: the one listed first


def _digest(demonstrations: Sequence[Demonstration]) -> str:
    """A fingerprint of the demonstrations' images and masks (fit reuses verify's choice on them)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for d in demonstrations:
        for a in (np.asarray(d.image), np.asarray(d.mask)):
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
