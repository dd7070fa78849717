"""The reasoning route: policy → concept translator → promptable segmenter (the paper's method).

For each target the policy sees the reference canvas (the demonstrations' 2×2 mosaic with
red boxes, the top-left box withheld) and the 600² target, and writes <think>, <rule>,
<check>, <bbox> and <answer>. The translator turns the hidden states of that completion
into concept tokens; the segmenter takes the box (mapped back to the image) plus the
tokens. A completion that does not parse still yields a mask, from the tokens alone,
and the label says why the box was not used. Verification is the <check>: how well the
policy re-finds the withheld top-left demonstration box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from conceptseg.routes.doubt import reasoning_doubt
from conceptseg.model.episode import TARGET_SIZE, BoxMap, build_episode, build_reference_episode
from conceptseg.errors import ConceptSegError
from conceptseg.runs.execution import log_of
from conceptseg.imaging import content_key, to_uint8
from conceptseg.model.prefix import PrefixStore
from conceptseg.model.prompts import CompletionParseError, box_iou, build_prompt, parse_completion
from conceptseg.model.templates import PromptTemplate
from conceptseg.routes.base import BatchedRoute
from conceptseg.segmenters import is_sam3
from conceptseg.segmenters.cache import check_finite_output
from conceptseg.types import Demonstration

DEFAULT_QUESTION = "the concept that the boxed objects in the reference image share"


@dataclass
class ReasoningConfig:
    """Settings of the reasoning route.

    Attributes:
        question: the task text given to the policy; for demonstrations, a concept name
            helps ("nucleus"), for text queries it is the query itself
        threshold: probability (sigmoid of the segmenter's logits) above which a pixel is
            the concept; 0.5 is logit 0, the paper's cut
        prompt_template: the user's wording of the prompt; None uses the bundle's
            (bundle.json "prompt_template"), else the built-in one
        shortcut: with a SAM 3 segmenter, try plain SAM 3 on ``question`` first and skip the
            policy when it is confident (method.md §3.2), for text queries and, as in the
            official ConceptSeg evaluation, for demonstration episodes too
        reuse_prefix: encode the demonstrations' canvas once per run and reuse its key/value
            cache for every target (conceptseg.model.prefix); the completions are the same
    """

    question: str = DEFAULT_QUESTION
    threshold: float = 0.5
    prompt_template: PromptTemplate | None = None
    shortcut: bool = True
    reuse_prefix: bool = True


class ReasoningRoute(BatchedRoute):
    """Segments with a loaded bundle (policy, translator, segmenter)."""

    name = "reasoning"

    def __init__(self, bundle, config: ReasoningConfig | None = None):
        self.bundle = bundle
        self.config = config or ReasoningConfig()
        self._demonstrations: list[Demonstration] | None = None
        self._references: list[np.ndarray] = []
        self._rule = ""
        # The demonstrations' canvas, encoded once: its key covers the prompt's tokens and the
        # canvas's pixels, so a fit on other demonstrations computes a new one by itself.
        self._prefix = PrefixStore()
        self._max_rows = None  # set by an out-of-memory error: the largest batch that fits

    def fit(self, demonstrations: Sequence[Demonstration]) -> None:
        """Keeps the demonstrations (none for a text query); the policy learns in context."""
        self._demonstrations = list(demonstrations)
        self._references = []

    def fit_references(self, images: Sequence[np.ndarray]) -> None:
        """Reference images without masks (a multi-image CR item): shown, no box drawn or checked."""
        self._demonstrations = []
        self._references = list(images)

    def rule(self) -> str:
        """The rule the policy induced while verifying (per-target rules are on the labels)."""
        return self._rule

    def segment_batch(self, images: Sequence[np.ndarray]) -> list:
        """B targets in one policy call: one ``generate`` (the rows share the prompt's length,
        so no padding), one hidden-state pass, one translator call. Returns per image
        (probability, details) or the exception that is that image's failure.

        A CUDA out-of-memory error halves the batch and retries (later batches keep the
        smaller size), down to one image, whose failure is then recorded.
        """
        import torch

        if self._demonstrations is None:
            raise RuntimeError("ReasoningRoute.fit(demonstrations) must be called before segmenting.")
        images = list(images)
        size = min(len(images), self._max_rows or len(images))
        if size < len(images):
            return [o for i in range(0, len(images), size) for o in self.segment_batch(images[i:i + size])]
        try:
            return self._segment_rows(images)
        except torch.OutOfMemoryError as e:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(images) == 1:
                return [ConceptSegError(f"Out of GPU memory on this image even alone ({e}); free memory or "
                                        "use a smaller model.")]
            self._max_rows = len(images) // 2
            log_of(self).fallback(f"batch of {len(images)} halved to {self._max_rows} (and later batches)",
                                  f"out of GPU memory: {e}", len(images))
            return self.segment_batch(images)
        except Exception as e:  # one image's fault must not fail the others: alone, each finds its own
            if len(images) == 1:
                return [e]
            log_of(self).fallback(f"batch of {len(images)} retried one by one", f"{type(e).__name__}: {e}",
                                  len(images))
            return [o for image in images for o in self.segment_batch([image])]

    def batch_size_used(self, asked: int) -> int:
        """The batch the route ends with for ``asked``: smaller after an out-of-memory halving."""
        return min(asked, self._max_rows or asked)

    def prefix_stats(self) -> dict:
        """Whether the canvas's prefix is reused, and the store's hits, misses and unshared calls."""
        return dict(self._prefix.stats(), reuse=self.config.reuse_prefix)

    def _segment_rows(self, images: list) -> list:
        outcomes: list = [None] * len(images)
        asked = []  # (index, pixels, key, why SAM 3 alone was not enough) of the images the policy must read
        segmenter = self.bundle.segmenter
        shortcut = self.config.shortcut and is_sam3(segmenter)
        for i, image in enumerate(images):
            try:
                pixels = to_uint8(image)
                key = content_key(pixels)  # shared with the prototype route: one encoding per image
                reason = None
                if shortcut:  # SAM 3 alone first: it needs the image's features now
                    segmenter.embed(pixels, key)
                    outcomes[i], reason = self._shortcut(key)
                if outcomes[i] is None:
                    asked.append((i, pixels, key, reason))
            except ConceptSegError as e:
                outcomes[i] = e
        if not asked:
            return outcomes
        answers = self._ask([images[i] for i, _, _, _ in asked])
        # Embedded in groups the segmenter's cache holds, each group just before its masks.
        group = max(1, getattr(getattr(segmenter, "config", None), "cache_size", 1))
        for start in range(0, len(asked), group):
            rows = list(zip(asked, answers))[start:start + group]
            embedded = _embed_all(segmenter, [(pixels, key) for (_, pixels, key, _), _ in rows], log_of(self))
            for (i, _, key, reason), (details, box_600, target_map) in rows:
                if isinstance(embedded.get(key), Exception):
                    outcomes[i] = embedded[key]
                    continue
                details["shortcut"] = reason
                details["shortcut_taken"] = False if reason is not None else None
                outcomes[i] = self._mask(key, details, box_600, target_map)
        return outcomes

    def _mask(self, key: str, details: dict, box_600, target_map):
        """The segmenter's probability map for one answered target, with its details."""
        import torch

        segmenter = self.bundle.segmenter
        box = None if box_600 is None else target_map.to_original(box_600)
        tokens = details.pop("_tokens")
        try:
            logits, score = _scored_prediction(segmenter, key, details["answer"] or self.config.question,
                                               box, tokens)
            check_finite_output(logits, "segmenter")  # the segmenters check too; a stand-in may not
        except ConceptSegError as e:
            return e
        details["box"] = None if box is None else [int(v) for v in box]
        probability = torch.sigmoid(torch.from_numpy(logits)).numpy().astype(np.float32)
        # Doubt: the episode's <check>, the segmenter's score, <bbox> vs the mask, its border
        # (see conceptseg.routes.doubt); every completion was asked for a <bbox>.
        checked, check_iou = self._check(details)
        details["doubt"], details["doubt_terms"] = reasoning_doubt(
            probability, self.config.threshold, checked=checked, check_iou=check_iou, score=score,
            box_asked=True, box=details["box"])
        return probability, details

    def _check(self, details: dict) -> tuple[bool, float | None]:
        """(whether this target's doubt has a check term, its IoU): the episode's own <check>."""
        return "check_iou" in details, details.get("check_iou")

    def _shortcut(self, key: str):
        """The paper's shortcut: for a short question SAM 3 alone, when it is confident.

        On a SAM 3 segmenter with ``config.shortcut`` (method.md §3.2): text queries, and
        demonstration episodes, whose question is then the concept name (a short class
        name takes it, the generic default question never does). Returns the result or
        None when the policy must run, with the reason SAM 3 gave (None when it was not tried).
        """
        import torch

        if not self.config.shortcut or not is_sam3(self.bundle.segmenter):
            return None, None
        decision = self.bundle.segmenter.try_shortcut(key, self.config.question)
        if not decision.taken:
            return None, decision.reason
        logits = torch.from_numpy(decision.prediction.logits)
        details = {"shortcut": decision.reason, "shortcut_taken": True, "answer": self.config.question,
                   "parse_error": None, "truncated": None, "reasoning": None, "rule": None, "check": None,
                   "box": None, "completion": None, "decoded_tokens": 0}
        probability = torch.sigmoid(logits).numpy().astype(np.float32)
        score = _score_of(decision.prediction)  # no policy ran: no check and no box to agree with
        details["doubt"], details["doubt_terms"] = reasoning_doubt(probability, self.config.threshold, score=score)
        return (probability, details), decision.reason

    def _episode(self, image: np.ndarray):
        """(request, target map, episode or None, whether a <check> is required) for one target."""
        from conceptseg.model.policy import PolicyRequest

        demos = self._demonstrations
        template = self.config.prompt_template or getattr(self.bundle, "prompt_template", None)
        if self._references:
            episode = build_reference_episode(self._references, image)
            prompt = build_prompt(self.config.question, (), True, False, template)
            images, require_check = [episode.canvas, episode.target], False
        elif demos:
            episode = build_episode(demos, image)
            prompt, require_check = self._demonstration_prompt(episode, template)
            images = [episode.canvas, episode.target]
        else:  # a text query: the target alone
            target_map = BoxMap(image.shape[0], image.shape[1], TARGET_SIZE)
            prompt = build_prompt(self.config.question, with_references=False, template=template)
            return PolicyRequest(images=[_resize_600(image)], text=prompt), target_map, None, False
        return PolicyRequest(images=images, text=prompt), episode.target_map, episode, require_check

    def _demonstration_prompt(self, episode, template) -> tuple[str, bool]:
        """The text of a demonstration episode, and whether its answer must hold a <check>."""
        question, boxes = self.config.question, episode.reference_boxes
        return build_prompt(question, boxes, True, episode.has_proxy, template), episode.has_proxy

    def _ask(self, images: list) -> list:
        """Runs the policy on a batch of targets; per target: details, the 600² box (or None), the map."""
        episodes = [self._episode(image) for image in images]
        prefix = self._prefix if self.config.reuse_prefix else None
        out = self.bundle.policy.generate([e[0] for e in episodes], prefix=prefix)
        tokens = self.bundle.translator(out.hidden_states, out.completion_mask).tokens
        check_finite_output(tokens, "concept translator")
        decoded = out.completion_mask.sum(dim=1).tolist()
        return [self._read(out.completions[i], tokens[i], bool(out.truncated and out.truncated[i]), int(decoded[i]),
                           *episodes[i][1:]) for i in range(len(images))]

    def _read(self, completion: str, tokens, truncated: bool, decoded: int, target_map, episode, require_check):
        """What one completion says: the details a label carries, and its 600² box."""
        details = {"completion": completion, "_tokens": tokens, "parse_error": None, "truncated": truncated,
                   "reasoning": None, "rule": None, "answer": None, "check": None, "decoded_tokens": decoded}
        if require_check:  # only a mosaic of demonstrations withholds a box
            details["check_iou"] = None  # no parseable <check>: full doubt
        try:
            parsed = self._parse(completion, require_check)
        except CompletionParseError as e:
            cut = f"cut at {self.bundle.policy.config.max_new_tokens} tokens (max_new_tokens): " if truncated else ""
            details["parse_error"] = cut + str(e)
            return details, None, target_map
        details.update(reasoning=parsed.think, rule=parsed.rule, answer=parsed.answer,
                       check=None if parsed.check is None else list(parsed.check))
        if require_check and parsed.check is not None:
            details["check_iou"] = float(box_iou(tuple(parsed.check), episode.proxy_box))
        return details, parsed.bbox, target_map

    def _parse(self, completion: str, require_check: bool):
        return parse_completion(completion, require_check=require_check)

    def verify(self, demonstrations: Sequence[Demonstration]) -> dict[str, float]:
        """IoU of the policy's <check> box with the withheld top-left demonstration box.

        The episode's target is the first demonstration itself, so the policy must find
        in the target the object whose box the mosaic hides. Fewer than two
        demonstrations leave no box to withhold: nothing is returned (unavailable).
        """
        demonstrations = list(demonstrations)
        if len(demonstrations) < 2:
            return {}
        self.fit(demonstrations)
        episode = build_episode(demonstrations, demonstrations[0].image)
        details, _, _ = self._ask([demonstrations[0].image])[0]
        self._rule = details["rule"] or ""
        check = details["check"]
        score = box_iou(tuple(check), episode.proxy_box) if check is not None else 0.0
        return {demonstrations[0].id or "0": float(score)}


def _embed_all(segmenter, images: list, log=None) -> dict:
    """Embeds (pixels, key) pairs, in one image-encoder pass where the segmenter offers one;
    returns {key: exception} for the images that could not be embedded."""
    many = getattr(segmenter, "embed_many", None)
    if many is not None and len(images) > 1:
        try:
            many([p for p, _ in images], [k for _, k in images])
            return {}
        except ConceptSegError as e:  # one at a time below finds which image it was
            if log is not None:
                log.fallback(f"{len(images)} images embedded one by one", f"{type(e).__name__}: {e}", len(images))
    failed = {}
    for pixels, key in images:
        try:
            segmenter.embed(pixels, key)
        except ConceptSegError as e:
            failed[key] = e
    return failed


def _scored_prediction(segmenter, key: str, phrase: str, box, tokens) -> tuple[np.ndarray, float | None]:
    """The segmenter's logits for one target and its score for that mask (None if it gives none).

    SAM 3 reads the answer phrase, not a box (method.md §1.3); SAM 2 reads the box. A
    segmenter without ``predict_scored`` (a stand-in) gives logits alone.
    """
    if is_sam3(segmenter):
        prediction = segmenter.predict(key, phrase, concept_tokens=tokens)
        return prediction.logits, _score_of(prediction)
    scored = getattr(segmenter, "predict_scored", None)
    if scored is None:
        return segmenter.predict(key, box=box, concept_tokens=tokens), None
    prediction = scored(key, box=box, concept_tokens=tokens)
    return prediction.logits, prediction.score


def _score_of(prediction) -> float | None:
    """SAM 3's score for its mask: the best instance's score, else the presence alone."""
    score = getattr(prediction, "score", None)
    return prediction.presence if score is None else score


def _resize_600(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(to_uint8(image), (TARGET_SIZE, TARGET_SIZE), interpolation=cv2.INTER_LINEAR)
