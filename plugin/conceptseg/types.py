"""The data every part of the engine passes around, free of FiftyOne."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Demonstration:
    """An image whose mask shows the concept.

    Attributes:
        image: HxWx3 float32 RGB in [0, 1] (see ``imaging.to_rgb_float``)
        mask: HxW bool, True on the concept
        id: where it came from (a FiftyOne sample id, a file name)
    """

    image: np.ndarray
    mask: np.ndarray
    id: str = ""


@dataclass
class Target:
    """An image in which to find the concept."""

    image: np.ndarray
    id: str = ""


@dataclass
class Verification:
    """How well a route re-found each held-out demonstration.

    ``scores`` maps a held-out demonstration id to its IoU; empty when fewer than two
    demonstrations leave nothing to hold out, in which case ``score`` is None
    ("unavailable"), never 0.
    """

    route: str
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def score(self) -> float | None:
        """Mean held-out IoU, or None when verification was unavailable."""
        if not self.scores:
            return None
        return float(np.mean(list(self.scores.values())))


@dataclass
class TargetResult:
    """The concept found in one target, and how it was found.

    Attributes:
        id: the target's id
        mask: HxW bool at the target's size (None when the target failed)
        probability: HxW float32 in [0, 1], the route's confidence per pixel
        route: the route that segmented it
        verification: that route's held-out IoU, None when unavailable
        verified: whether the verification passed the router's threshold
        seconds: time spent segmenting this target
        error: why the target failed, None on success
        details: what the route said about this target (the reasoning route's think,
            rule, answer, box, parse error); empty for routes without words
    """

    id: str
    mask: np.ndarray | None
    probability: np.ndarray | None
    route: str
    verification: float | None
    verified: bool
    seconds: float
    error: str | None = None
    details: dict = field(default_factory=dict)
