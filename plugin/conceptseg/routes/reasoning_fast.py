"""Rule reuse: the rule is induced once per demonstration set, then applied to every target.

The reasoning route decodes a whole chain of thought (think, rule, check, box, answer) for
every target. Here one full episode induces the rule (the leave-one-out episode of the
verification: the first demonstration is the target and its box is withheld in the
mosaic), and every target then gets :func:`conceptseg.model.prompts.build_fast_prompt`: the same
two images, the rule stated, and only ``<bbox>`` and ``<answer>`` asked for, so the policy
writes a few dozen tokens instead of hundreds. The hidden states of that short answer feed
the translator as usual.

Verification holds a demonstration out for real: the rule is induced from the others and
applied, with the fast prompt, to the held-out one; its mask's IoU is the score, so the
router takes this route only where the reused rule re-finds unseen examples. A released
model was trained on full episodes only, so whether a short answer is as good as a full one
is exactly what this verification measures.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from conceptseg.errors import ConceptSegError
from conceptseg.model.prompts import CompletionParseError, build_fast_prompt, parse_answer
from conceptseg.routes.base import mask_iou
from conceptseg.routes.reasoning import ReasoningRoute
from conceptseg.types import Demonstration


class RuleInductionError(ConceptSegError):
    """The policy wrote no parseable rule for the demonstrations."""


class ReasoningFastRoute(ReasoningRoute):
    """The reasoning route with the rule induced once and reused for every target."""

    name = "reasoning-fast"

    def __init__(self, bundle, config=None):
        super().__init__(bundle, config)
        self.induction: dict = {}  # the episode that gave the rule: completion, decoded tokens

    def fit(self, demonstrations: Sequence[Demonstration]) -> None:
        """Induces the rule from the demonstrations (one full episode); targets then reuse it."""
        demonstrations = list(demonstrations)
        self._rule = self._induce(demonstrations)
        super().fit(demonstrations)

    def refit(self, demonstrations: Sequence[Demonstration], rule: str) -> None:
        """Reuses the run's recorded rule (no induction): every worker applies the same rule."""
        if not rule.strip():
            self.fit(demonstrations)
            return
        self._rule = rule
        self.induction = {}  # no episode of its own: the targets' doubt has no check term
        super().fit(list(demonstrations))

    def fit_references(self, images) -> None:
        raise ConceptSegError("The reasoning-fast route learns its rule from demonstrations with masks; "
                              "use the reasoning route for reference images.")

    def verify(self, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """Mask IoU on the first demonstration, with the rule induced from the others.

        A rule the policy cannot state (an unparseable induction) leaves the route
        unavailable: nothing is returned.
        """
        demonstrations = list(demonstrations)
        if len(demonstrations) < 2:
            return {}
        held_out, rest = demonstrations[0], demonstrations[1:]
        try:
            self.fit(rest)
        except RuleInductionError:
            return {}
        probability, _ = self.segment_with_details(held_out.image)
        return {held_out.id or "0": mask_iou(probability > self.config.threshold, held_out.mask > 0)}

    def _induce(self, demonstrations: list[Demonstration]) -> str:
        if not demonstrations:
            raise RuleInductionError("The reasoning-fast route needs demonstrations to induce its rule from.")
        full = ReasoningRoute(self.bundle, self.config)
        full._prefix = self._prefix  # the same system prompt and canvas start both prompts: encoded once
        full.fit(demonstrations)
        details = full._ask([demonstrations[0].image])[0][0]
        self.induction = {"completion": details["completion"], "decoded_tokens": details["decoded_tokens"],
                          "parse_error": details["parse_error"]}
        if "check_iou" in details:  # the episode withheld a box (two demonstrations or more)
            self.induction["check_iou"] = details["check_iou"]
        if not details.get("rule"):
            raise RuleInductionError(
                "The policy wrote no parseable rule for these demonstrations "
                f"({details['parse_error'] or 'the rule was empty'}); use the reasoning route instead.")
        return details["rule"]

    def _check(self, details: dict) -> tuple[bool, float | None]:
        """The doubt's check term is the inducing episode's: the rule re-finding its withheld box.

        The same for every target (it moves the doubt's level, not the targets' order); none
        after ``refit`` or when the demonstrations were too few to withhold a box.
        """
        return "check_iou" in self.induction, self.induction.get("check_iou")

    def _demonstration_prompt(self, episode, template) -> tuple[str, bool]:
        return build_fast_prompt(self.config.question, self._rule, episode.reference_boxes), False

    def _parse(self, completion: str, require_check: bool):
        try:
            parsed = parse_answer(completion)
        except CompletionParseError as e:
            raise type(e)(f"rule-reuse answer: {e}") from e
        return dataclasses.replace(parsed, rule=self._rule)
