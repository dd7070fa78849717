"""Does doubt rank the wrong predictions first? Spearman(doubt, 1 - IoU) on held-out targets, per route.

Run: ``python benchmarks/doubt.py [--seeds 5] [--demos 2] [--model DIR]``. Prints one table.

Per concept set (the 16 nuclei tiles of the demo; 16 images of each of several procedural
concepts from ``training/procedural.py``) and seed: ``--demos`` items drawn at random teach
the route, every other item is a held-out target. Each target's doubt (``conceptseg.routes.doubt``,
as the route reports it in ``segment_with_details``) is compared with its error 1 - IoU.
Columns: Spearman's rho per seed, averaged over seeds (rho is undefined, and left out, when
every target has the same doubt or the same IoU), and the pooled rho over all seeds' targets.
The appearance route runs on the CPU without weights; ``--model`` (a bundle directory)
adds the prototype route (SAM 2 bundles) and the reasoning route (bundles with a policy).
A tiny random bundle (``conceptseg tiny-bundle``) exercises those rows but measures nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _review_data import concept_sets, iou


def routes_for(model: str | None) -> dict:
    """Route factories: appearance always, the model routes when the bundle has them."""
    from conceptseg.routes.appearance import AppearanceRoute

    factories = {"appearance": AppearanceRoute}
    if model:
        from conceptseg.model.checkpoint import load_bundle_cached
        from conceptseg.routes.prototype import PrototypeRoute
        from conceptseg.routes.reasoning import ReasoningRoute

        bundle = load_bundle_cached(model)
        if type(bundle.segmenter).__name__ == "Sam2Segmenter":
            factories["prototype"] = lambda: PrototypeRoute(bundle.segmenter)
        if bundle.policy is not None:
            factories["reasoning"] = lambda: ReasoningRoute(bundle)
    return factories


def measure(make_route, items, demos: int, seed: int) -> list[tuple[float, float]]:
    """(doubt, 1 - IoU) per held-out target for one draw of demonstrations."""
    from conceptseg.types import Demonstration

    order = np.random.default_rng(seed).permutation(len(items))
    # A draw must show the concept at least once (all procedural images do; nuclei tiles too).
    route = make_route()
    route.fit([Demonstration(items[i][1], items[i][2], items[i][0]) for i in order[:demos]])
    out = []
    for i in order[demos:]:
        probability, details = route.segment_with_details(items[i][1])
        out.append((float(details["doubt"]), 1.0 - iou(probability > route.threshold, items[i][2])))
    return out


def spearman(pairs) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.array(pairs).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--demos", type=int, default=2)
    parser.add_argument("--per-concept", type=int, default=16)
    parser.add_argument("--model", help="bundle directory: adds the prototype and reasoning routes")
    args = parser.parse_args()
    start = time.perf_counter()
    sets = concept_sets(args.per_concept)
    print(f"{'set':<20}{'route':<12}{'targets':>8}{'rho/seed':>10}{'pooled':>9}{'IoU':>7}{'doubt':>7}")
    for route_name, make_route in routes_for(args.model).items():
        for set_name, items in sets.items():
            runs = [measure(make_route, items, args.demos, seed) for seed in range(args.seeds)]
            rhos = [r for r in map(spearman, runs) if r is not None]
            pooled = [p for run in runs for p in run]
            rho = spearman(pooled)
            print(f"{set_name:<20}{route_name:<12}{len(pooled):>8}"
                  f"{(np.mean(rhos) if rhos else float('nan')):>10.3f}{(rho if rho is not None else float('nan')):>9.3f}"
                  f"{1 - np.mean([e for _, e in pooled]):>7.3f}{np.mean([d for d, _ in pooled]):>7.3f}", flush=True)
    print(f"\n{args.seeds} seeds, {args.demos} demonstrations per draw, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
