"""Our SAM 2 box-prompt path against FiftyOne's own SAM 2 ``apply_model`` (issue 4, P4).

Run: ``python benchmarks/sam2_vs_fiftyone.py [--images N] [--boxes B] [--repeats R]
[--fo-batch-size K]`` (set ``CONCEPTSEG_DATA_DIR`` to reuse a cache of the demo files).
Prints one plain-text table. Goal: ours <= 1.0x FiftyOne's total time per image.

Same weights, same images, same boxes for both paths:

- checkpoint: SAM 2.1 hiera-t (``configs/sam2.1/sam2.1_hiera_t.yaml``) built by
  ``sam2.build_sam.build_sam2`` with random weights after ``torch.manual_seed(seed)``
  (no weights offline), saved once as ``{"model": state_dict}`` to a temporary ``.pt``
  that both paths load: ours through ``Sam2SegmenterConfig.checkpoint``, FiftyOne's through
  ``SegmentAnything2ImageModelConfig``'s ``model_path`` (handed to ``build_sam2`` as
  ``ckpt_path``, which loads it strictly).
- images: the real nuclei fluorescence image (``conceptseg.datasets.demo_data``) normalised once
  as a whole (``to_rgb_float``/``to_uint8``, as the demo does), cut into 128x128 tiles,
  upscaled to ``--size`` (512) with bilinear interpolation (labels: nearest), written as
  RGB PNGs. The first ``--images`` tiles with at least ``--boxes`` nuclei are used.
- boxes: per image, the ``--boxes`` largest ground-truth nuclei (instances of the label
  image; touching nuclei stay separate) as tight pixel boxes, stored on a temporary
  (non-persistent) FiftyOne dataset as the Detections field ``boxes``.

The two paths, each writing one fo.Detections per sample (one Detection per box whose
mask is not empty, box-cropped mask, bounding box = the prompt box; FiftyOne's format):

- fiftyone: ``dataset.apply_model(SegmentAnything2ImageModel(...), label_field="fo_sam2",
  prompt_field="boxes", batch_size=K, num_workers=0)``. Its stages are timed by wrapping,
  without changing, four of its methods: the GetItem's ``__call__`` (image decode and box
  preparation: "read"), ``SAM2ImagePredictor.set_image_batch`` (the image encoder:
  "encode"), the model's ``_forward_pass`` minus that (``SAM2ImagePredictor._predict`` for
  all of an image's boxes in one call: "decode"), and ``_predict_all`` minus
  ``_forward_pass`` (collation and the output processor building the Detections: "labels").
- ours: over the samples in a ``save_context`` (as our jobs write labels):
  ``conceptseg.imaging.read_image`` and the stored boxes to XYXY pixels ("read"),
  ``Sam2Segmenter.embed`` ("encode"), one ``predict`` per box and logits > 0 ("decode"), the
  box-cropped masks into fo.Detections with the mean probability inside the cropped mask
  as confidence ("labels"), then ``sample[field] = ...`` and ``saver.save`` per sample.

"db+other" is the rest of each path's wall time (iteration over the samples, the database
reads and writes, FiftyOne's data loader), "total" the whole wall time; the "cpu" columns
are the process CPU time (all threads) of the encoder, the decoder and the whole run.
Every column is seconds per image, the median over ``--repeats``. Each repeat runs both
paths, alternating which goes first; our embedding cache is cleared before each of our
runs (otherwise every image after the first repeat would be a cache hit) and the label
field is deleted (untimed) before each run.

Both paths run the same image encoder on identical inputs, so "encode" should sit near
1.0x. The mask decoder costs ~0.13 CPU-s per box on CPU (not negligible next to the
encoder's ~7 CPU-s); FiftyOne decodes an image's boxes in one batched call and
``Sam2Segmenter.predict`` one box per call. Single-threaded, batching saves nothing
measurable (3 boxes: 0.37 CPU-s batched, 0.38 as three calls, either path); with two
threads the per-call overhead shows (our "decode cpu" ran 1.1-1.2x FiftyOne's on 2 cores),
a few percent of the total. On a shared machine the wall time of the same encoder call
drifts by 2x from minute to minute, and with several threads the "cpu" columns drift as
well (threads spin while they wait for a descheduled sibling): raise ``--repeats``, or
use ``--threads 1``, which makes CPU time a steadier measure of work.

Agreement, two checks:

- logits: the untimed warm-up (one image; two in one batch if ``--fo-batch-size`` >= 2)
  records both paths' full-size logits (FiftyOne's own ``SAM2ImagePredictor._predict`` call
  asked for ``return_logits=True`` and thresholded at its ``mask_threshold`` as it would
  do itself) and reports the largest difference and the pixels thresholded differently.
- masks: after the last repeat the two label fields are compared box by box (matched by
  their bounding box): Detections on one side only, mask shapes, and the IoU of the two
  box-cropped masks. With random weights the masks fill most of each box, so this check
  is weak on its own; the logit check is the sharp one.

Both paths run the same modules on the same inputs (box as two corner points labelled 2
and 3, single-mask output with SAM 2's stability fallback, bilinear upsampling to the
image size, threshold 0). The only intended difference: FiftyOne decodes an image's boxes
as one batch and we decode them one at a time, so the logits agree to float rounding
(~1e-7) and the masks to IoU 1.0. Known FiftyOne 1.22.1 bug, hence ``--fo-batch-size 1``
by default: its ``SegmentAnything2ImageModel._forward_pass`` calls
``SAM2ImagePredictor._predict`` without ``img_idx``, so with ``batch_size`` > 1 every image of
a batch is decoded against the *last* image's embedding; the logit check shows it (large
differences) when run with ``--fo-batch-size 2``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from conceptseg.testing.db import private_database_for_script  # noqa: E402

# A mongod of our own, never the user's database; started before fiftyone is imported.
private_database_for_script("sam2-bench-db-")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import fiftyone as fo  # noqa: E402
import fiftyone.utils.sam2 as fosam2  # noqa: E402

from conceptseg.datasets import demo_data  # noqa: E402
from conceptseg.imaging import read_image, to_rgb_float, to_uint8  # noqa: E402
from conceptseg.segmenters.sam2 import Sam2Segmenter, Sam2SegmenterConfig  # noqa: E402

GOAL = 1.0
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
STAGES = ("read", "encode", "decode", "labels", "db+other", "total",
          "encode cpu", "decode cpu", "total cpu")


# --- data and checkpoint --------------------------------------------------------------


def make_images(out_dir: str, n: int, boxes_per_image: int, size: int):
    """Writes n upscaled nuclei tiles as PNGs; returns [(path, [XYXY pixel boxes])]."""
    files = demo_data.fetch_demo_files()
    image, _ = demo_data.nuclei(files)
    image8 = to_uint8(to_rgb_float(image))  # whole image normalised once, as the demo
    out = []
    for name, tile, labels in demo_data.nuclei_tiles(files):
        r, c = (int(p[1:]) for p in name.split("_")[1:])
        rgb = image8[r : r + tile.shape[0], c : c + tile.shape[1]]
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(labels.astype(np.int32).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_NEAREST).astype(np.int64)
        ids, areas = np.unique(lab[lab > 0], return_counts=True)
        if len(ids) < boxes_per_image:
            continue
        boxes = []
        for i in ids[np.argsort(-areas, kind="stable")[:boxes_per_image]]:
            ys, xs = np.nonzero(lab == i)
            boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
        path = os.path.join(out_dir, f"{name}.png")
        cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        out.append((path, boxes))
        if len(out) == n:
            break
    return out


def make_checkpoint(path: str, seed: int) -> None:
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(CONFIG, ckpt_path=None, device="cpu")
    torch.save({"model": model.state_dict()}, path)


def make_dataset(items) -> fo.Dataset:
    dataset = fo.Dataset()  # not persistent: gone when the process ends
    samples = []
    for path, boxes in items:
        h, w = cv2.imread(path, cv2.IMREAD_UNCHANGED).shape[:2]
        dets = [fo.Detection(label="nucleus",
                             bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h])
                for x0, y0, x1, y1 in boxes]
        samples.append(fo.Sample(filepath=path, boxes=fo.Detections(detections=dets)))
    dataset.add_samples(samples)
    return dataset


# --- the two paths ---------------------------------------------------------------------


class Timer:
    """Accumulates wall seconds per stage, and process CPU seconds under "<stage> cpu"."""

    def __init__(self):
        self.s = {k: 0.0 for k in STAGES}

    def wrap(self, stage, fn):
        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[stage] = self.s.get(stage, 0.0) + time.perf_counter() - t0
                key = f"{stage} cpu"
                self.s[key] = self.s.get(key, 0.0) + time.process_time() - c0
        return timed


def fiftyone_model(checkpoint: str):
    config = fosam2.SegmentAnything2ImageModelConfig({
        "entrypoint_fcn": "sam2.build_sam.build_sam2",
        "entrypoint_args": {"config_file": CONFIG, "device": "cpu"},
        "model_path": checkpoint,
        "device": "cpu",
    })
    return fosam2.SegmentAnything2ImageModel(config)


def run_fiftyone(samples, model, field: str, batch_size: int, record=None) -> dict[str, float]:
    """Times apply_model; ``record`` (a list, untimed runs only) receives each image's logits."""
    timer = Timer()
    proc = model._sam_predictor.processor
    if record is not None:  # the same call, asked for logits, thresholded here as it would
        predict = proc._predict

        def recording(*args, **kwargs):
            kwargs["return_logits"] = True
            masks, iou, low_res = predict(*args, **kwargs)
            record.append(masks[:, 0].detach().cpu().numpy())
            return masks > proc.mask_threshold, iou, low_res

        proc._predict = recording
    # Instance attributes shadow the methods; apply_model calls them through self.
    proc.set_image_batch = timer.wrap("encode", proc.set_image_batch)
    forward = Timer()
    model._forward_pass = forward.wrap("model", type(model)._forward_pass.__get__(model))
    predict_all = Timer()
    model._predict_all = predict_all.wrap("labels", type(model)._predict_all.__get__(model))
    get_item_cls = fosam2.SegmentAnything2ImageGetItem
    get_item_call = get_item_cls.__call__
    get_item_cls.__call__ = timer.wrap("read", get_item_call)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        samples.apply_model(model, label_field=field, prompt_field="boxes",
                            batch_size=batch_size, num_workers=0, progress=False,
                            skip_failures=False)
        timer.s["total"] = time.perf_counter() - t0
        timer.s["total cpu"] = time.process_time() - c0
    finally:
        get_item_cls.__call__ = get_item_call
        del model._forward_pass, model._predict_all, proc.set_image_batch
        if record is not None:
            del proc._predict
    timer.s["decode"] = forward.s["model"] - timer.s["encode"]
    timer.s["decode cpu"] = forward.s["model cpu"] - timer.s["encode cpu"]
    timer.s["labels"] = predict_all.s["labels"] - forward.s["model"]
    return _rest(timer.s)


def _rest(s: dict[str, float]) -> dict[str, float]:
    s["db+other"] = s["total"] - sum(s[k] for k in ("read", "encode", "decode", "labels"))
    return s


def run_ours(samples, seg: Sam2Segmenter, field: str, record=None) -> dict[str, float]:
    """Times our path; ``record`` (a list, untimed runs only) receives each image's logits."""
    timer = Timer()
    seg.clear_cache()
    t_start, c_start = time.perf_counter(), time.process_time()
    with samples.save_context(batch_size=1.0) as saver:
        for sample in samples:
            t0 = time.perf_counter()
            image = read_image(sample.filepath)
            h, w = image.shape[:2]
            boxes = [[x * w, y * h, (x + bw) * w, (y + bh) * h]
                     for x, y, bw, bh in (d.bounding_box for d in sample.boxes.detections)]
            t1, c1 = time.perf_counter(), time.process_time()
            seg.embed(image, sample.id)
            t_enc, c_enc = time.perf_counter(), time.process_time()
            logits = [seg.predict(sample.id, box=b) for b in boxes]
            masks = [lg > 0 for lg in logits]
            t2, c2 = time.perf_counter(), time.process_time()
            if record is not None:
                record.append(np.stack(logits))
            dets = []
            for (x0, y0, x1, y1), lg, m in zip(boxes, logits, masks):
                if not m.any():
                    continue  # as FiftyOne's output processor: no empty masks
                ys, xs = slice(int(round(y0)), int(round(y1))), slice(int(round(x0)), int(round(x1)))
                crop = m[ys, xs]  # the stored mask; its mean probability is the confidence
                inside = lg[ys, xs][crop]
                conf = float((1.0 / (1.0 + np.exp(-inside))).mean()) if inside.size else 0.0
                dets.append(fo.Detection(label="nucleus",
                                         bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
                                         mask=crop, confidence=conf))
            labels = fo.Detections(detections=dets)
            t3 = time.perf_counter()
            sample[field] = labels  # as apply_model's add_labels: counted in db+other
            saver.save(sample)
            timer.s["read"] += t1 - t0
            timer.s["encode"] += t_enc - t1
            timer.s["decode"] += t2 - t_enc
            timer.s["encode cpu"] += c_enc - c1
            timer.s["decode cpu"] += c2 - c_enc
            timer.s["labels"] += t3 - t2
    timer.s["total"] = time.perf_counter() - t_start
    timer.s["total cpu"] = time.process_time() - c_start
    return _rest(timer.s)


def agreement(dataset, ours: str, theirs: str):
    """(boxes compared, boxes missing from one side, shape mismatches, IoUs, fg fractions)."""
    ious, fg, missing, bad_shape, n = [], [], 0, 0, 0
    for sample in dataset.select_fields([ours, theirs]):
        a, b = ({tuple(np.round(d.bounding_box, 6)): d.mask
                 for d in (sample[f].detections if sample[f] is not None else [])}
                for f in (ours, theirs))
        missing += len(set(a) ^ set(b))
        for key in set(a) & set(b):
            n += 1
            ma, mb = np.asarray(a[key], bool), np.asarray(b[key], bool)
            if ma.shape != mb.shape:
                bad_shape += 1
                continue
            union = (ma | mb).sum()
            ious.append(float((ma & mb).sum() / union) if union else 1.0)
            fg.append(float(mb.mean()))
    return n, missing, bad_shape, ious, fg


def clear(dataset, field: str) -> None:
    if dataset.has_sample_field(field):
        dataset.delete_sample_field(field)


# --- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="number of images (default 4)")
    parser.add_argument("--boxes", type=int, default=3, help="boxes per image (default 3)")
    parser.add_argument("--size", type=int, default=512, help="image side after upscaling")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per path (median)")
    parser.add_argument("--fo-batch-size", type=int, default=1,
                        help="batch_size for FiftyOne's apply_model (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both paths (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = tempfile.mkdtemp(prefix="sam2-bench-")
    dataset = None
    try:
        items = make_images(work, args.images, args.boxes, args.size)
        if len(items) < args.images:
            print(f"note: only {len(items)} tiles hold {args.boxes} nuclei")
        checkpoint = os.path.join(work, "sam2.1_hiera_t_random.pt")
        make_checkpoint(checkpoint, args.seed)
        dataset = make_dataset(items)

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = fiftyone_model(checkpoint)
        load_fo = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = Sam2Segmenter.from_config(Sam2SegmenterConfig(
            config_name=CONFIG, checkpoint=checkpoint, device="cpu"))
        load_ours = time.perf_counter() - t0
        same = all(torch.equal(p, q) for p, q in zip(
            ours.model.state_dict().values(), theirs._model.state_dict().values()))
        assert same, "the two paths did not load the same weights"

        runners = {
            "ours": lambda s, record=None: run_ours(s, ours, "ours_sam2", record),
            "fiftyone": lambda s, record=None: run_fiftyone(
                s, theirs, "fo_sam2", args.fo_batch_size, record),
        }
        fields = {"ours": "ours_sam2", "fiftyone": "fo_sam2"}
        # Warm-up, untimed, on one image (on two, one batch, if --fo-batch-size >= 2);
        # it also records both paths' full-size logits for the logit-level check.
        logits = {p: [] for p in runners}
        n = len(dataset)
        warm = min(2, args.fo_batch_size, n)
        for path, run in runners.items():
            run(dataset[:warm], record=logits[path])
            clear(dataset, fields[path])
        dlogit = max(float(np.abs(a - b).max()) for a, b in zip(logits["ours"], logits["fiftyone"]))
        flips = sum(int(((a > 0) != (b > 0)).sum()) for a, b in zip(logits["ours"], logits["fiftyone"]))
        pixels = sum(a.size for a in logits["ours"])
        checked = sum(len(a) for a in logits["ours"])

        times = {p: {k: [] for k in STAGES} for p in runners}
        for r in range(args.repeats):
            order = list(runners) if r % 2 == 0 else list(runners)[::-1]
            for path in order:
                clear(dataset, fields[path])
                result = runners[path](dataset)
                for k in STAGES:
                    times[path][k].append(result[k] / n)
        med = {p: {k: statistics.median(v) for k, v in t.items()} for p, t in times.items()}
        compared, missing, bad_shape, ious, fg = agreement(dataset, "ours_sam2", "fo_sam2")
        total_boxes = sum(len(b) for _, b in items)
    finally:
        if dataset is not None:
            dataset.delete()
        shutil.rmtree(work, ignore_errors=True)

    rows = [(p, *(f"{med[p][k]:.3f}" for k in STAGES)) for p in runners]
    ratio = {k: (med["ours"][k] / med["fiftyone"][k] if med["fiftyone"][k] else float("nan"))
             for k in STAGES}
    rows.append(("ours/fiftyone", *(f"{ratio[k]:.2f}x" for k in STAGES)))
    header = ("path", *STAGES)
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(row):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    verdict = "ok" if ratio["total"] <= GOAL else f"over {GOAL:g}x"
    print(f"SAM 2.1 hiera-t box prompts: ours (Sam2Segmenter) vs FiftyOne apply_model "
          f"(SegmentAnything2ImageModel); median of {args.repeats} repeats; torch "
          f"{torch.__version__} on {os.cpu_count()} CPUs, torch threads: {torch.get_num_threads()}")
    print(f"{n} nuclei tiles upscaled to {args.size}x{args.size}, {args.boxes} GT boxes each "
          f"({total_boxes} boxes); same random-weight checkpoint (seed {args.seed}); "
          f"FiftyOne batch_size={args.fo_batch_size}, num_workers=0; model load "
          f"ours {load_ours:.1f} s, fiftyone {load_fo:.1f} s (not in the table)")
    print("seconds per image (wall, then process CPU); median over the repeats")
    print(line)
    print(fmt(header))
    print(line)
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            print(line)
        print(fmt(row))
    print(line)
    mean_iou = statistics.fmean(ious) if ious else float("nan")
    print(f"goal ours/fiftyone total <= {GOAL:g}x: {ratio['total']:.2f}x wall, {verdict} "
          f"({ratio['total cpu']:.2f}x process CPU)")
    print(f"logits (warm-up, first {warm} image(s), {checked} boxes, full {args.size}x{args.size}): "
          f"max |ours - fiftyone| {dlogit:.2e}; pixels on different sides of 0: {flips} of {pixels}")
    print(f"masks (last repeat): {compared} of {total_boxes} boxes with a mask on both sides, "
          f"{missing} on one side only, {bad_shape} shape mismatches; mask IoU mean "
          f"{mean_iou:.4f}, min {min(ious) if ious else float('nan'):.4f}; mean foreground "
          f"fraction of the box crop {statistics.fmean(fg) if fg else float('nan'):.3f}")


if __name__ == "__main__":
    main()
