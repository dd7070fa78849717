"""The exemplar route's speed: SAM 3 encodes the targets, the demonstrations' exemplars once, batched detection.

Builds SAM 3 with random weights (nothing is downloaded): at the released architecture
(``Sam3Config()``: ViT-L/14 at 1008 px, 200 queries; about 0.85 B parameters, bf16 on a GPU)
with ``--real-shape``, else the tiny test model (112 px). Three synthetic demonstrations of
two instances each teach the route (fit: their encodings, positive exemplar boxes, one
mining pass for negatives); then B targets are segmented with ``segment_batch``.

Columns: fit_s (the fit above), images_s and ms_per_image (targets per second through
``segment_batch``, image encoding included), encode_ms (SAM 3's vision encoder, one image),
detect_ms (one batched fusion + decoder + mask pass for B embedded targets, per target).

Usage: PYTHONPATH=plugin python benchmarks/exemplar_speed.py [--real-shape] [--batches 1,8]
``benchmarks/gpu_check.py`` runs ``exemplar_row`` as its exemplar rows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_segmenter(device: torch.device, real_shape: bool):
    """A Sam3Segmenter with random weights: the released architecture, or the tiny test model."""
    import transformers
    from transformers import Sam3Config, Sam3Model, Sam3Processor

    from conceptseg.segmenters.sam3 import Sam3Segmenter, Sam3SegmenterConfig
    from conceptseg.testing import build_tiny_sam3, tiny_clip_tokenizer
    from conceptseg.testing.scratch import scratch_dir

    if not real_shape:
        path = build_tiny_sam3(scratch_dir("sam3-tiny-"))
        return Sam3Segmenter.from_config(Sam3SegmenterConfig(path=path, device=str(device)))
    processor_class = getattr(transformers, "Sam3ImageProcessor", None) or transformers.Sam3ImageProcessorFast
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Sam3Model(Sam3Config()).to(device, dtype).eval()
    processor = Sam3Processor(image_processor=processor_class(size={"height": 1008, "width": 1008}),
                              tokenizer=tiny_clip_tokenizer())  # byte-level ids: within CLIP's vocabulary
    return Sam3Segmenter.from_model(model, processor, Sam3SegmenterConfig(path="<random>", cache_size=16))


def _image(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 0.3, size=(size, size, 3)).astype(np.float32)
    mask = np.zeros((size, size), bool)
    for _ in range(2):
        y, x = rng.integers(0, size * 3 // 4, size=2)
        image[y:y + size // 6, x:x + size // 6] = (0.9, 0.2, 0.1)
        mask[y:y + size // 6, x:x + size // 6] = True
    return image, mask


def exemplar_row(segmenter, batch: int, size: int = 512) -> dict:
    """Fit on three demonstrations, then ``batch`` targets through ``segment_batch`` (warm, then timed)."""
    from conceptseg.imaging import content_key, to_uint8
    from conceptseg.routes.exemplar import ExemplarConfig, ExemplarRoute
    from conceptseg.segmenters.sam3_exemplar import detect
    from conceptseg.types import Demonstration

    demos = [Demonstration(image=i, mask=m, id=str(s)) for s, (i, m) in ((s, _image(s, size)) for s in range(3))]
    route = ExemplarRoute(segmenter, ExemplarConfig(text="red square"))
    _sync()
    start = time.perf_counter()
    route.fit(demos)
    _sync()
    fit_s = time.perf_counter() - start
    targets = [_image(100 + s, size)[0] for s in range(batch)]
    route.segment_batch(targets)  # warm-up: also fills the cache, cleared below
    segmenter.clear_cache()
    _sync()
    start = time.perf_counter()
    route.segment_batch(targets)
    _sync()
    elapsed = time.perf_counter() - start
    keys = [content_key(to_uint8(t)) for t in targets]
    segmenter.clear_cache()  # the encoder and the detection pass, timed apart
    _sync()
    start = time.perf_counter()
    for t, key in zip(targets, keys):
        segmenter.embed(to_uint8(t), key)
    _sync()
    encode_ms = (time.perf_counter() - start) * 1000 / batch
    start = time.perf_counter()
    detect(segmenter, [segmenter.features(k) for k in keys], route.config.text, route._tokens, route.config.min_score)
    _sync()
    detect_ms = (time.perf_counter() - start) * 1000 / batch
    return {"option": f"sam3-{segmenter.image_size}", "fit_s": round(fit_s, 3), "images_s": round(batch / elapsed, 2),
            "ms_per_image": round(elapsed * 1000 / batch, 1), "encode_ms": round(encode_ms, 1),
            "detect_ms": round(detect_ms, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-shape", action="store_true", help="the released SAM 3's architecture (a GPU)")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    segmenter = build_segmenter(device, args.real_shape)
    keys = ("fit_s", "images_s", "ms_per_image", "encode_ms", "detect_ms")
    print(f"exemplar route on {device} ({'released SAM 3 shape' if args.real_shape else 'tiny SAM 3'}, random weights)")
    print("| option | B | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 2) + "|")
    for batch in (int(b) for b in args.batches.split(",")):
        row = exemplar_row(segmenter, batch)
        print(f"| {row['option']} | {batch} | " + " | ".join(str(row[k]) for k in keys) + " |", flush=True)


if __name__ == "__main__":
    main()
