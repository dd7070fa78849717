"""P3: per-target time and peak memory of import + benchmark for 50 against 500 targets.

Run: ``python benchmarks/scale.py [--sizes 50 500] [--repeats 2]``. Prints one plain-text
table: medians over ``repeats`` runs per size, the sizes alternating.

Data: the bundled nuclei image (512², real instance masks), normalised once; targets are
128² crops at a 16-px stride under the 8 flips/rotations of the square (up to 6,728
distinct crops), written as PNGs into a temporary ConceptSeg-Benchmark layout
(``all_meta.json``) with the demo's three tiles as the train split. Each size runs in a
fresh Python process (so peak memory is its own) that imports the layout
(``conceptseg.datasets.import_dataset``) and runs ``protocol.run_benchmark`` with the
appearance route: one fit for the concept, then every target segmented, written as a
mask PNG, scored at 600² and saved in batches.

Columns:
- import ms/target: import wall time / targets;
- fit s: the one-off verification + fit of the concept (router.choose);
- ms/target: benchmark wall time after the fit, from the first target to the last,
  / (targets − 1): the per-target cost that must stay flat (goal: ratio ≤ 1.2);
- CPU ms/target: the same in process CPU time (all threads): unlike wall time it does
  not move with other processes' load on a shared machine;
- first/last 49: wall time per target over the first and the last 49 targets of a run
  (growth within one run shows here whatever the load does between runs);
- total ms/target: whole benchmark wall time / targets (the fit amortised);
- peak RSS MiB: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the process at the end
  (Python, numpy, scikit-learn; the MongoDB server is another process, not counted);
- bench ΔRSS MiB: growth of that peak during the benchmark call (after the import): flat
  memory means the same delta for 50 and 500 targets.

FiftyOne's database is a mongod the script starts for itself (conceptseg.testing.db; the
children share it), never the user's; its media live in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from conceptseg.testing.db import private_database_for_script

# Before fiftyone is imported; a child finds its parent's server in the environment.
private_database_for_script("conceptseg-scale-db-")

GOAL = 1.2
WINDOW = 49  # targets compared at the start and the end of a run


def _crops(image: np.ndarray, labels: np.ndarray, count: int, tile: int = 128, stride: int = 16):
    """Yields ``count`` (image, mask) crops: positions first, then the 8 symmetries of the square."""
    positions = [(r, c) for r in range(0, image.shape[0] - tile + 1, stride)
                 for c in range(0, image.shape[1] - tile + 1, stride)]
    made = 0
    for k in range(8):
        for r, c in positions:
            if made == count:
                return
            crop, mask = image[r : r + tile, c : c + tile], labels[r : r + tile, c : c + tile] > 0
            crop, mask = np.rot90(crop, k % 4), np.rot90(mask, k % 4)
            if k >= 4:
                crop, mask = crop[:, ::-1], mask[:, ::-1]
            made += 1
            yield np.ascontiguousarray(crop), np.ascontiguousarray(mask)


def write_layout(root: str, targets: int) -> str:
    """A ConceptSeg-Benchmark layout: 3 train tiles (the demo's) and ``targets`` test crops."""
    import cv2

    from conceptseg.datasets import demo_data
    from conceptseg.datasets.fixtures import TRAIN_TILES, nuclei_tiles
    from conceptseg.imaging import to_rgb_float, to_uint8

    files = demo_data.fetch_demo_files()
    item = lambda name: dict(img_path=[f"img/{name}.png"], mask_path=f"mask/{name}.png",
                             cls_name="isic2018_nucleus", dataset_name="isic2018")
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "mask"), exist_ok=True)
    meta = {"train": {"isic2018_nucleus": []}, "test": {"isic2018_nucleus": []}}
    tiles = nuclei_tiles(files)
    for name in TRAIN_TILES:
        cv2.imwrite(os.path.join(root, "img", name + ".png"), tiles[name][0])
        cv2.imwrite(os.path.join(root, "mask", name + ".png"), (tiles[name][1] > 0).astype(np.uint8) * 255)
        meta["train"]["isic2018_nucleus"].append(item(name))
    image, labels = demo_data.nuclei(files)
    image8 = to_uint8(to_rgb_float(image))[..., 0]
    for i, (crop, mask) in enumerate(_crops(image8, labels, targets)):
        name = f"target_{i:05d}"
        cv2.imwrite(os.path.join(root, "img", name + ".png"), crop)
        cv2.imwrite(os.path.join(root, "mask", name + ".png"), mask.astype(np.uint8) * 255)
        meta["test"]["isic2018_nucleus"].append(item(name))
    with open(os.path.join(root, "all_meta.json"), "w") as f:
        json.dump(meta, f)
    return root


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(targets: int, root: str) -> dict:
    """Runs in a fresh process: import, then benchmark; returns the measurements."""
    import fiftyone as fo

    from conceptseg.datasets import import_dataset
    from conceptseg.runs.protocol import run_benchmark

    layout = write_layout(os.path.join(root, "layout"), targets)
    name = f"conceptseg-scale-{targets}-{os.getpid()}"
    start = time.perf_counter()
    import_dataset("conceptseg-benchmark", layout, name, overwrite=True, media_dir=os.path.join(root, "media"))
    import_s = time.perf_counter() - start
    dataset = fo.load_dataset(name)
    marks: list[float] = []
    cpu: list[float] = []
    rss_before = _rss_mib()
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        marks.append(time.perf_counter())
        cpu.append(time.process_time())

    try:
        results = run_benchmark(dataset, route="appearance", resume=False, progress=progress)
    finally:
        fo.delete_dataset(name)
    total_s, rss = time.perf_counter() - start, _rss_mib()
    steps = np.diff(marks)
    per_target_s = float(steps.mean())
    return dict(
        targets=targets, import_s=import_s, total_s=total_s, per_target_s=per_target_s,
        fit_s=marks[0] - start - per_target_s,  # the first mark follows the fit and one target
        first_s=float(steps[:WINDOW].mean()), last_s=float(steps[-WINDOW:].mean()),
        cpu_s=float(np.diff(cpu).mean()),
        rss=rss, rss_delta=rss - rss_before, iou=results["levels"]["CD"]["iou"],
    )


def _run(size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="conceptseg-scale-") as root:
        env = dict(os.environ, FIFTYONE_DEFAULT_DATASET_DIR=os.path.join(root, "fo"))
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--root", root],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--repeats", type=int, default=2, help="runs per size, alternating sizes; medians shown")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.root)))
        return
    runs: dict[int, list[dict]] = {size: [] for size in args.sizes}
    for _ in range(args.repeats):  # alternating, so drifting machine load hits every size alike
        for size in args.sizes:
            runs[size].append(_run(size))
    rows = [{k: float(np.median([r[k] for r in runs[size]])) for k in runs[size][0]} for size in args.sizes]
    print(f"{'targets':>8} {'import ms/t':>12} {'fit s':>7} {'ms/target':>10} {'CPU ms/t':>9} {'first/last 49':>14} "
          f"{'total ms/t':>11} {'peak RSS MiB':>13} {'bench ΔRSS MiB':>15} {'mean IoU':>9}")
    for r in rows:
        window = f"{1000 * r['first_s']:.0f}/{1000 * r['last_s']:.0f}"
        print(f"{r['targets']:>8.0f} {1000 * r['import_s'] / r['targets']:>12.1f} {r['fit_s']:>7.2f} "
              f"{1000 * r['per_target_s']:>10.1f} {1000 * r['cpu_s']:>9.1f} {window:>14} "
              f"{1000 * r['total_s'] / r['targets']:>11.1f} "
              f"{r['rss']:>13.0f} {r['rss_delta']:>15.1f} {r['iou']:>9.3f}")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        ratio = last["per_target_s"] / first["per_target_s"]
        print(f"\nper-target ratio {last['targets']:.0f}/{first['targets']:.0f}: wall {ratio:.2f}, CPU "
              f"{last['cpu_s'] / first['cpu_s']:.2f} (goal <= {GOAL}); "
              f"within the {last['targets']:.0f}-target run, last/first {WINDOW}: "
              f"{last['last_s'] / last['first_s']:.2f}; "
              f"benchmark ΔRSS {first['rss_delta']:.1f} -> {last['rss_delta']:.1f} MiB "
              f"(medians of {args.repeats} alternating runs)")


if __name__ == "__main__":
    main()
