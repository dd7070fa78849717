"""The object route: objects first, then a classifier on per-object features (ilastik's second stage).

For concepts that live at the level of whole objects ("the triangles", "the large
nuclei", "the odd one out"), which a per-pixel classifier cannot see:

1. candidates: a proposal that does not know the concept splits each image into objects
   (``routes/objects.py``; by default the pixels that stand out from the image's
   dominant colour, touching blobs split at narrow necks; objects under ``min_area``
   pixels are dropped and at most ``max_objects`` kept, so a crowded image costs bounded time);
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

No weights, CPU only. The router tries it after the appearance route: per 128 px target
it costs more (0.08-0.15 s against 0.06 s, measured on a loaded 2-core machine), though
fitting and verifying on 3 demonstrations cost less (2-2.5 s against 6 s); and on colour
concepts the appearance route is the better one (benchmarks/concepts.py), so it must be
asked first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from conceptseg.routes.base import Route, mask_iou
from conceptseg.routes.objects import FEATURES, WORDS, CandidateConfig, features, object_labels, propose
from conceptseg.types import Demonstration


@dataclass
class ObjectConfig:
    """Settings of the object route.

    Attributes:
        candidates: how objects are proposed (``CandidateConfig``)
        n_estimators: trees in the forest
        threshold: probability above which an object is the concept
        rule_features: how many of the most important features the rule names
        seed: makes the forest reproducible
    """

    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    n_estimators: int = 100
    threshold: float = 0.5
    rule_features: int = 2
    seed: int = 0


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

    def objects(self, image: np.ndarray) -> _Objects:
        """The candidate objects of an image and their features."""
        labels = propose(np.asarray(image, np.float32), self.config.candidates)
        return _Objects(labels, features(image, labels))

    def fit(self, demonstrations: Sequence[Demonstration]) -> None:
        """Learns the concept from all demonstrations' objects."""
        self._fit([(self.objects(d.image), d.mask) for d in demonstrations])

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
        """Leave-one-out IoU per demonstration; objects are found once per image."""
        examples = [(self.objects(d.image), d.mask) for d in demonstrations]
        scores = {}
        for i, held_out in enumerate(demonstrations):
            self._fit([e for j, e in enumerate(examples) if j != i])
            proba = self._paint(examples[i][0])
            scores[held_out.id or str(i)] = mask_iou(proba > self.config.threshold, np.asarray(held_out.mask, bool))
        self._forest, self._constant = None, None  # fitted on a subset: must not segment targets
        return scores

    def rule(self) -> str:
        """The deciding features in words, with the majority rule and the training counts."""
        n, pos = self._y.size, int(self._y.sum())
        counts = (
            f"random forest on {n} objects ({pos} the concept) from {self._demonstrations} "
            f"demonstrations; an object counts as the concept when most of its pixels lie inside "
            f"its demonstration's mask ({self._split} objects were split by a mask)"
        )
        if self._forest is None:
            what = "every object" if self._constant else "no object"
            return f"{what}: the demonstrations' objects were all {'inside' if self._constant else 'outside'} the masks ({counts})"
        importance = self._forest.feature_importances_
        top = np.argsort(-importance)[: self.config.rule_features]
        words = " and ".join(self._stump(i) for i in top)
        named = ", ".join(f"{FEATURES[i]} {importance[i]:.2f}" for i in top)
        return f"objects with {words} ({counts}; top feature importances: {named})"

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
