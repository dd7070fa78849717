"""A simulated user in the review loop: does correcting the most doubtful targets first save work?

Run: ``python benchmarks/review_loop.py [--seeds 3] [--rounds 5] [-k 2]``. Prints one table.

Per concept set (the 16 nuclei tiles of the demo; 16 images of each of several procedural
concepts) and seed: one demonstration (drawn by the seed) teaches the appearance route,
every other image is a target. Each round the route is fitted on the demonstrations and
segments the targets not yet corrected; then the "user" corrects ``k`` of them (their true
masks become demonstrations), chosen either by doubt (highest first, ``conceptseg.routes.doubt``)
or at random. Two numbers per round, mean over seeds:

- ``left``: mean IoU on the targets not yet corrected (the issue's measure). It favours
  doubt-ordered correction twice: the route improves, and the hard targets leave the pool.
- ``all``: mean IoU over every target, a corrected one counting as 1 (its mask is now
  true): what the user has after the round, comparable between the two orders.

The last lines say, per set, how many corrections the doubt order needed to reach the
random order's final ``left`` and ``all`` (or that it did not).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _review_data import concept_sets, iou


def simulate(items, order: str, rounds: int, k: int, seed: int) -> list[tuple[float, float]]:
    """(left, all) mean IoU after each round's segmentation, before that round's corrections."""
    from conceptseg.routes.appearance import AppearanceRoute
    from conceptseg.types import Demonstration

    rng = np.random.default_rng(seed)
    perm = list(rng.permutation(len(items)))
    demos, targets = perm[:1], perm[1:]
    corrected: set[int] = set()
    pick = np.random.default_rng(seed + 1000)
    out = []
    for _ in range(rounds + 1):
        route = AppearanceRoute()
        route.fit([Demonstration(items[i][1], items[i][2], items[i][0]) for i in demos])
        left = [i for i in targets if i not in corrected]
        scores, doubts = {}, {}
        for i in left:
            probability, details = route.segment_with_details(items[i][1])
            scores[i] = iou(probability > route.threshold, items[i][2])
            doubts[i] = details["doubt"]
        every = [scores.get(i, 1.0) for i in targets]
        out.append((float(np.mean(list(scores.values()))) if scores else float("nan"), float(np.mean(every))))
        if order == "doubt":
            chosen = sorted(left, key=lambda i: -doubts[i])[:k]
        else:
            chosen = list(pick.choice(left, size=min(k, len(left)), replace=False))
        corrected.update(chosen)
        demos = demos + chosen
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of corrections after the first run")
    parser.add_argument("-k", type=int, default=2, help="targets corrected per round")
    parser.add_argument("--per-concept", type=int, default=16)
    parser.add_argument("--sets", help="comma-separated set names (default: nuclei and every procedural concept)")
    args = parser.parse_args()
    start = time.perf_counter()
    sets = concept_sets(args.per_concept)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    print(f"{'set':<18}{'round':>6}{'fixed':>6}{'left doubt':>11}{'left random':>12}{'all doubt':>10}{'all random':>11}")
    reach_lines = []
    for name, items in sets.items():
        curves = {o: np.mean([simulate(items, o, args.rounds, args.k, s) for s in range(args.seeds)], axis=0)
                  for o in ("doubt", "random")}
        for r in range(args.rounds + 1):
            d, rnd = curves["doubt"][r], curves["random"][r]
            print(f"{name:<18}{r:>6}{r * args.k:>6}{d[0]:>11.3f}{rnd[0]:>12.3f}{d[1]:>10.3f}{rnd[1]:>11.3f}", flush=True)
        for col, label in ((0, "left"), (1, "all")):
            goal = curves["random"][-1][col]
            hit = next((r for r in range(args.rounds + 1) if curves["doubt"][r][col] >= goal - 1e-9), None)
            reach_lines.append(
                f"{name}: {label} — random reaches {goal:.3f} with {args.rounds * args.k} corrections; doubt "
                + (f"with {hit * args.k}" if hit is not None else "does not reach it"))
        wins = [bool(curves["doubt"][r][0] > curves["random"][r][0]) for r in range(1, args.rounds + 1)]
        reach_lines.append(f"{name}: doubt beats random on 'left' in {sum(wins)}/{len(wins)} rounds")
    print()
    print("\n".join(reach_lines))
    print(f"\n{args.seeds} seeds, k={args.k}, appearance route, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
