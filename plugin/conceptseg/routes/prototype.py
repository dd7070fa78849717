"""The SAM 2-native, training-free route: a prototype of the demonstrations' masked features.

PerSAM-style (Zhang et al., "Personalize Segment Anything Model with One Shot", 2023):

1. fit: SAM 2 embeds each demonstration once (the segmenter's cache, keyed by the image's
   content, so a demonstration that is also a target is never embedded twice). Its mask,
   shrunk to the embedding grid (S/16 x S/16) by area, weights the feature vectors of the
   cells it covers into a foreground mean, and the cells it leaves free into a background
   mean. The prototypes are the means of these per-demonstration vectors.
2. segment: the target is embedded; every grid cell gets a score, its cosine similarity to
   the foreground prototype minus that to the background prototype (> 0: closer to the
   concept than to its surroundings). The score map, upsampled to the image, marks the
   regions where the concept may be. SAM 2 is prompted per region (by default only the best
   one, as PerSAM does for one object) with its best-scoring cells as positive points, the
   worst-scoring cells of the image as negative points, a box around the region, and the
   foreground prototype as one extra concept token; the probability is the sigmoid of its
   mask logits.
3. verify: leave one demonstration out, build the prototype from the others (no re-embedding:
   the per-demonstration vectors are kept), segment the held-out one and score its IoU.

No weights are trained; its cost is one SAM 2 image encoding plus one mask-decoder pass per
region, so it runs at about the speed of SAM 2 itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from conceptseg.errors import ConceptSegError, DemonstrationError
from conceptseg.imaging import content_key
from conceptseg.routes.doubt import margin_doubt
from conceptseg.routes.base import Route, mask_iou
from conceptseg.routes.prototype_prompts import (Pooled, cell_centre, central_cell, cell_coverage, extrema, pack,
                                                 prototypes, region_prompts, upsample)
from conceptseg.types import Demonstration

if TYPE_CHECKING:
    import torch


@dataclass
class PrototypeConfig:
    """Settings of the prototype route.

    Attributes:
        threshold: probability above which a pixel is the concept (0.5 = SAM 2's own mask
            threshold, logit 0)
        num_positive_points: positive points per region: its highest-scoring grid cells
            (local maxima, so no two are neighbours). PerSAM uses 1
        num_negative_points: negative points shared by every region: the lowest-scoring
            cells of the image (local minima). PerSAM uses 1; 0 disables them
        use_box: also prompt with the bounding box of each region's above-``min_similarity``
            pixels (PerSAM reaches a box through a second decoder pass; here it comes from
            the score map, at no cost)
        use_background: score = cos(feature, foreground prototype) - cos(feature, background
            prototype); False scores by the foreground cosine alone (then raise
            ``min_similarity``, e.g. to 0.5, since a raw cosine is rarely below 0). Masks that
            leave no background at all also leave the foreground cosine alone
        use_concept_token: append the foreground prototype (a 256-vector in SAM 2's
            image-embedding space) to the sparse prompt as one concept token, so the mask
            decoder's token-to-image attention is steered towards features like the
            demonstrations' (PerSAM's "target-semantic prompting" adds it to the prompt
            tokens instead; appending uses the segmenter's concept-token slot)
        min_similarity: score above which a location belongs to a region. An image with no
            location above it holds no concept: its probability is all zero and SAM 2 is
            not prompted
        min_coverage: fraction of a grid cell (16x16 model pixels) a mask must cover for the
            cell to count towards the foreground prototype (and the background must cover
            for the background prototype); cells are weighted by that fraction. A mask too
            small to cover any cell that much falls back to the single cell under the mask
            pixel nearest the mask's centroid
        max_regions: connected above-``min_similarity`` regions prompted separately, best
            first; 1 is PerSAM's single object. Each region costs one mask-decoder pass
            (batched), so more regions find more separate instances at more cost; the
            regions' probabilities are combined by their maximum
    """

    threshold: float = 0.5
    num_positive_points: int = 1
    num_negative_points: int = 1
    use_box: bool = True
    use_background: bool = True
    use_concept_token: bool = True
    min_similarity: float = 0.0
    min_coverage: float = 0.5
    max_regions: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1); got {self.threshold}.")
        if self.num_positive_points < 1:
            raise ValueError(f"num_positive_points must be at least 1; got {self.num_positive_points}.")
        if self.num_negative_points < 0:
            raise ValueError(f"num_negative_points must be 0 or more; got {self.num_negative_points}.")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be a fraction in [0, 1]; got {self.min_coverage}.")
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be at least 1; got {self.max_regions}.")


def _features(segmenter, key: str) -> dict:
    """The cached SAM 2 features of ``key``: image_embed (1xCxhxw), high_res_feats, orig_hw."""
    return segmenter.features(key)


def _decode(segmenter, key: str, points, labels, concept_tokens=None):
    """Mask logits (BxHxW float32 tensor) for B prompts of points on the image ``key``.

    points: BxNx2 XY in pixels of the original image; labels: BxN ints (1 positive,
    0 negative, 2 and 3 a box's corners, -1 padding). concept_tokens: (1, T, 256),
    shared by every prompt. Sam2Segmenter.predict takes a box and concept tokens but not
    points, nor a batch, so this repeats its decoder call with both; a test checks that a
    box-only prompt gives ``predict``'s logits exactly. The mask is upsampled the way its
    SAM2Transforms does (bilinear; no hole filling at its defaults).
    """
    import torch
    import torch.nn.functional as F

    feats = _features(segmenter, key)
    model = segmenter.model
    h, w = feats["orig_hw"]
    # As SAM2Transforms.transform_coords: to [0, 1], then to model input pixels.
    size = torch.tensor([w, h], dtype=torch.float32, device=segmenter.device)
    coords = points.to(segmenter.device, torch.float32) / size * model.image_size
    encoder = model.sam_prompt_encoder
    sparse, dense = encoder(points=(coords, labels.to(segmenter.device)), boxes=None, masks=None)
    sparse = sparse.to(segmenter.dtype)
    batch = sparse.shape[0]
    if concept_tokens is not None:
        tokens = concept_tokens.to(segmenter.device, segmenter.dtype).expand(batch, -1, -1)
        sparse = torch.cat([sparse, tokens], dim=1)
    low_res, _, _, _ = model.sam_mask_decoder(
        image_embeddings=feats["image_embed"],
        image_pe=encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=batch > 1,
        high_res_features=feats["high_res_feats"],
    )  # Bx1x(S/4)x(S/4)
    return F.interpolate(low_res.float(), (h, w), mode="bilinear", align_corners=False)[:, 0]


class PrototypeRoute(Route):
    """Cosine similarity to a prototype of the demonstrations' SAM 2 features → SAM 2 prompts."""

    name = "prototype"

    def __init__(self, segmenter, config: PrototypeConfig | None = None):
        model = getattr(segmenter, "model", None)
        if not (hasattr(segmenter, "embed") and hasattr(model, "sam_mask_decoder")):
            raise ConceptSegError(
                f"The prototype route needs a SAM 2 segmenter (Sam2Segmenter); got "
                f"{type(segmenter).__name__}. Use a SAM 2 bundle or another route."
            )
        self.segmenter = segmenter
        self.config = config or PrototypeConfig()
        self._foreground = None  # (C,) torch tensors, set by fit
        self._background = None
        self._num_demonstrations = 0
        self._num_fallbacks = 0

    # ---- fitting ----------------------------------------------------------------------

    def fit(self, demonstrations: Sequence[Demonstration]) -> None:
        """Builds the prototypes from all demonstrations (each embedded once, then cached)."""
        pooled = [self._pool(d) for d in demonstrations]
        self._foreground, self._background = prototypes(pooled)
        self._num_demonstrations = len(pooled)
        self._num_fallbacks = sum(p.fallback for p in pooled)

    def verify(self, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """Leave-one-out IoU per demonstration; each is embedded once (empty with fewer than 2).

        The fitted prototypes, if any, are left as they were.
        """
        if len(demonstrations) < 2:
            return {}
        pooled = [self._pool(d) for d in demonstrations]
        scores = {}
        # Held out in reverse order of embedding: when the segmenter's LRU cache holds fewer
        # images than there are demonstrations, the most recently embedded are still cached.
        for i in reversed(range(len(demonstrations))):
            held_out = demonstrations[i]
            foreground, background = prototypes([p for j, p in enumerate(pooled) if j != i])
            probability, _ = self._segment(held_out.image, foreground, background)
            scores[held_out.id or str(i)] = mask_iou(probability > self.config.threshold, held_out.mask)
        return {(d.id or str(i)): scores[d.id or str(i)] for i, d in enumerate(demonstrations)}

    def _pool(self, demonstration: Demonstration) -> Pooled:
        """Embeds a demonstration and averages its features under and outside its mask."""
        import torch

        mask = np.asarray(demonstration.mask, dtype=bool)
        if not mask.any():
            raise DemonstrationError(
                f"Demonstration {demonstration.id or '(no id)'} has an empty mask: it shows no "
                "concept. Draw the concept in its mask or leave it out."
            )
        embed = self._embedding(demonstration.image)  # C x h x w
        c, h, w = embed.shape
        coverage = cell_coverage(mask, (h, w))
        fg_weights = np.where(coverage >= self.config.min_coverage, coverage, 0.0)
        fallback = not fg_weights.any()
        if fallback:  # the mask vanishes on the grid: the cell under its most central pixel
            fg_weights = np.zeros_like(coverage)
            fg_weights[central_cell(mask, (h, w))] = 1.0
        bg = 1.0 - coverage
        bg_weights = np.where(bg >= self.config.min_coverage, bg, 0.0)
        if not bg_weights.any():  # nearly all concept: any background there is will do
            bg_weights = bg
        flat = embed.reshape(c, -1).float()

        def mean(weights: np.ndarray):
            wt = torch.as_tensor(weights.ravel(), dtype=torch.float32, device=flat.device)
            return flat @ wt / wt.sum()

        background = mean(bg_weights) if bg_weights.any() else None
        return Pooled(mean(fg_weights), background, fallback)

    # ---- segmenting -------------------------------------------------------------------

    def segment(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 float image → HxW float32 probability of the concept."""
        return self.segment_with_details(image)[0]

    def segment_with_details(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """The probability map plus the prompts that produced it (points, labels, boxes, score)."""
        if self._foreground is None:
            raise RuntimeError("PrototypeRoute.fit(demonstrations) must be called before segmenting.")
        return self._segment(image, self._foreground, self._background)

    def similarity(self, image: np.ndarray) -> np.ndarray:
        """HxW float32 score map (see ``PrototypeConfig.use_background``) of a target image."""
        if self._foreground is None:
            raise RuntimeError("PrototypeRoute.fit(demonstrations) must be called before segmenting.")
        key = self._embed(image)
        return upsample(self._score(key, self._foreground, self._background), image.shape[:2])

    def _segment(self, image: np.ndarray, foreground, background) -> tuple[np.ndarray, dict]:
        import torch

        c = self.config
        key = self._embed(image)
        score = self._score(key, foreground, background)  # h x w
        size = image.shape[:2]
        upsampled = upsample(score, size)
        best = float(score.max())
        above = upsampled > c.min_similarity
        if not above.any():
            doubt = margin_doubt(upsampled, above, c.min_similarity)
            return np.zeros(size, np.float32), {"max_similarity": best, "regions": 0, "doubt": doubt}
        prompts = region_prompts(score, upsampled, above, c)
        negatives = extrema(-score, c.num_negative_points, threshold=None)
        neg_xy = [cell_centre(cell, score.shape, size) for cell in negatives]
        points, labels = pack(prompts, neg_xy)
        tokens = foreground.reshape(1, 1, -1) if c.use_concept_token else None
        with torch.no_grad():
            logits = _decode(self.segmenter, key, torch.as_tensor(points), torch.as_tensor(labels), tokens)
        probability = torch.sigmoid(logits.max(dim=0).values).cpu().numpy().astype(np.float32)
        details = {
            "max_similarity": best,
            "regions": len(prompts),
            "positive_points": [p["positives"] for p in prompts],
            "negative_points": neg_xy,
            "boxes": [p["box"] for p in prompts if p["box"] is not None],
            "doubt": margin_doubt(upsampled, probability > c.threshold, c.min_similarity),
        }
        return probability, details

    def _embed(self, image: np.ndarray) -> str:
        """Embeds the image (a cache hit when its content was seen) and returns its key."""
        from conceptseg.imaging import to_uint8

        image8 = to_uint8(np.asarray(image))
        key = content_key(image8)
        self.segmenter.embed(image8, key)
        return key

    def _embedding(self, image: np.ndarray):
        """C x h x w image embedding of an image (embedded on demand)."""
        return _features(self.segmenter, self._embed(image))["image_embed"][0]

    def _score(self, key: str, foreground, background) -> torch.Tensor:
        """h x w float32 tensor: cosine to the foreground minus cosine to the background."""
        import torch.nn.functional as F

        embed = _features(self.segmenter, key)["image_embed"][0].float()  # C x h x w
        feats = F.normalize(embed, dim=0)
        score = (F.normalize(foreground, dim=0) @ feats.flatten(1)).reshape(feats.shape[1:])
        if self.config.use_background and background is not None:
            score = score - (F.normalize(background, dim=0) @ feats.flatten(1)).reshape(feats.shape[1:])
        return score

    # ---- words ------------------------------------------------------------------------

    def rule(self) -> str:
        """Says what the route compares and how it prompts SAM 2."""
        c = self.config
        n = self._num_demonstrations
        learned = f"prototype of {n} demonstration{'s' * (n != 1)}" if n else "not fitted yet"
        if self._num_fallbacks:
            learned += (f", {self._num_fallbacks} of them too small for SAM 2's feature grid: "
                        "the cell at the mask's centre stands in")
        prompt = f"{c.num_positive_points} most similar point{'s' * (c.num_positive_points != 1)}"
        if c.num_negative_points:
            prompt += f", {c.num_negative_points} least similar"
        if c.use_box:
            prompt += ", a box around the similar region"
        if c.use_concept_token:
            prompt += " and the prototype as a concept token"
        return (
            f"regions whose SAM 2 features resemble the demonstrations' masked features ({learned}); "
            f"SAM 2 is prompted with the {prompt}"
        )


# ---- helpers --------------------------------------------------------------------------
















