"""What the shortcut routes cost per image against the bare SAM 2 predictor (P1), and what K
concepts over the same images cost against one (P2).

Run: ``python benchmarks/shortcut_speed.py [--images 8] [--p2-images 4] [--repeats 1]``
(set ``CONCEPTSEG_DATA_DIR`` to reuse a cache of the demo files). Prints one table.

Model: SAM 2.1 hiera-t from sam2's packaged config at its own input size (1024), random
weights (seeded): timings do not depend on the weights. One model serves every path.

Data: the nuclei demo image normalised as a whole and cut into 16 tiles of 128x128, as the
bundled demo does, each upscaled to ``--size`` (512) square (bilinear image, nearest mask).

P1, per-image time on the same ``--images`` (8) tiles, the three paths interleaved image by
image (which goes first rotates) so that a busy machine slows all of them alike:

- bare: ``SAM2ImagePredictor(model).set_image(uint8)`` + ``predict(box=<the mask's box>,
  multimask_output=False)``, the cheapest complete SAM 2 call;
- prototype: ``PrototypeRoute(segmenter).segment(float image)`` with ``PrototypeConfig()``'s
  defaults, after ``fit`` on three other tiles; every target is new to the segmenter's cache,
  so each pays one image encoding (fit time is shown apart, it is paid once per concept);
- appearance: ``AppearanceRoute().segment(float image)`` after ``fit`` on the same tiles.

Goal: prototype / bare <= 1.15x.

Both wall seconds and this process's CPU seconds (all its threads, ``time.process_time``)
are shown: on a machine shared with other jobs the wall time swings by 2x or more between
runs, while the CPU time counts only the work done.

P2, the prototype route for K concepts over the same ``--p2-images`` (N) tiles: K
demonstration sets of two tiles drawn from those N (in FiftyOne the demonstrations are
samples of the view being segmented), every route fitted, then each image segmented by every
concept in turn, starting from an empty cache (``cache_size`` >= N). Each image is encoded
once however many concepts read it; each extra concept adds one prompt-encoder/mask-decoder
pass and a similarity map per image. Shown: K = 1 and K = 4 totals (fit + segment), their
ratio (goal <= 1.6x; without the cache it would be ~Kx), and the image encodings each run did
(the segmenter's cache misses).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

GOAL_P1 = 1.15
GOAL_P2 = 1.6
P1_DEMOS = (8, 9, 10)  # tiles that teach the concept in P1, never targets there


def load_tiles(size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The 16 nuclei tiles as (name, HxWx3 float32 image, HxW bool mask) at size x size."""
    import cv2

    from conceptseg.datasets import demo_data
    from conceptseg.imaging import to_rgb_float, to_uint8

    files = demo_data.fetch_demo_files()
    image, _ = demo_data.nuclei(files)
    image8 = to_uint8(to_rgb_float(image))
    out = []
    for name, tile, labels in demo_data.nuclei_tiles(files):
        r, c = (int(p[1:]) for p in name.split("_")[1:])
        rgb = image8[r : r + tile.shape[0], c : c + tile.shape[1]]
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize((labels > 0).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        out.append((name, to_rgb_float(rgb), mask.astype(bool)))
    return out


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads) of fn(*args)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def p1(seg, predictor, tiles, n_images: int, repeats: int) -> dict:
    """Per-image (wall, CPU) seconds of bare / prototype / appearance, and the routes' fit seconds."""
    from conceptseg.imaging import to_uint8
    from conceptseg.routes.appearance import AppearanceRoute
    from conceptseg.routes.prototype import PrototypeRoute
    from conceptseg.types import Demonstration

    demos = [Demonstration(tiles[i][1], tiles[i][2], tiles[i][0]) for i in P1_DEMOS]
    targets = [t for i, t in enumerate(tiles) if i not in P1_DEMOS][:n_images]
    proto, appearance = PrototypeRoute(seg), AppearanceRoute()
    fit = {"prototype": timed(proto.fit, demos), "appearance": timed(appearance.fit, demos)}

    def bare(image8: np.ndarray, box: np.ndarray) -> None:
        predictor.set_image(image8)
        predictor.predict(box=box, multimask_output=False)

    times = {"bare": [], "prototype": [], "appearance": []}
    for r in range(repeats):
        seg.clear_cache()  # every target is new to the route (the prototypes are already built)
        for i, (_, image, mask) in enumerate(targets):
            runs = {
                "bare": (bare, to_uint8(image), box_of(mask)),
                "prototype": (proto.segment, image),
                "appearance": (appearance.segment, image),
            }
            names = list(runs)
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                fn, *args = runs[name]
                times[name].append(timed(fn, *args))
    per_image = {k: tuple(statistics.median(t[j] for t in v) for j in (0, 1)) for k, v in times.items()}
    return {"per_image": per_image, "fit": fit, "n": len(targets)}


def p2(seg, tiles, n_images: int, k: int) -> dict:
    """Total (wall, CPU) seconds (fit + segment) and image encodings for k concepts over n images."""
    from conceptseg.routes.prototype import PrototypeRoute
    from conceptseg.types import Demonstration

    images = tiles[:n_images]
    concepts = [(c % n_images, (c + 1) % n_images) for c in range(k)]

    def run() -> None:
        routes = []
        for pair in concepts:
            route = PrototypeRoute(seg)
            route.fit([Demonstration(images[i][1], images[i][2], images[i][0]) for i in pair])
            routes.append(route)
        for _, image, _ in images:
            for route in routes:
                route.segment(image)

    seg.clear_cache()
    misses = seg.cache_info()["misses"]
    seconds = timed(run)
    return {"seconds": seconds, "encodings": seg.cache_info()["misses"] - misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="P1 target tiles (at most 13)")
    parser.add_argument("--p2-images", type=int, default=4, help="P2 tiles shared by the K concepts")
    parser.add_argument("--size", type=int, default=512, help="tiles are upscaled to size x size")
    parser.add_argument("--repeats", type=int, default=1, help="P1 passes over the images (median)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from conceptseg.imaging import to_uint8
    from conceptseg.segmenters.sam2 import Sam2Segmenter, Sam2SegmenterConfig

    warnings.filterwarnings("ignore", ".*torch.jit.script.*", FutureWarning)
    tiles = load_tiles(args.size)
    torch.manual_seed(0)
    config = Sam2SegmenterConfig(device=args.device, cache_size=max(16, args.p2_images + 1))
    seg = Sam2Segmenter.from_config(config)
    predictor = SAM2ImagePredictor(seg.model)  # the same weights, SAM 2's own predictor

    # Kernels and thread pools are warmed up outside the timings, for every path alike.
    warm8 = to_uint8(tiles[15][1])
    predictor.set_image(warm8)
    predictor.predict(box=box_of(tiles[15][2]), multimask_output=False)
    seg.embed(warm8, "warm-up")
    seg.predict("warm-up", box=box_of(tiles[15][2]))

    t_start = time.perf_counter()
    r1 = p1(seg, predictor, tiles, args.images, args.repeats)
    r2 = {k: p2(seg, tiles, args.p2_images, k) for k in (1, 4)}
    elapsed = time.perf_counter() - t_start

    def cells(t: tuple[float, float], base: tuple[float, float]) -> tuple[str, ...]:
        return f"{t[0]:.3f}", f"{t[1]:.3f}", f"{t[0] / base[0]:.2f}x", f"{t[1] / base[1]:.2f}x"

    def verdict(t: tuple[float, float], base: tuple[float, float], goal: float) -> str:
        ratios = (("wall", t[0] / base[0]), ("CPU", t[1] / base[1]))
        return f"goal <= {goal:g}x: " + ", ".join(f"{k} {'ok' if r <= goal else 'over'}" for k, r in ratios)

    bare = r1["per_image"]["bare"]
    rows = [("P1", "bare SAM 2 predictor (set_image + predict box)", *cells(bare, bare), "")]
    for name in ("prototype", "appearance"):
        t = r1["per_image"][name]
        note = f"fit {r1['fit'][name][0]:.2f} s, once per concept"
        if name == "prototype":
            note += f"; {verdict(t, bare, GOAL_P1)}"
        rows.append(("", f"{name} route segment", *cells(t, bare), note))
    n = args.p2_images
    k1, k4 = r2[1]["seconds"], r2[4]["seconds"]
    rows.append(("P2", f"prototype, K=1 concept x {n} images", *cells(k1, k1),
                 f"{r2[1]['encodings']} image encodings"))
    rows.append(("", f"prototype, K=4 concepts x {n} images", *cells(k4, k1),
                 f"{r2[4]['encodings']} image encodings; {verdict(k4, k1, GOAL_P2)} (no cache: ~4x)"))

    device = seg.device
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    print(f"shortcut speed: SAM 2.1 hiera-t at {seg.model.image_size} px, random weights, on {where}")
    print(f"P1: seconds per image, median over {r1['n']} nuclei tiles at {args.size} px, "
          f"{args.repeats} pass(es); P2: total seconds (fit + segment); {elapsed:.0f} s in all")
    print("CPU s: this process's CPU time, all threads (steadier than wall time on a shared machine)")
    print_table(("", "path", "wall s", "CPU s", "wall ratio", "CPU ratio", "notes"), rows)


def print_table(header: tuple, rows: list[tuple]) -> None:
    """Plain text, numbers right-aligned, a rule before each section."""
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(row) -> str:
        return "  ".join(str(v).rjust(w) if 2 <= i <= 5 else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(row, widths))).rstrip()

    print(line)
    print(fmt(header))
    for row in rows:
        if row[0]:
            print(line)
        print(fmt(row))
    print(line)


if __name__ == "__main__":
    main()
