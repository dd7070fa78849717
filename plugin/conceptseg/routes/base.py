"""What every route offers the router: fit, verify, segment."""

from __future__ import annotations

import abc
from typing import ClassVar, Sequence

import numpy as np

from conceptseg.types import Demonstration


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Foreground IoU of two bool masks in [0, 1]; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


class Route(abc.ABC):
    """A way to segment a concept taught by demonstrations.

    ``threshold`` (on the config) turns ``segment``'s probabilities into a mask.
    """

    name: ClassVar[str]
    # Whether empty-mask (negative) demonstrations teach this route background; routes
    # built on the concept's box or prototype learn from positives only.
    uses_negatives: ClassVar[bool] = False

    @abc.abstractmethod
    def fit(self, demonstrations: Sequence[Demonstration]) -> None:
        """Learns the concept from the demonstrations."""

    def refit(self, demonstrations: Sequence[Demonstration], rule: str) -> None:
        """Fits again for a run recorded with ``rule`` (a shard on a worker): by default as ``fit``.

        A route whose rule is an expensive induction (reasoning-fast) reuses ``rule`` instead.
        """
        self.fit(demonstrations)

    @abc.abstractmethod
    def segment(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 float image → HxW float32 probability of the concept."""

    def segment_with_details(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """The probability map plus what the route can say about it (reasoning, answer)."""
        return self.segment(image), {}

    def segment_batch(self, images: Sequence[np.ndarray]) -> list:
        """Per image (probability, details), or the exception that is that image's failure.

        Routes that gain from batching (the reasoning route: one policy call for B targets)
        override this; the others segment one image at a time.
        """
        outcomes = []
        for image in images:
            try:
                outcomes.append(self.segment_with_details(image))
            except Exception as e:  # one bad target is that target's failure, the batch goes on
                outcomes.append(e)
        return outcomes

    @abc.abstractmethod
    def verify(self, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """Leave-one-out: IoU on each demonstration when fitted on the others."""

    @abc.abstractmethod
    def rule(self) -> str:
        """The learned rule in words, shown next to the masks."""

    @property
    def threshold(self) -> float:
        """Probability above which a pixel belongs to the concept."""
        return self.config.threshold


class BatchedRoute(Route):
    """A route whose own unit is a batch (one model pass for B targets): one image is a batch of one."""

    def segment(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 float image → HxW float32 probability of the concept."""
        return self.segment_with_details(image)[0]

    def segment_with_details(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        outcome = self.segment_batch([image])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @abc.abstractmethod
    def segment_batch(self, images: Sequence[np.ndarray]) -> list:
        """Per image (probability, details), or the exception that is that image's failure."""
