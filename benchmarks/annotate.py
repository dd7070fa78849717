"""Correcting in Label Studio: how long sending and loading K targets of 512x512 masks takes.

Run: ``python benchmarks/annotate.py [--ks 10,100]`` after ``scripts/labelstudio_env.sh``. Prints one table.

A throw-away database and a real Label Studio (``conceptseg.testing.labelstudio``) on a loopback
port. The dataset: two-class scenes of 512x512 (red discs, blue squares), three demonstrations,
"red" segmented by demonstration (the appearance route). Per K: ``send`` (the K most doubtful
targets: pre-annotations written, images uploaded as tasks, predictions read back and completed),
then every task is submitted with its true mask as the editor saves it (not timed), then
``load`` (tasks read back, FiftyOne's load_annotations, promote as demonstrations). Each K runs
twice: with the pre-annotations label-studio-sdk 2.0.19 creates through FiftyOne's backend, and
with that call made to do nothing (as 2.1.2 and 1.0.20 behave), so that ours are uploaded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import cv2
import numpy as np


def build(name: str, media_dir: str, count: int, size: int = 512):
    import fiftyone as fo

    from conceptseg.datasets.two_classes import scene

    rng = np.random.default_rng(0)
    os.makedirs(media_dir, exist_ok=True)
    samples, truth = [], {}
    for i in range(count):
        image, masks = scene(rng, size=size, red=3, blue=2)
        path = os.path.join(media_dir, f"scene{i}.png")
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        gt = np.zeros((size, size), np.uint8)
        gt[masks["blue"]] = 2
        if i < 3:
            gt[masks["red"]] = 1
        samples.append(fo.Sample(filepath=path, tags=["demo"] if i < 3 else [], gt=fo.Segmentation(mask=gt)))
        truth[path] = masks["red"]
    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    dataset.mask_targets = {"gt": {1: "red", 2: "blue"}}
    dataset.save()
    return dataset, truth


@contextlib.contextmanager
def _sdk_predictions(on: bool):
    """With ``on`` False, the SDK's bulk prediction call does nothing (as in label-studio-sdk 2.1.2)."""
    from label_studio_sdk._legacy.project import Project

    original = Project.create_predictions
    if not on:
        Project.create_predictions = lambda self, predictions: None
    try:
        yield
    finally:
        Project.create_predictions = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="10,100", help="how many targets per round trip")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    from conceptseg.testing.db import private_database_for_script

    private_database_for_script()
    from conceptseg.runs import jobs
    from conceptseg.runs.review import annotate
    from conceptseg.testing import labelstudio as ls
    from conceptseg.testing.scratch import scratch_dir

    if ls.label_studio_binary() is None:
        raise SystemExit(ls.missing_reason())
    server = ls.LabelStudioServer().start()
    try:
        dataset, truth = build("bench-annotate", scratch_dir("bench-annotate-"), 3 + 2 * sum(ks))
        started = time.perf_counter()
        jobs.segment_by_demonstration(dataset.match_tags("demo"), dataset, "gt", "pred", classes=["red"],
                                      route="appearance")
        print(f"segmented {len(dataset) - 3} targets of 512x512 in {time.perf_counter() - started:.1f} s")
        rows = []
        for k, sdk_upload in [(k, on) for k in ks for on in (True, False)]:
            started = time.perf_counter()
            with _sdk_predictions(sdk_upload):
                sent = annotate.send(dataset, "pred", top=k, url=server.url, api_key=server.api_key)
            send_s = time.perf_counter() - started
            task_of = {s: t for t, s in dataset.load_annotation_results(sent["anno_key"]).uploaded_tasks.items()}
            paths = dict(zip(*dataset.select(sent["ids"]).values(["id", "filepath"])))
            for sample_id in sent["ids"]:
                ls.submit_mask(server.url, server.api_key, task_of[sample_id], truth[paths[sample_id]], "red",
                               annotate.corrections_field("pred"))
            started = time.perf_counter()
            loaded = annotate.load(dataset, "pred", url=server.url, api_key=server.api_key)
            load_s = time.perf_counter() - started
            rows.append((k, "ours" if sent["predictions_uploaded"] else "SDK's", send_s, load_s,
                         len(loaded["promoted"])))
        print("| K | pre-annotations | send (s) | load + promote (s) | promoted |")
        print("|---|---|---|---|---|")
        for k, by, send_s, load_s, promoted in rows:
            print(f"| {k} | {by} | {send_s:.1f} | {load_s:.1f} | {promoted} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
