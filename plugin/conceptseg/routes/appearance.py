"""The weight-free route: per-pixel appearance features and a random forest (ilastik-style).

The demonstrations' masks label every pixel; a forest learns which local intensity,
edge and texture responses mark the concept and classifies the target's pixels. No
network weights, CPU only, seconds per image: the cheapest route the router can take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conceptseg.routes import memo
from conceptseg.routes.base import Route


@dataclass
class AppearanceConfig:
    """Settings of the appearance route.

    Attributes:
        sigma_min: finest Gaussian scale of the features, in pixels
        sigma_max: coarsest scale; objects much larger than ~4*sigma_max are seen by
            their texture only
        num_sigma: number of scales between the two (None: one per octave)
        max_side: images are shrunk so their longer side is at most this many pixels
            before features are computed (memory grows with pixels x features); the
            probability map is resized back
        pixels_per_class: at most this many pixels of each class are drawn per
            demonstration to train the forest (balanced classes, bounded fit time)
        n_estimators: trees in the forest
        max_depth: depth of each tree (None: unlimited)
        threshold: probability above which a pixel is the concept
        seed: makes the pixel draw and the forest reproducible
        n_jobs: threads for the forest (None: the process's budget, see conceptseg.threads;
            when predicting on images under 256² pixels, one thread: there the dispatch
            costs more than the trees)
    """

    sigma_min: float = 1.0
    sigma_max: float = 16.0
    num_sigma: int | None = None
    max_side: int = 1024
    pixels_per_class: int = 2000
    n_estimators: int = 32
    max_depth: int | None = 12
    threshold: float = 0.5
    seed: int = 0
    n_jobs: int | None = None


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class AppearanceRoute(Route):
    """Random forest on scikit-image's multiscale basic features."""

    name = "appearance"
    uses_negatives = True  # an empty mask is all background pixels: exactly what it needs

    def __init__(self, config: AppearanceConfig | None = None):
        self.config = config or AppearanceConfig()
        self._forest = None
        # Grayscale demonstrations (equal channels) get one feature stack instead of
        # three identical ones: a third of the features, the same information.
        self._gray = False

    def features(self, image: np.ndarray, remember: bool = False) -> np.ndarray:
        """HxWx3 float image → hxwxF float32 features (h, w after shrinking).

        ``remember``: a demonstration's, kept for the next fit or run on it (routes/memo.py);
        a target's are computed once per run and not kept.
        """
        from skimage.feature import multiscale_basic_features

        from conceptseg.threads import budget

        c = self.config
        image = _shrink(image, c.max_side)
        if self._gray:
            image = image.mean(axis=2)
        key = memo.digest(image, sigma=(c.sigma_min, c.sigma_max, c.num_sigma)) if remember else None
        return memo.features(key, lambda: multiscale_basic_features(
            image,
            intensity=True,
            edges=True,
            texture=True,
            sigma_min=c.sigma_min,
            sigma_max=c.sigma_max,
            num_sigma=c.num_sigma,
            channel_axis=None if self._gray else -1,
            num_workers=budget(),  # its default, every core, oversubscribes workers sharing a machine
        ).astype(np.float32, copy=False))

    def prepare(self, images) -> None:
        """Chooses the feature stack for these images: one grey stack when every image is grey."""
        self._gray = all(_is_gray(image) for image in images)

    def fit_features(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Trains the forest on (features, full-size mask) pairs.

        A mask is bool (any other dtype is read as bool), or int8 with 1 for the concept,
        0 for background and -1 for pixels no class is drawn from (the object route leaves
        out the objects a mask does not decide).
        """
        from sklearn.ensemble import RandomForestClassifier

        from conceptseg.threads import budget

        c = self.config
        rng = np.random.default_rng(c.seed)
        xs, ys = [], []
        for feats, mask in pairs:
            labels = _resize_mask(mask, feats.shape[:2]).ravel()
            flat = feats.reshape(-1, feats.shape[-1])
            for value in (True, False):
                idx = np.flatnonzero(labels == value)
                if idx.size > c.pixels_per_class:
                    idx = rng.choice(idx, c.pixels_per_class, replace=False)
                xs.append(flat[idx])
                ys.append(np.full(idx.size, value))
        x, y = np.concatenate(xs), np.concatenate(ys)

        def fit():
            forest = RandomForestClassifier(
                n_estimators=c.n_estimators,
                max_depth=c.max_depth,
                n_jobs=budget() if c.n_jobs is None else c.n_jobs,
                random_state=c.seed,
            )
            return forest.fit(x, y)

        # The same pixels and seed give the same forest, whatever the thread count.
        self._forest = memo.forest(memo.digest(x, y, trees=c.n_estimators, depth=c.max_depth, seed=c.seed), fit)

    def predict_features(self, feats: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Features → HxW float32 probability of the concept at ``size`` (H, W)."""
        import cv2

        from conceptseg.threads import forest_jobs

        self._require_fit()
        flat = feats.reshape(-1, feats.shape[-1])
        self._forest.n_jobs = forest_jobs(self.config.n_jobs, flat.shape[0])
        classes = list(self._forest.classes_)
        if True not in classes:  # every training pixel was background
            return np.zeros(size, np.float32)
        proba = self._forest.predict_proba(flat)[:, classes.index(True)]
        proba = proba.reshape(feats.shape[:2]).astype(np.float32)
        if proba.shape != tuple(size):
            proba = cv2.resize(proba, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return proba

    def fit(self, demonstrations) -> None:
        """Learns the concept from all demonstrations."""
        self.prepare([d.image for d in demonstrations])
        self.fit_features([(self.features(d.image, remember=True), d.mask) for d in demonstrations])

    def segment(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 float image → HxW float32 probability of the concept."""
        return self.predict_features(self.features(image), image.shape[:2])

    def segment_with_details(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """The probability and its doubt: the forest's uncertainty over the region and its border."""
        from conceptseg.routes.doubt import probability_doubt

        probability = self.segment(image)
        return probability, {"doubt": probability_doubt(probability, self.config.threshold)}

    def rule(self) -> str:
        """Says what the forest looks at; it has no words of its own."""
        c = self.config
        colour = "grey levels" if self._gray else "colours"
        return (
            f"pixels whose {colour}, edges and textures at scales {c.sigma_min:g}-{c.sigma_max:g} px "
            f"look like the demonstrations' masked pixels (random forest of {c.n_estimators} trees)"
        )

    def verify(self, demonstrations) -> dict[str, float]:
        """Leave-one-out IoU per demonstration; features are computed once per image."""
        from conceptseg.routes.base import mask_iou

        self.prepare([d.image for d in demonstrations])
        feats = [self.features(d.image, remember=True) for d in demonstrations]
        scores = {}
        for i, held_out in enumerate(demonstrations):
            self.fit_features(
                [(f, d.mask) for j, (f, d) in enumerate(zip(feats, demonstrations)) if j != i]
            )
            proba = self.predict_features(feats[i], held_out.mask.shape)
            scores[held_out.id or str(i)] = mask_iou(proba > self.config.threshold, held_out.mask)
        self._forest = None  # a forest fitted on a subset must not segment targets
        return scores

    def _require_fit(self) -> None:
        if self._forest is None:
            raise RuntimeError("AppearanceRoute.fit(demonstrations) must be called before segmenting.")


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if mask.dtype == np.int8:  # 1 / 0 / -1 labels keep their values
        if mask.shape == tuple(size):
            return mask
        return cv2.resize(mask.astype(np.int16), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    if mask.shape == tuple(size):
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def _is_gray(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))
