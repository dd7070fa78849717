"""Procedural concepts: small synthetic images whose concept a learner can induce from demonstrations.

Families, each with the concept level of method.md §4.1:
- ``shape`` (CI): "triangle", "circle", ... — instances are that shape in any colour, among
  distractor shapes of other kinds.
- ``colour`` (CI): "red object", ... — instances are objects of that colour in any shape, among
  objects of other colours.
- ``texture`` (CI): "striped object", "dotted object", "checkered object" — instances are filled
  with that texture, distractors are plain or carry another texture.
- ``camouflage`` (CD): "camouflaged blob" — one irregular blob whose mottled texture nearly
  matches the background's; it is told apart only by a slight colour shift and the break in the
  texture at its edge.
- ``odd_one_out`` (CR): "odd one out" — a grid of identical objects, one of which differs in
  colour, shape or size; the concept exists only relative to the other objects in the image.

Everything is drawn without anti-aliasing, so each pixel belongs to exactly one object and a
mask is exactly the pixels its concept instances show in the final image. Only numpy and cv2.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

SHAPES = ("triangle", "circle", "square", "star", "cross", "ring")
# Fully saturated and far apart, so that "red" never looks like "purple" at any size.
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 220), "yellow": (235, 205, 40),
           "purple": (150, 70, 200)}
TEXTURES = ("striped", "dotted", "checkered")
CAMOUFLAGE = "camouflaged blob"
ODD_ONE_OUT = "odd one out"

LEVELS = {"shape": "CI", "colour": "CI", "texture": "CI", "camouflage": "CD", "odd_one_out": "CR"}
# Concept name → family, in the stable order of concept_names().
FAMILIES = {
    **{shape: "shape" for shape in SHAPES},
    **{f"{colour} object": "colour" for colour in COLOURS},
    **{f"{texture} object": "texture" for texture in TEXTURES},
    CAMOUFLAGE: "camouflage",
    ODD_ONE_OUT: "odd_one_out",
}

OBJECT_SIDE = (0.12, 0.30)  # an object's diameter as a fraction of the image side
GAP = 3  # pixels kept free between scattered objects: no occlusion, one component per instance
MIN_SIZE = 64  # below this the smallest shapes stop being recognisable


@dataclass
class ConceptImage:
    """One generated image with the union mask of its concept's instances.

    Attributes:
        image: HxWx3 uint8 RGB
        mask: HxW bool, the pixels of every concept instance (never empty)
        concept: the concept's name, e.g. "red object"
        family: "shape" | "colour" | "texture" | "camouflage" | "odd_one_out"
        level: "CI" | "CD" | "CR"
    """

    image: np.ndarray
    mask: np.ndarray
    concept: str
    family: str
    level: str


def concept_names() -> list[str]:
    """Every concept the generator knows, in a stable order."""
    return list(FAMILIES)


def _family(concept: str) -> str:
    if concept not in FAMILIES:
        raise ValueError(f"Unknown concept {concept!r}; known concepts: {', '.join(FAMILIES)}.")
    return FAMILIES[concept]


def level_of(concept: str) -> str:
    """CI, CD or CR for a concept name."""
    return LEVELS[_family(concept)]


def _outline(kind: str, radius: float) -> np.ndarray:
    """Nx2 polygon corners of a shape centred on the origin."""
    if kind == "cross":
        a, r = 0.3 * radius, radius  # a plus sign with arms of half-width 0.3 r
        return np.array([(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a),
                         (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)])
    corners = {"triangle": ([radius], 3), "square": ([radius], 4), "star": ([radius, 0.45 * radius], 10)}
    if kind not in corners:
        raise ValueError(f"Unknown shape kind {kind!r}.")
    radii, count = corners[kind]
    theta = np.arange(count) * 2 * np.pi / count
    r = np.resize(radii, count)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)


def _shape_mask(kind: str, centre: tuple[int, int], radius: float, angle: float, size: int) -> np.ndarray:
    """HxW bool pixels of one shape; integer centres make equal shapes rasterise identically."""
    canvas = np.zeros((size, size), np.uint8)
    if kind in ("circle", "ring"):
        cv2.circle(canvas, centre, max(1, round(radius)), 1, -1)
        if kind == "ring":
            cv2.circle(canvas, centre, max(1, round(radius * 0.55)), 0, -1)
        return canvas.astype(bool)
    return _fill(canvas, _outline(kind, radius), centre, angle)


def _fill(canvas: np.ndarray, points: np.ndarray, centre: tuple[int, int], angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rotated = points @ np.array([[c, s], [-s, c]]) + np.array(centre)
    cv2.fillPoly(canvas, [np.round(rotated).astype(np.int32)], 1)  # LINE_8: no anti-aliasing
    return canvas.astype(bool)


def _pattern(texture: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """HxW bool: where a fill shows its first colour (everywhere for "plain")."""
    y, x = np.mgrid[:size, :size] + rng.integers(0, 16, size=(2, 1, 1))
    if texture == "plain":
        return np.ones((size, size), bool)
    if texture == "striped":
        period, theta = int(rng.integers(4, 7)), rng.uniform(0, np.pi)
        return (x * np.cos(theta) + y * np.sin(theta)) % period < period / 2
    if texture == "checkered":
        cell = int(rng.integers(3, 5))
        return (x // cell + y // cell) % 2 == 0
    if texture == "dotted":
        period = int(rng.integers(5, 7))
        dx, dy = x % period - (period - 1) / 2, y % period - (period - 1) / 2
        return dx**2 + dy**2 > (0.3 * period) ** 2
    raise ValueError(f"Unknown texture {texture!r}.")


def _grey_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Mid grey with grey noise: never equal to a palette colour, so colours stay unambiguous."""
    grey = rng.integers(100, 161) + rng.integers(-8, 9, size=(size, size))
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def _place(rng: np.random.Generator, size: int, count: int) -> list[tuple[tuple[int, int], float] | None]:
    """(centre, radius) for up to ``count`` non-overlapping objects; None where one did not fit."""
    out: list = []
    for _ in range(count):
        radius = rng.uniform(*OBJECT_SIDE) * size / 2
        spot = None
        for _ in range(200):
            centre = tuple(int(v) for v in rng.integers(int(radius) + 1, size - int(radius) - 1, size=2))
            if all(o is None or np.hypot(*np.subtract(centre, o[0])) >= radius + o[1] + GAP for o in out):
                spot = (centre, radius)
                break
        out.append(spot)
    return out


def _scatter(rng: np.random.Generator, size: int, pick) -> tuple[np.ndarray, np.ndarray]:
    """1–3 concept instances among 1–4 distractors; ``pick(rng, is_concept)`` → (kind, texture, rgb, rgb)."""
    while True:  # redraw in the rare scene too crowded for one concept instance and one distractor
        n_concept, n_distract = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        spots = _place(rng, size, n_concept + n_distract)
        if any(spots[:n_concept]) and any(spots[n_concept:]):
            break
    image, mask = _grey_background(rng, size), np.zeros((size, size), bool)
    # Concept instances are painted last: were objects ever to overlap, none would cover them.
    for i in list(range(n_concept, len(spots))) + list(range(n_concept)):
        if spots[i] is None:
            continue
        kind, texture, first, second = pick(rng, i < n_concept)
        pixels = _shape_mask(kind, spots[i][0], spots[i][1], rng.uniform(0, 2 * np.pi), size)
        image[pixels] = np.where(_pattern(texture, rng, size)[pixels][:, None], first, second)
        mask[pixels] = i < n_concept
    return image, mask


def _other(rng: np.random.Generator, options: Sequence[str], exclude: str) -> str:
    return str(rng.choice([o for o in options if o != exclude]))


def _any(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(rng.choice(list(options)))


def _picker(concept: str):
    """pick(rng, is_concept) → (kind, texture, first rgb, second rgb) for a scattered family."""
    family, word = FAMILIES[concept], concept.split()[0]

    def pick(rng: np.random.Generator, hit: bool) -> tuple:
        first = COLOURS[_any(rng, COLOURS)]
        if family == "shape":
            return (concept if hit else _other(rng, SHAPES, concept)), "plain", first, first
        if family == "colour":
            first = COLOURS[word if hit else _other(rng, list(COLOURS), word)]
            return _any(rng, SHAPES), "plain", first, first
        # Dark detail on bright colours, light detail on dark ones, so the texture always shows.
        second = (25, 25, 25) if sum(first) / 3 > 120 else (245, 245, 245)
        return _any(rng, SHAPES), (word if hit else _other(rng, ("plain",) + TEXTURES, word)), first, second

    return pick


def _camouflage(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A blob in mottled texture on the same texture, slightly shifted in brightness."""
    base = rng.integers(70, 170, size=3).astype(np.float32)
    sigma = rng.uniform(1.5, 3.0)
    shift = float(rng.choice([-1, 1]) * rng.uniform(15, 28))

    def mottled(offset: float) -> np.ndarray:
        noise = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), sigma)
        noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
        return np.clip((base + offset) * (0.7 + 0.6 * noise[..., None]), 0, 255).astype(np.uint8)

    image, blob = mottled(0.0), mottled(shift)
    radius = rng.uniform(0.2, OBJECT_SIDE[1]) * size / 2
    centre = tuple(int(v) for v in rng.integers(int(radius) + 2, size - int(radius) - 2, size=2))
    # A wobbly disc: three low harmonics of random phase keep the outline smooth and irregular.
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = 1 + sum(0.12 * np.cos(k * theta + p) for k, p in zip((2, 3, 5), rng.uniform(0, 2 * np.pi, 3)))
    outline = np.stack([np.cos(theta), np.sin(theta)], 1) * (radius / 1.15) * wobble[:, None]
    mask = _fill(np.zeros((size, size), np.uint8), outline, centre, 0.0)
    image[mask] = blob[mask]
    return image, mask


def _odd_one_out(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An n×n grid (n = 3 or 4) of identical plain objects; one differs in colour, shape or size."""
    n = int(rng.integers(3, 5))
    cell = size / n
    kind, colour, angle = _any(rng, SHAPES), _any(rng, COLOURS), rng.uniform(0, 2 * np.pi)
    radius = 0.28 * cell
    odd, way = int(rng.integers(n * n)), str(rng.choice(["colour", "shape", "size"]))
    image, mask = _grey_background(rng, size), np.zeros((size, size), bool)
    for i in range(n * n):
        this_kind, this_colour, this_radius = kind, colour, radius
        if i == odd and way == "colour":
            this_colour = _other(rng, list(COLOURS), colour)
        elif i == odd and way == "shape":
            this_kind = _other(rng, SHAPES, kind)
        elif i == odd:
            this_radius = radius * (0.6 if rng.random() < 0.5 else 1.5)  # 1.5 × 0.28 still fits its cell
        centre = (int((i % n + 0.5) * cell), int((i // n + 0.5) * cell))
        pixels = _shape_mask(this_kind, centre, this_radius, angle, size)
        image[pixels] = COLOURS[this_colour]
        mask[pixels] = i == odd
    return image, mask


def render(concept: str, rng: np.random.Generator, size: int = 128) -> ConceptImage:
    """One size×size image of ``concept`` with the exact mask of its instances."""
    family = _family(concept)
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels for shapes to stay recognisable; got {size}.")
    if family in ("shape", "colour", "texture"):
        image, mask = _scatter(rng, size, _picker(concept))
    elif family == "camouflage":
        image, mask = _camouflage(rng, size)
    else:
        image, mask = _odd_one_out(rng, size)
    return ConceptImage(image, mask, concept, family, LEVELS[family])


def generate(
    concepts: Sequence[str] | None = None, per_concept: int = 6, size: int = 128, seed: int = 0
) -> list[ConceptImage]:
    """``per_concept`` images of each concept (default: all), concept by concept.

    Each concept draws from its own stream, seeded by (seed, its index in concept_names()),
    so a concept's images do not change when other concepts are added or removed.
    """
    names = concept_names() if concepts is None else list(concepts)
    if per_concept < 1:
        raise ValueError(f"per_concept must be at least 1; got {per_concept}.")
    if not names:
        raise ValueError("Name at least one concept, or pass None for all of them.")
    for name in names:
        _family(name)  # unknown names fail before any drawing
    if len(set(names)) != len(names):
        raise ValueError(f"Each concept may be named once; got {names}.")
    known = concept_names()
    out = []
    for name in names:
        rng = np.random.default_rng([seed, known.index(name)])
        out.extend(render(name, rng, size) for _ in range(per_concept))
    return out


def write_folder(root: str, items: Sequence[ConceptImage], test_fraction: float = 0.34, seed: int = 0) -> str:
    """Writes ``items`` in the ``folder`` import layout (images/, masks/, concepts.csv); returns root.

    Masks are 0/255 PNGs (viewable; the importer reads them as plain). Within each concept about
    ``test_fraction`` of its images are tagged "test", at least one stays "train", and a concept
    with three or more images gets at least one "test".
    """
    if not items:
        raise ValueError("No items to write; pass the output of generate().")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive); got {test_fraction}.")
    images_dir, masks_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    if os.path.isdir(images_dir) and os.listdir(images_dir):
        raise ValueError(f"{images_dir} is not empty; write into a new folder so no stale image is imported.")
    for folder in (images_dir, masks_dir):
        os.makedirs(folder, exist_ok=True)
    by_concept: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_concept.setdefault(item.concept, []).append(i)
    rng = np.random.default_rng(seed)
    rows = [None] * len(items)
    for concept, indices in by_concept.items():
        n = len(indices)
        n_test = min(max(round(test_fraction * n), 1 if n >= 3 else 0), n - 1)
        test = set(rng.permutation(n)[:n_test].tolist())
        for k, i in enumerate(indices):
            name = f"{concept.replace(' ', '_')}_{k:03d}.png"
            rows[i] = (name, concept, "test" if k in test else "train", items[i].level)
            ok = cv2.imwrite(os.path.join(images_dir, name), cv2.cvtColor(items[i].image, cv2.COLOR_RGB2BGR))
            ok &= cv2.imwrite(os.path.join(masks_dir, name), items[i].mask.astype(np.uint8) * 255)
            if not ok:
                raise OSError(f"Could not write {name} under {root}; check that the folder is writable.")
    with open(os.path.join(root, "concepts.csv"), "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("name", "concept", "split", "level"), *rows])
    return root
