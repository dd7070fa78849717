"""Which weight-free route learns which concept: appearance, object, and the router's choice.

Run: ``python benchmarks/concepts.py [--targets T] [--seed S]`` (set ``CONCEPTSEG_DATA_DIR``
to reuse a cache of the demo files). Prints two plain-text tables.

Concepts, each taught by 3 demonstrations and scored on held-out targets:

- every procedural concept of ``conceptseg.training.procedural`` (128x128 images; the
  first 3 of a concept's images teach, the next ``--targets`` are the targets);
- "nuclei > median": on the stardist nuclei image (``conceptseg.datasets.demo_data``), normalised
  once as a whole and cut into 16 tiles of 128x128 as the bundled demo does, the concept
  is the nuclei larger than the median nucleus of the whole image. A nucleus cut by a tile
  border counts by its visible part (its pixels inside the tile). The demo's three
  demonstration tiles teach, the other 13 are the targets;
- "nuclei > median, shifted": the same concept on another cut of the image, 9 tiles
  starting 64 px in; the three on the diagonal teach, the other 6 are the targets (a check
  that the first cut's number is not an accident of where the tiles fall).

Table 1, per concept: the mean target IoU of the appearance route and the object route,
each forced, and of ``auto`` (``Router()`` with its default routes and threshold, choosing
by leave-one-out verification without being told), the route auto took, and both routes'
verification scores. "before" columns repeat the object route and auto with the object
route's candidates from the colour rule alone (``ObjectConfig(sources=("proposal",))``, the
route before issue 25); "candidates" is the source the object route chose. Then the means
per family and the issue's goals: auto >= 0.8 on the shape concepts and >= 0.65 on the
nuclei size concept where appearance stays below 0.5, and auto within 0.02 of appearance
wherever appearance reaches 0.5.

Table 2 measures the object route's candidates: per family, the best IoU any object
classifier could reach with a source's objects (every object that lies mostly inside the
true mask taken: the oracle), and the seconds per image. The concept-free proposals
(``routes/objects.py``) are scored on demonstrations and targets; the pixel forest's
objects (``routes/pixel_objects.py``, fitted on the demonstrations) on the targets alone.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from conceptseg.datasets import demo_data, fixtures
from conceptseg.demo import DEMO_TILES
from conceptseg.imaging import to_rgb_float
from conceptseg.routes.router import Router
from conceptseg.routes import AppearanceRoute, ObjectConfig, ObjectRoute
from conceptseg.routes.base import mask_iou
from conceptseg.routes.objects import PROPOSALS, CandidateConfig, object_labels, propose
from conceptseg.routes.pixel_objects import PixelConfig, PixelObjects, pixel_target
from conceptseg.training import procedural
from conceptseg.types import Demonstration, Target

NUCLEI = "nuclei > median"
SHIFTED = "nuclei > median, shifted"
SHIFTED_DEMOS = ("nuclei_r064_c064", "nuclei_r192_c192", "nuclei_r320_c320")
DEMOS = 3


def colour_rule_only() -> ObjectRoute:
    """The object route as it was before issue 25: candidates from the colour rule alone."""
    return ObjectRoute(ObjectConfig(sources=("proposal",)))


def procedural_cases(targets: int, seed: int) -> list[tuple[str, str, list, list]]:
    """(concept, family, demos, targets) per procedural concept; images as float RGB."""
    out = []
    for concept in procedural.concept_names():
        items = procedural.generate([concept], per_concept=DEMOS + targets, seed=seed)
        pairs = [(to_rgb_float(it.image), it.mask) for it in items]
        out.append((concept, items[0].family, pairs[:DEMOS], pairs[DEMOS:]))
    return out


def nuclei_case(offset: int = 0) -> tuple[str, str, list, list]:
    """The nuclei size concept on 128 px tiles starting ``offset`` px in (see the module docstring)."""
    teach = DEMO_TILES if offset == 0 else SHIFTED_DEMOS
    demos, targets = [], []
    for name, rgb, mask in fixtures.large_nuclei_tiles(demo_data.fetch_demo_files(), offset):
        (demos if name in teach else targets).append((rgb, mask))
    return (NUCLEI if offset == 0 else SHIFTED), "size", demos, targets


def run_concept(case) -> dict:
    """Auto through the router, with the object route as it is and as it was (colour rule only);
    each forced route reuses the router's verification and fit where it made them (same
    seeds, same result) and computes them itself otherwise."""
    concept, family, demo_pairs, target_pairs = case
    demos = [Demonstration(im, m, f"d{i}") for i, (im, m) in enumerate(demo_pairs)]
    targets = [(Target(im, f"t{i}"), m) for i, (im, m) in enumerate(target_pairs)]
    t0 = time.perf_counter()
    row = dict(concept=concept, family=family, targets=len(targets))
    for suffix, object_route in (("", ObjectRoute()), ("_before", colour_rule_only())):
        router = Router([AppearanceRoute(), object_route])
        choice = router.choose(demos)
        results = list(router.segment(choice, [t for t, _ in targets]))
        row[f"auto{suffix}"] = float(np.mean([mask_iou(r.mask, m) for r, (_, m) in zip(results, targets)]))
        row[f"chosen{suffix}"] = choice.route.name
        verified = {v.route: v.score for v in choice.verifications}
        for route in (router.routes if suffix == "" else [object_route]):
            key = f"{route.name}{suffix}"
            if route.name not in verified:
                verified[route.name] = float(np.mean(list(route.verify(demos).values())))
            if route is not choice.route:
                route.fit(demos)
            row[key] = float(np.mean([mask_iou(route.segment(t.image) > route.threshold, m) for t, m in targets]))
            row[f"{key}_v"] = verified[route.name]
            if isinstance(route, ObjectRoute) and suffix == "":
                row["rule"], row["source"] = route.rule(), route.source
    row["seconds"] = time.perf_counter() - t0
    return row


def proposal_table(cases) -> list[str]:
    """Oracle IoU per candidate source and family, and seconds per image."""
    families = _families(cases)
    lines = ["| candidates | " + " | ".join(families) + " | s/image |", "|---" * (len(families) + 2) + "|"]
    for proposal in PROPOSALS:
        config = replace(CandidateConfig(), proposal=proposal)
        per_family: dict[str, list[float]] = {}
        t0, n = time.perf_counter(), 0
        for _, family, demos, targets in cases:
            for image, mask in demos + targets:
                per_family.setdefault(family, []).append(_oracle(propose(image, config), mask))
                n += 1
        lines.append(_proposal_line(proposal, per_family, families, (time.perf_counter() - t0) / n))
    for refined in (False, True):
        per_family, seconds, n = {}, 0.0, 0
        for _, family, demos, targets in cases:
            pixels = PixelObjects(PixelConfig(), CandidateConfig())
            pixels.prepare([im for im, _ in demos])
            pixels.fit([(pixels.features(im), pixel_target(im, m, CandidateConfig())) for im, m in demos])
            pixels.learn_boundary([im for im, _ in demos], [m for _, m in demos])  # as the route does
            t0 = time.perf_counter()
            for image, mask in targets:
                labels = pixels.objects(image, pixels.features(image))
                labels = pixels.refine(labels, image) if refined else labels
                per_family.setdefault(family, []).append(_oracle(labels, mask))
                n += 1
            seconds += time.perf_counter() - t0
        name = "refined (targets)" if refined else "pixels (targets)"
        lines.append(_proposal_line(name, per_family, families, seconds / n))
    return lines


def _oracle(labels: np.ndarray, mask: np.ndarray) -> float:
    positive, _ = object_labels(labels, mask)
    return mask_iou(np.isin(labels, np.flatnonzero(positive) + 1), mask)


def _proposal_line(name: str, per_family: dict, families: list[str], seconds: float) -> str:
    cells = [f"{np.mean(per_family[f]):.3f}" for f in families]
    return f"| {name} | " + " | ".join(cells) + f" | {seconds:.3f} |"


def _families(cases) -> list[str]:
    return list(dict.fromkeys(c[1] for c in cases))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=6, help="targets per procedural concept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the procedural images")
    parser.add_argument("--rules", action="store_true", help="also print the object route's rule per concept")
    args = parser.parse_args()

    cases = procedural_cases(args.targets, args.seed) + [nuclei_case(), nuclei_case(offset=64)]
    start = time.perf_counter()
    rows = [run_concept(case) for case in cases]

    print(f"Table 1: mean target IoU per route, {DEMOS} demonstrations "
          f"({args.targets} targets per procedural concept, 13 nuclei tiles, 6 shifted)\n")
    print("| concept | family | appearance | object before | object | candidates | auto before | auto "
          "| auto took | verif. app. | verif. obj. before | verif. obj. | s |")
    print("|---" * 13 + "|")
    for r in rows:
        print(f"| {r['concept']} | {r['family']} | {r['appearance']:.3f} | {r['object_before']:.3f} "
              f"| {r['object']:.3f} | {r['source']} | {r['auto_before']:.3f} | {r['auto']:.3f} "
              f"| {r['chosen']} | {r['appearance_v']:.3f} | {r['object_before_v']:.3f} | {r['object_v']:.3f} "
              f"| {r['seconds']:.1f} |")
    keys = ("appearance", "object_before", "object", "auto_before", "auto")
    for family in _families(cases):
        sel = [r for r in rows if r["family"] == family]
        means = [np.mean([r[k] for r in sel]) for k in keys]
        print(f"| mean {family} ({len(sel)}) | | {means[0]:.3f} | {means[1]:.3f} | {means[2]:.3f} | | "
              f"{means[3]:.3f} | {means[4]:.3f} | | | | | |")

    def mean(key, family):
        return float(np.mean([r[key] for r in rows if r["family"] == family]))

    nuclei = next(r for r in rows if r["concept"] == NUCLEI)
    kept = [r for r in rows if r["appearance"] >= 0.5]
    worst = max((r["appearance"] - r["auto"] for r in kept), default=0.0)
    print("\nGoals (before → after):")
    print(f"- shape concepts: auto {mean('auto_before', 'shape'):.3f} → {mean('auto', 'shape'):.3f} (goal >= 0.8), "
          f"appearance {mean('appearance', 'shape'):.3f} (< 0.5)")
    print(f"- nuclei size: auto {nuclei['auto_before']:.3f} → {nuclei['auto']:.3f} (goal >= 0.65), "
          f"appearance {nuclei['appearance']:.3f} (< 0.5)")
    print(f"- camouflage: auto {mean('auto_before', 'camouflage'):.3f} → {mean('auto', 'camouflage'):.3f}, "
          f"object {mean('object_before', 'camouflage'):.3f} → {mean('object', 'camouflage'):.3f} (goal: above before)")
    print(f"- where appearance reaches 0.5 ({len(kept)} concepts): largest loss of auto vs appearance {worst:.3f} (goal <= 0.02)")
    print(f"\nTotal {time.perf_counter() - start:.0f} s")
    if args.rules:
        print("\nObject route rules:")
        for r in rows:
            print(f"- {r['concept']}: {r['rule']}")

    print("\nTable 2: object route candidates, oracle IoU (every object mostly inside the true mask taken)\n")
    print("\n".join(proposal_table(cases)))


if __name__ == "__main__":
    main()
