"""Does doubt rank the wrong predictions first? Spearman(doubt, 1 - IoU) on held-out targets, per route.

Run: ``python benchmarks/doubt.py [--seeds 5] [--demos 2] [--model DIR]``. Prints one table.

Per concept set (the 16 nuclei tiles of the demo; 16 images of each of several procedural
concepts from ``training/procedural.py``) and seed: ``--demos`` items drawn at random teach
the route, every other item is a held-out target. Each target's doubt (``conceptseg.routes.doubt``,
as the route reports it in ``segment_with_details``) is compared with its error 1 - IoU.
Columns: Spearman's rho per seed, averaged over seeds (rho is undefined, and left out, when
every target has the same doubt or the same IoU), the pooled rho over all seeds' targets, and
the pooled AUROC of doubt for the wrong masks (IoU < 0.5): the chance that a wrong mask is
doubted more than a right one (0.5 = no better than chance; undefined without both kinds).
The appearance route runs on the CPU without weights; ``--model`` (a bundle directory) adds
the routes ``make_router`` offers for that bundle, among prototype (SAM 2 bundles),
exemplar (where such a route exists), reasoning-fast and reasoning (bundles with a policy).
A tiny random bundle (``conceptseg tiny-bundle``) exercises those rows but measures nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _review_data import concept_sets, iou


MODEL_ROUTES = ("prototype", "exemplar", "reasoning-fast", "reasoning")  # the model routes, in row order
WRONG = 0.5  # a mask with IoU below this is wrong (the AUROC column)


def routes_for(model: str | None) -> dict:
    """Route factories: appearance always, each model route that ``make_router`` builds for the bundle."""
    from conceptseg.errors import ConceptSegError
    from conceptseg.routes.appearance import AppearanceRoute
    from conceptseg.routes.router import make_router

    factories = {"appearance": AppearanceRoute}
    if model:
        from conceptseg.model.checkpoint import load_bundle_cached

        bundle = load_bundle_cached(model)
        for name in MODEL_ROUTES:
            try:  # a route this bundle (or this version) lacks is refused by name: its row is left out
                make_router(name, bundle=bundle)
            except ConceptSegError as e:
                print(f"({name}: no row; {str(e).split(':')[0].split(';')[0]})")
                continue
            factories[name] = lambda name=name: make_router(name, bundle=bundle).routes[0]
    return factories


def measure(make_route, items, demos: int, seed: int) -> list[tuple[float, float]] | None:
    """(doubt, 1 - IoU) per held-out target for one draw of demonstrations; None when the route
    cannot learn from the draw (reasoning-fast: the policy wrote no parseable rule)."""
    from conceptseg.errors import ConceptSegError
    from conceptseg.types import Demonstration

    order = np.random.default_rng(seed).permutation(len(items))
    # A draw must show the concept at least once (all procedural images do; nuclei tiles too).
    route = make_route()
    try:
        route.fit([Demonstration(items[i][1], items[i][2], items[i][0]) for i in order[:demos]])
    except ConceptSegError:
        return None
    out = []
    for i in order[demos:]:
        probability, details = route.segment_with_details(items[i][1])
        out.append((float(details["doubt"]), 1.0 - iou(probability > route.threshold, items[i][2])))
    return out


def spearman(pairs) -> float | None:
    from scipy.stats import spearmanr

    if len(pairs) < 2:
        return None
    a, b = np.array(pairs).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def auroc(pairs) -> float | None:
    """P(doubt of a wrong mask > doubt of a right one), ties counting half; None without both kinds."""
    from scipy.stats import rankdata

    if not pairs:
        return None
    doubt, error = np.array(pairs).T
    wrong = error > 1.0 - WRONG
    if wrong.all() or not wrong.any():
        return None
    ranks = rankdata(doubt)  # Mann-Whitney: the wrong masks' rank sum beyond its minimum
    n, m = int(wrong.sum()), int((~wrong).sum())
    return float((ranks[wrong].sum() - n * (n + 1) / 2) / (n * m))


def _cell(value: float | None, width: int) -> str:
    return f"{(float('nan') if value is None else value):>{width}.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--demos", type=int, default=2)
    parser.add_argument("--per-concept", type=int, default=16)
    parser.add_argument("--model", help="bundle directory: adds its prototype, exemplar and reasoning routes")
    args = parser.parse_args()
    start = time.perf_counter()
    sets = concept_sets(args.per_concept)
    factories = routes_for(args.model)
    print(f"{'set':<20}{'route':<16}{'targets':>8}{'rho/seed':>10}{'pooled':>9}{'AUROC':>7}{'IoU':>7}{'doubt':>7}")
    for route_name, make_route in factories.items():
        for set_name, items in sets.items():
            fitted = [measure(make_route, items, args.demos, seed) for seed in range(args.seeds)]
            runs = [run for run in fitted if run is not None]
            if len(runs) < len(fitted):
                print(f"({route_name} on {set_name}: {len(fitted) - len(runs)} of {len(fitted)} draws not learnt)")
            rhos = [r for r in map(spearman, runs) if r is not None]
            pooled = [p for run in runs for p in run]
            print(f"{set_name:<20}{route_name:<16}{len(pooled):>8}{_cell(np.mean(rhos) if rhos else None, 10)}"
                  f"{_cell(spearman(pooled), 9)}{_cell(auroc(pooled), 7)}"
                  f"{_cell(1 - np.mean([e for _, e in pooled]) if pooled else None, 7)}"
                  f"{_cell(np.mean([d for d, _ in pooled]) if pooled else None, 7)}", flush=True)
    print(f"\n{args.seeds} seeds, {args.demos} demonstrations per draw, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
