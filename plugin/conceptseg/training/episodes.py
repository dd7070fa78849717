"""Training episodes: concept-labelled samples → what the policy sees and what it is scored on.

Follows the paper's construction (method.md §2.2): a target and up to four demonstrations of
the same concept in the 2×2 mosaic with the top-left box withheld as the proxy; the target at
600²; its ground-truth box from the 600² mask. Demonstrations are drawn once, when the set
is built, from the *train* split of the concept (test targets too), so the G rollouts of a
group and every epoch see the same prompt. Samples that carry their own reference images
(multi-image CR tasks) get a mosaic of those images with no boxes and no proxy.

Departures from the official code, on purpose: demonstrations are drawn without replacement
(two or three candidates give a two- or three-tile mosaic rather than repeated tiles), and a
demonstration whose mask turns out empty or whose image cannot be read is left out of the
mosaic and counted instead of drawing an empty box.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from conceptseg.model.episode import (
    MAX_REFERENCES,
    TARGET_SIZE,
    TILE_SIZE,
    BoxMap,
    as_uint8,
    build_episode,
    mask_box,
    resize_square,
)
from conceptseg.errors import ConceptSegError
from conceptseg.imaging import content_key
from conceptseg.model.prompts import build_prompt
from conceptseg.types import Demonstration

Box = tuple[int, int, int, int]
Loader = Callable[[], tuple[np.ndarray, "np.ndarray | None"]]


class UnreadableSample(ConceptSegError):
    """A sample's image or mask could not be read."""


@dataclass
class TrainingSample:
    """One concept-labelled image.

    Attributes:
        id: a stable identifier (a FiftyOne sample id, a file name)
        concept: the concept's name; samples of one concept teach each other
        split: "train" or "test" (test targets still draw demonstrations from train)
        load: returns (HxWx3 uint8 or [0, 1] float image, HxW mask or None); called only
            when an episode needs it
        question: the task text for the policy; the concept name when None
        references: image loaders of a multi-image task (CR), whose references have no masks
        level: CI / CD / CR when known (reported, not used)
    """

    id: str
    concept: str
    load: Loader
    split: str = "train"
    question: str | None = None
    references: list[Callable[[], np.ndarray]] | None = None
    level: str | None = None

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(HxWx3 uint8 RGB image, HxW bool mask or None); UnreadableSample when that fails."""
        try:
            image, mask = self.load()
        except Exception as e:  # a broken file, a missing path: the caller skips and counts
            raise UnreadableSample(f"Sample {self.id}: {e}") from e
        image = as_uint8(np.asarray(image))
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if mask is not None:
            mask = np.asarray(mask).astype(bool)
            if mask.shape != image.shape[:2]:
                raise UnreadableSample(f"Sample {self.id}: mask {mask.shape} does not match image {image.shape[:2]}.")
        return image, mask


def in_memory(image: np.ndarray, mask: np.ndarray | None) -> Loader:
    """A loader over arrays already in memory (procedural data, tests)."""
    return lambda: (image, mask)


@dataclass
class EpisodeSpec:
    """Which samples make one episode; fixed when the set is built."""

    target: TrainingSample
    demonstrations: list[TrainingSample]
    question: str


@dataclass
class TrainingEpisode:
    """A materialised episode.

    Attributes:
        images: the policy's images, [reference canvas, 600² target]
        prompt: the user-turn text
        require_check: whether the completion must hold a <check> (the mosaic has a proxy)
        proxy_box: the withheld top-left box (canvas coordinates), None without one
        target_image: the target at its own size (the segmenter's input), HxWx3 uint8
        target_key: content key of ``target_image`` for the segmenter's embedding cache
        target_map: original target coordinates ↔ 600²
        mask_600: the ground-truth mask at 600² (bool); all False when the concept is absent
        gt_box: the box of ``mask_600`` (inclusive pixels), None when the mask is empty
        target_id, concept: for reports
    """

    images: list[np.ndarray]
    prompt: str
    require_check: bool
    proxy_box: Box | None
    target_image: np.ndarray
    target_key: str
    target_map: BoxMap
    mask_600: np.ndarray
    gt_box: Box | None
    target_id: str
    concept: str


@dataclass
class EpisodeReport:
    """What building and reading episodes left out, and why."""

    episodes: int = 0
    concepts: int = 0
    skipped_concepts: dict[str, int] = field(default_factory=dict)  # concept → its sample count
    without_mask: int = 0
    unreadable: list[str] = field(default_factory=list)
    empty_demonstrations: list[str] = field(default_factory=list)
    empty_targets: int = 0

    def to_dict(self) -> dict:
        """JSON-ready counts (lists shortened to their lengths and first ids)."""
        return {
            "episodes": self.episodes,
            "concepts": self.concepts,
            "skipped_concepts": len(self.skipped_concepts),
            "skipped_concept_names": sorted(self.skipped_concepts)[:20],
            "without_mask": self.without_mask,
            "unreadable": len(self.unreadable),
            "unreadable_ids": self.unreadable[:20],
            "empty_demonstrations": len(self.empty_demonstrations),
            "empty_targets": self.empty_targets,
        }


def _seed_for(seed: int, sample_id: str) -> int:
    # Per-target generators make the draw independent of the order samples arrive in.
    return zlib.crc32(f"{seed}:{sample_id}".encode())


def build_specs(
    samples: Sequence[TrainingSample],
    split: str = "train",
    num_demonstrations: int = MAX_REFERENCES,
    seed: int = 0,
    report: EpisodeReport | None = None,
) -> list[EpisodeSpec]:
    """One episode per sample of ``split``; concepts with fewer than two samples are skipped.

    Demonstrations come from the concept's train samples other than the target, drawn once
    with ``seed`` (at most ``num_demonstrations``). Multi-image samples use their own
    references instead.
    """
    if not 1 <= num_demonstrations <= MAX_REFERENCES:
        raise ValueError(f"num_demonstrations must be 1..{MAX_REFERENCES}, got {num_demonstrations}.")
    report = report if report is not None else EpisodeReport()
    by_concept: dict[str, list[TrainingSample]] = {}
    for sample in samples:
        by_concept.setdefault(sample.concept, []).append(sample)
    specs = []
    for concept in sorted(by_concept):
        members = by_concept[concept]
        # Sorted by id, so a target's draw depends on the seed, not on the view's order.
        train = sorted((s for s in members if s.split == "train"), key=lambda s: s.id)
        targets = [s for s in members if s.split == split]
        multi = [s for s in targets if s.references]
        if len(members) < 2 and not multi:
            report.skipped_concepts[concept] = len(members)
            continue
        concept_specs = []
        for target in targets:
            question = target.question or concept.replace("_", " ")
            if target.references:
                concept_specs.append(EpisodeSpec(target, [], question))
                continue
            candidates = [s for s in train if s.id != target.id]
            if not candidates:
                continue
            rng = np.random.default_rng(_seed_for(seed, target.id))
            picks = rng.choice(len(candidates), size=min(num_demonstrations, len(candidates)), replace=False)
            concept_specs.append(EpisodeSpec(target, [candidates[i] for i in picks], question))
        if concept_specs:
            report.concepts += 1
            specs.extend(concept_specs)
        else:
            report.skipped_concepts[concept] = len(members)
    report.episodes = len(specs)
    return specs


def reference_mosaic(images: Sequence[np.ndarray]) -> np.ndarray:
    """Reference images without masks → one 600² image, or the 2×2 mosaic of 300² tiles."""
    images = [np.asarray(i) for i in images[:MAX_REFERENCES]]
    if len(images) == 1:
        return resize_square(images[0], TARGET_SIZE)
    canvas = np.zeros((TARGET_SIZE, TARGET_SIZE, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, 2)
        tile = resize_square(image, TILE_SIZE)
        canvas[row * TILE_SIZE : (row + 1) * TILE_SIZE, col * TILE_SIZE : (col + 1) * TILE_SIZE] = tile
    return canvas


def materialise(spec: EpisodeSpec, report: EpisodeReport | None = None) -> TrainingEpisode | None:
    """Reads the images of ``spec`` and builds the episode; None (counted) when it cannot be."""
    report = report if report is not None else EpisodeReport()
    try:
        image, mask = spec.target.read()
    except UnreadableSample:
        report.unreadable.append(spec.target.id)
        return None
    if mask is None:
        report.without_mask += 1
        return None
    if spec.target.references:
        try:
            canvas = reference_mosaic([load() for load in spec.target.references])
        except Exception:
            report.unreadable.append(spec.target.id)
            return None
        images, boxes, proxy = [canvas], [], None
    else:
        demos = []
        for demo in spec.demonstrations:
            try:
                demo_image, demo_mask = demo.read()
            except UnreadableSample:
                report.unreadable.append(demo.id)
                continue
            if demo_mask is None or not demo_mask.any():
                report.empty_demonstrations.append(demo.id)
                continue
            demos.append(Demonstration(image=demo_image, mask=demo_mask, id=demo.id))
        if not demos:
            return None
        episode = build_episode(demos)
        images, boxes, proxy = [episode.canvas], episode.reference_boxes, episode.proxy_box
    target_map = BoxMap(image.shape[0], image.shape[1], TARGET_SIZE)
    mask_600 = cv2.resize(mask.astype(np.uint8), (TARGET_SIZE, TARGET_SIZE), interpolation=cv2.INTER_NEAREST) > 0
    gt_box = mask_box(mask_600)
    if gt_box is None:
        report.empty_targets += 1
    target_600 = resize_square(image, TARGET_SIZE)
    prompt = build_prompt(spec.question, boxes, with_references=True, with_check=proxy is not None)
    return TrainingEpisode(
        images=images + [target_600],
        prompt=prompt,
        require_check=proxy is not None,
        proxy_box=proxy,
        target_image=image,
        target_key=content_key(image),
        target_map=target_map,
        mask_600=mask_600,
        gt_box=None if gt_box is None else tuple(int(v) for v in gt_box),
        target_id=spec.target.id,
        concept=spec.target.concept,
    )
