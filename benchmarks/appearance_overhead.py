"""What the appearance route costs on top of calling scikit-image and scikit-learn directly.

Run: ``python benchmarks/appearance_overhead.py [--repeats R]`` (set ``CONCEPTSEG_DATA_DIR``
to reuse a cache of the demo files). Prints one plain-text table.

Two paths get the same inputs and the same settings (``AppearanceConfig()``'s defaults,
read from the dataclass):

- ours: ``AppearanceRoute(config).fit(demonstrations)`` then ``.segment(image)`` per target;
- direct: what the route does, written out against the libraries:
  ``skimage.feature.multiscale_basic_features`` with the same arguments (on the channel
  mean when every demonstration's channels are equal, as the route does), the same
  balanced draw of at most ``pixels_per_class`` pixels per class and demonstration with
  ``numpy.random.default_rng(seed)``, ``sklearn.ensemble.RandomForestClassifier`` with
  the same parameters, and ``predict_proba`` per target.

No image here is larger than ``max_side``, so the route's shrinking is a no-op and the
direct path has nothing to mirror there (checked below).

Data, real and with ground truth (``conceptseg.datasets.demo_data``):

- nuclei: the 512x512 fluorescence image normalised once as a whole and cut into 16
  tiles of 128x128, as the bundled demo does (``demo.build_dataset``); the demo's three
  demonstration tiles teach, the other 13 tiles are the targets. Grayscale, so both paths
  compute grey-level features.
- quokka: the 643x960 RGB photo split into a top half (rows 0-320) as the demonstration
  and a bottom half (rows 321-642) as the target. A left/right split would leave the
  right half almost empty (the animal covers 5% of it); the top and bottom halves both
  hold head/body and background (24% and 37% animal), so the target is a fair, unseen
  image of the same concept rather than a flipped copy of pixels the forest was trained on.

Each repeat runs both paths, alternating which goes first; the table shows the median
over repeats of fit seconds, segment seconds per target and total seconds (fit plus all
targets), the ratio ours/direct (goal <= 1.1x), and each path's mean IoU against the
ground truth at ``threshold``. Given the same seed both paths compute the same forest,
so the IoUs match and the largest probability difference ("max |dp|") is only the
rounding of the route's float32 output (~3e-8). Timings on a shared machine drift by
10-20% between runs; raise ``--repeats`` for a steadier ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from conceptseg.datasets import demo_data
from conceptseg.demo import DEMO_TILES
from conceptseg.imaging import to_rgb_float, to_uint8
from conceptseg.threads import budget, forest_jobs
from conceptseg.routes.appearance import AppearanceConfig, AppearanceRoute
from conceptseg.routes.base import mask_iou
from conceptseg.types import Demonstration

GOAL = 1.1


@dataclass
class Case:
    """Demonstrations and targets (HxWx3 float32 images, bool masks) of one data set."""

    name: str
    demos: list[tuple[np.ndarray, np.ndarray]]
    targets: list[tuple[np.ndarray, np.ndarray]]


def load_cases() -> list[Case]:
    """The nuclei tiles and the quokka halves described in the module docstring."""
    files = demo_data.fetch_demo_files()

    image, _ = demo_data.nuclei(files)
    image8 = to_uint8(to_rgb_float(image))[..., 0]  # whole image normalised once, as the demo
    demos, targets = [], []
    for name, tile, labels in demo_data.nuclei_tiles(files):
        r, c = (int(p[1:]) for p in name.split("_")[1:])
        rgb = to_rgb_float(image8[r : r + tile.shape[0], c : c + tile.shape[1]])
        (demos if name in DEMO_TILES else targets).append((rgb, labels > 0))
    nuclei = Case("nuclei", demos, targets)

    photo, mask = demo_data.quokka(files)
    rgb = to_rgb_float(photo)
    half = photo.shape[0] // 2
    quokka = Case("quokka", [(rgb[:half], mask[:half])], [(rgb[half:], mask[half:])])
    return [nuclei, quokka]


# --- direct path: the libraries called by hand -------------------------------------------


def direct_features(image: np.ndarray, c: AppearanceConfig, gray: bool) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    if gray:
        image = image.mean(axis=2)  # the route's grey image, bit for bit
    return multiscale_basic_features(
        image,
        intensity=True,
        edges=True,
        texture=True,
        sigma_min=c.sigma_min,
        sigma_max=c.sigma_max,
        num_sigma=c.num_sigma,
        channel_axis=None if gray else -1,
        num_workers=budget(),
    )


def direct_fit(demos, c: AppearanceConfig, gray: bool):
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(c.seed)
    xs, ys = [], []
    for image, mask in demos:
        feats = direct_features(image, c, gray)
        flat = feats.reshape(-1, feats.shape[-1])
        labels = mask.ravel()
        for value in (True, False):
            idx = np.flatnonzero(labels == value)
            if idx.size > c.pixels_per_class:
                idx = rng.choice(idx, c.pixels_per_class, replace=False)
            xs.append(flat[idx])
            ys.append(np.full(idx.size, value))
    forest = RandomForestClassifier(
        n_estimators=c.n_estimators, max_depth=c.max_depth, n_jobs=budget() if c.n_jobs is None else c.n_jobs, random_state=c.seed
    )
    forest.fit(np.concatenate(xs), np.concatenate(ys))
    return forest


def direct_segment(forest, image: np.ndarray, c: AppearanceConfig, gray: bool) -> np.ndarray:
    feats = direct_features(image, c, gray)
    forest.n_jobs = forest_jobs(c.n_jobs, feats.shape[0] * feats.shape[1])  # the engine's choice
    proba = forest.predict_proba(feats.reshape(-1, feats.shape[-1]))
    return proba[:, list(forest.classes_).index(True)].reshape(feats.shape[:2])


# --- timing ---------------------------------------------------------------------------


def run_ours(case: Case, c: AppearanceConfig):
    """Returns (fit s, [segment s per target], [probability maps])."""
    demos = [Demonstration(image=im, mask=m, id=str(i)) for i, (im, m) in enumerate(case.demos)]
    t0 = time.perf_counter()
    route = AppearanceRoute(c)
    route.fit(demos)
    fit = time.perf_counter() - t0
    seg, probs = [], []
    for image, _ in case.targets:
        t0 = time.perf_counter()
        probs.append(route.segment(image))
        seg.append(time.perf_counter() - t0)
    return fit, seg, probs


def run_direct(case: Case, c: AppearanceConfig):
    """Returns (fit s, [segment s per target], [probability maps])."""
    # The caller of the libraries knows whether its images are grey; deciding it is not timed.
    gray = all(np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2]) for im, _ in case.demos)
    t0 = time.perf_counter()
    forest = direct_fit(case.demos, c, gray)
    fit = time.perf_counter() - t0
    seg, probs = [], []
    for image, _ in case.targets:
        t0 = time.perf_counter()
        probs.append(direct_segment(forest, image, c, gray))
        seg.append(time.perf_counter() - t0)
    return fit, seg, probs


def mean_iou(case: Case, probs, threshold: float) -> float:
    return float(np.mean([mask_iou(p > threshold, m) for p, (_, m) in zip(probs, case.targets)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per path (median reported)")
    args = parser.parse_args()

    config = AppearanceConfig()
    cases = load_cases()
    for case in cases:
        for image, _ in case.demos + case.targets:
            assert max(image.shape[:2]) <= config.max_side, "shrinking would need mirroring"

    # Imports and thread pools are warmed up outside the timings, for both paths alike.
    import skimage.feature  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    warm = Case("warm-up", cases[0].demos[:1], cases[0].targets[:1])
    run_ours(warm, config)
    run_direct(warm, config)

    runners = {"ours": run_ours, "direct": run_direct}
    rows = []
    for case in cases:
        times = {p: {"fit": [], "seg": [], "total": []} for p in runners}
        probs = {}
        for r in range(args.repeats):
            order = list(runners) if r % 2 == 0 else list(runners)[::-1]
            for path in order:
                fit, seg, probs[path] = runners[path](case, config)
                times[path]["fit"].append(fit)
                times[path]["seg"].append(sum(seg) / len(seg))
                times[path]["total"].append(fit + sum(seg))
        med = {p: {k: statistics.median(v) for k, v in t.items()} for p, t in times.items()}
        iou = {p: mean_iou(case, probs[p], config.threshold) for p in runners}
        dp = max(float(np.abs(a - b).max()) for a, b in zip(probs["ours"], probs["direct"]))
        label = f"{case.name} ({len(case.demos)} demo, {len(case.targets)} target)"
        for p in runners:
            rows.append((label, p, f"{med[p]['fit']:.3f}", f"{med[p]['seg']:.3f}", f"{med[p]['total']:.3f}", f"{iou[p]:.4f}"))
            label = ""
        ratio = {k: med["ours"][k] / med["direct"][k] for k in ("fit", "seg", "total")}
        verdict = "ok" if ratio["total"] <= GOAL else f"over {GOAL:g}x"
        rows.append(("", "ours/direct", f"{ratio['fit']:.2f}x", f"{ratio['seg']:.2f}x", f"{ratio['total']:.2f}x", f"max |dp| {dp:.1e}, {verdict}"))

    header = ("data", "path", "fit s", "segment s/target", "total s", "mean IoU")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    settings = ", ".join(f"{k}={v}" for k, v in asdict(config).items())
    print(f"appearance route vs direct skimage+sklearn; median of {args.repeats} repeats; {os.cpu_count()} CPUs")
    print(f"AppearanceConfig defaults: {settings}")
    print(line)
    print("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print(line)
    for row in rows:
        if row[0] and row is not rows[0]:
            print(line)
        print("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    print(line)


if __name__ == "__main__":
    main()
