"""Picks the cheapest route whose verification on held-out demonstrations passes.

Each route is verified by leaving one demonstration out at a time and scoring its mask
with IoU. Routes are tried cheapest first; the first whose mean held-out IoU reaches
``threshold`` is taken. When none passes, the best-verified one runs and its results
are flagged unverified. With a single demonstration nothing can be held out: the
verification is "unavailable" (None, never 0) and the cheapest route runs, unverified.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence


from conceptseg.constants import VERIFY_THRESHOLD
from conceptseg.routes.doubt import probability_doubt
from conceptseg.errors import ConceptSegError, DemonstrationError
from conceptseg.routes import ROUTES, Route
from conceptseg.types import Demonstration, Target, TargetResult, Verification

# Written once, in conceptseg.constants (why 0.6 is there): the operator reads it without the engine.
DEFAULT_THRESHOLD = VERIFY_THRESHOLD


@dataclass
class RouteChoice:
    """What the router decided, and why.

    Attributes:
        route: the route that segments the targets (fitted on all demonstrations)
        verifications: every route tried, in order, with its held-out scores
        verified: whether ``route`` passed the threshold
        reason: one sentence a user can read
        fit_seconds: time spent verifying and fitting
    """

    route: Route
    verifications: list[Verification] = field(default_factory=list)
    verified: bool = False
    reason: str = ""
    fit_seconds: float = 0.0

    @property
    def verification(self) -> float | None:
        """The chosen route's held-out IoU, None when unavailable."""
        for v in self.verifications:
            if v.route == self.route.name:
                return v.score
        return None


# Below this many pixels a side, the routes' multiscale features and SAM's grid have nothing to read.
MIN_SIDE = 8


def check_demonstrations(demonstrations: Sequence[Demonstration]) -> None:
    """Raises DemonstrationError unless the demonstrations can teach the concept.

    An empty mask is a negative demonstration ("the concept is absent here"); at least one
    demonstration must show the concept.
    """
    if not demonstrations:
        raise DemonstrationError(
            "No demonstrations: select at least one sample whose mask shows the concept "
            "(two or more let the router verify its rule)."
        )
    for d in demonstrations:
        if d.mask is None:
            raise DemonstrationError(f"Demonstration {d.id} has no mask; give it one or deselect it.")
        height, width = d.image.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise DemonstrationError(
                f"Demonstration {d.id} is {width}x{height} pixels: too small to learn from "
                f"(each side needs at least {MIN_SIDE}); deselect it."
            )
        if d.mask.shape != d.image.shape[:2]:
            raise DemonstrationError(
                f"Demonstration {d.id}: mask is {d.mask.shape[1]}x{d.mask.shape[0]} but the image "
                f"is {d.image.shape[1]}x{d.image.shape[0]}; the mask must cover the image pixel for pixel."
            )
        if d.mask.all():
            raise DemonstrationError(
                f"Demonstration {d.id}: the mask covers the whole image, so nothing tells the "
                "concept apart from its background. Use a sample with background."
            )
    if not any(d.mask.any() for d in demonstrations):
        raise DemonstrationError(
            "Every demonstration's mask is empty (all negatives): at least one must show the concept."
        )


def usable(route: Route, demonstrations: Sequence[Demonstration]) -> list[Demonstration]:
    """The demonstrations a route learns from: all, or only positives for routes without negatives."""
    if route.uses_negatives:
        return list(demonstrations)
    return [d for d in demonstrations if d.mask.any()]


class Router:
    """Chooses a route for a set of demonstrations and segments targets with it."""

    def __init__(self, routes: Sequence[Route] | None = None, threshold: float = DEFAULT_THRESHOLD):
        if not 0.0 <= threshold <= 1.0:
            raise ConceptSegError(f"threshold must be an IoU in [0, 1], got {threshold}.")
        self.routes = list(routes) if routes is not None else [cls() for cls in ROUTES.values()]
        if not self.routes:
            raise ConceptSegError("The router needs at least one route.")
        self.threshold = threshold

    def choose(self, demonstrations: Sequence[Demonstration]) -> RouteChoice:
        """Verifies routes cheapest first, then fits the chosen one on all demonstrations."""
        check_demonstrations(demonstrations)
        start = time.perf_counter()
        if len(demonstrations) < 2:
            route = self.routes[0]
            choice = RouteChoice(
                route,
                [Verification(route.name)],
                verified=False,
                reason=f"one demonstration leaves none to hold out: verification unavailable, "
                f"{route.name} runs unverified",
            )
        else:
            choice = self._choose_verified(demonstrations)
        choice.route.fit(usable(choice.route, demonstrations))
        choice.fit_seconds = time.perf_counter() - start
        return choice

    def _choose_verified(self, demonstrations: Sequence[Demonstration]) -> RouteChoice:
        verifications = []
        for route in self.routes:
            t = time.perf_counter()
            demos = usable(route, demonstrations)
            # A route that sees fewer than two demonstrations has none to hold out.
            v = Verification(route.name, route.verify(demos) if len(demos) >= 2 else {})
            v.seconds = time.perf_counter() - t
            verifications.append(v)
            if v.score is not None and v.score >= self.threshold:
                return RouteChoice(
                    route,
                    verifications,
                    verified=True,
                    reason=f"{route.name} re-found held-out demonstrations with IoU "
                    f"{v.score:.3f} >= {self.threshold:.2f}",
                )
        best = max(range(len(verifications)), key=lambda i: -1.0 if verifications[i].score is None
                   else verifications[i].score)
        v = verifications[best]
        return RouteChoice(
            self.routes[best],
            verifications,
            verified=False,
            reason=f"no route reached IoU {self.threshold:.2f} on held-out demonstrations; "
            f"best was {v.route} with {_score(v.score)}, results flagged unverified",
        )

    def segment(self, choice: RouteChoice, targets: Iterable[Target], batch_size: int = 1) -> Iterator[TargetResult]:
        """Segments the targets with the chosen route, ``batch_size`` at a time; a failing
        target yields an error result. A target's ``seconds`` is its share of its batch."""
        check_batch_size(batch_size)
        route = choice.route
        for batch in _batches(targets, batch_size):
            start = time.perf_counter()
            outcomes = route.segment_batch([t.image for t in batch])
            seconds = (time.perf_counter() - start) / len(batch)
            for target, outcome in zip(batch, outcomes):
                yield _result(choice, target, outcome, seconds)


def check_batch_size(batch_size) -> None:
    """Raises ConceptSegError unless ``batch_size`` is a whole number of targets, at least 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConceptSegError(f"batch size must be a whole number of targets, at least 1; got {batch_size!r}.")


def _batches(targets: Iterable[Target], size: int) -> Iterator[list[Target]]:
    batch = []
    for target in targets:
        batch.append(target)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _result(choice: RouteChoice, target: Target, outcome, seconds: float) -> TargetResult:
    """One target's result from what the route returned for it: (probability, details) or an exception."""
    route = choice.route
    probability, mask, error, details = None, None, None, {}
    if isinstance(outcome, ConceptSegError):
        error = str(outcome)
    elif isinstance(outcome, Exception):  # one bad target is that target's failure; the run goes on
        height, width = target.image.shape[:2]
        error = f"{route.name} route failed on this {width}x{height} image: {type(outcome).__name__}: {outcome}"
    else:
        probability, details = outcome
        mask = probability > route.threshold
        if details.get("doubt") is None:  # a route without its own definition
            details = {**details, "doubt": probability_doubt(probability, route.threshold)}
    return TargetResult(id=target.id, mask=mask, probability=probability, route=route.name,
                        verification=choice.verification, verified=choice.verified, seconds=seconds,
                        error=error, details=details)


def _score(value: float | None) -> str:
    return "unavailable" if value is None else f"{value:.3f}"


def _needs(route: str, bundle) -> str:
    """One sentence: what the named model route needs that ``bundle`` lacks."""
    if route == "exemplar":
        if bundle is not None:
            return (f"The exemplar route needs SAM 3; this bundle's segmenter is {type(bundle.segmenter).__name__}. "
                    "Use a SAM 3 bundle: the zoo's conceptseg-sam3 or conceptseg-r1-7b, or `conceptseg tiny-bundle "
                    "DIR --segmenter sam3` to try it.")
        return ("The exemplar route needs a model with SAM 3: pass a bundle (--model DIR or a zoo name such as "
                "conceptseg-sam3).")
    need = "a SAM 2 segmenter" if route == "prototype" else "a policy"
    return f"The {route} route needs a model with {need}: pass a bundle (--model DIR or a zoo name)."


def make_router(route: str = "auto", threshold: float = DEFAULT_THRESHOLD, bundle=None, question: str | None = None,
                prompt_template=None, prefix_reuse: bool = True) -> Router:
    """A router over every available route (``auto``) or over the one named route.

    With a bundle, routes join in order of cost: the SAM 2 prototype route (when the
    segmenter is SAM 2) or the SAM 3 exemplar route (when it is SAM 3; ``question``, the
    concept's name, is its text prompt), then, when the bundle has a policy, the rule-reuse route
    (reasoning-fast: a short answer per target) and the full reasoning route.
    ``prefix_reuse=False`` makes the policy routes encode every prompt whole
    (:mod:`conceptseg.model.prefix`; the labels are the same).
    """
    from conceptseg.routes.exemplar import ExemplarConfig, ExemplarRoute
    from conceptseg.routes.prototype import PrototypeRoute
    from conceptseg.routes.reasoning import ReasoningConfig, ReasoningRoute
    from conceptseg.routes.reasoning_fast import ReasoningFastRoute

    available: dict[str, Route] = {name: cls() for name, cls in ROUTES.items()}
    model_routes = (PrototypeRoute.name, ExemplarRoute.name, ReasoningFastRoute.name, ReasoningRoute.name)
    if bundle is not None:
        if type(bundle.segmenter).__name__ == "Sam2Segmenter":
            available[PrototypeRoute.name] = PrototypeRoute(bundle.segmenter)
        if type(bundle.segmenter).__name__ == "Sam3Segmenter":
            available[ExemplarRoute.name] = ExemplarRoute(bundle.segmenter, ExemplarConfig(text=question or None))
        if bundle.policy is not None:
            config = ReasoningConfig(question=question) if question else ReasoningConfig()
            config.prompt_template = prompt_template  # a PromptTemplate or None (the bundle's)
            config.reuse_prefix = bool(prefix_reuse)
            available[ReasoningFastRoute.name] = ReasoningFastRoute(bundle, config)
            available[ReasoningRoute.name] = ReasoningRoute(bundle, dataclasses.replace(config))
    if route == "auto":
        return Router(list(available.values()), threshold=threshold)
    if route in model_routes and route not in available:
        raise ConceptSegError(_needs(route, bundle))
    if route not in available:
        names = ", ".join(list(ROUTES) + list(model_routes))
        raise ConceptSegError(f"Unknown route {route!r}; choose auto or one of: {names}.")
    return Router([available[route]], threshold=threshold)
