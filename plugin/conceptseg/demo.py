"""The bundled demo: nuclei tiles and the quokka as a FiftyOne dataset, then the main job.

Segment-by-demonstration on real microscopy: three tiles of the nuclei image are the
demonstrations, the other thirteen are targets, and the predictions are scored against
the hand-labelled masks.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from conceptseg.datasets import demo_data
from conceptseg.imaging import to_rgb_float, to_uint8

DATASET_NAME = "conceptseg-demo"
DEMO_TAG = "demo"
NUCLEI_VIEW = "nuclei"
# Three tiles on the diagonal: dense, medium and sparse nuclei.
DEMO_TILES = ("nuclei_r000_c000", "nuclei_r128_c128", "nuclei_r256_c256")


def build_dataset(name: str = DATASET_NAME, media_dir: str | None = None, overwrite: bool = True):
    """Creates the persistent demo dataset: 16 nuclei tiles + the quokka, with ground truth.

    Fields: ``ground_truth`` (Segmentation, 0/1 mask PNG), ``concept`` ("nucleus" or
    "animal"). The three demonstration tiles are tagged ``demo``; the saved view
    ``nuclei`` holds the tiles.
    """
    import fiftyone as fo
    from fiftyone import ViewField as F

    files = demo_data.fetch_demo_files()
    media_dir = media_dir or os.path.join(fo.config.default_dataset_dir, name)
    os.makedirs(media_dir, exist_ok=True)
    if fo.dataset_exists(name):
        if not overwrite:
            return fo.load_dataset(name)
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)

    image, labels = demo_data.nuclei(files)
    # Normalise the whole image once so that tiles keep comparable brightness.
    image8 = to_uint8(to_rgb_float(image))[..., 0]
    samples = []
    for tile_name, _, tile_labels in demo_data.nuclei_tiles(files):
        r, c = (int(p[1:]) for p in tile_name.split("_")[1:])
        tile = image8[r : r + tile_labels.shape[0], c : c + tile_labels.shape[1]]
        samples.append(_sample(media_dir, tile_name, tile, tile_labels > 0, "nucleus", tile_name in DEMO_TILES))
    photo, mask = demo_data.quokka(files)
    samples.append(_sample(media_dir, "quokka", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), mask, "animal", False, ext=".jpg"))
    dataset.add_samples(samples)
    dataset.mask_targets = {"ground_truth": {1: "concept"}}
    dataset.save_view(NUCLEI_VIEW, dataset.match(F("concept") == "nucleus"))
    dataset.info = {
        "sources": "stardist 0.9.2 wheel (BSD-3-Clause; image from the 2018 Kaggle DSB, "
        "Caicedo et al. 2019) and imgaug 0.4.0 wheel (MIT)",
    }
    dataset.save()
    return dataset


def _sample(media_dir, name, image, mask, concept, is_demo, ext=".png"):
    import fiftyone as fo

    image_path = os.path.join(media_dir, name + ext)
    mask_path = os.path.join(media_dir, name + "_mask.png")
    cv2.imwrite(image_path, image)
    cv2.imwrite(mask_path, mask.astype(np.uint8))
    return fo.Sample(
        filepath=image_path,
        ground_truth=fo.Segmentation(mask_path=mask_path),
        concept=concept,
        tags=[DEMO_TAG] if is_demo else [],
    )


def run(name: str = DATASET_NAME, pred_field: str = "predictions") -> dict:
    """Builds the dataset, segments the nuclei by demonstration and scores the result."""
    from conceptseg.runs import evaluation
    from conceptseg.runs import jobs

    dataset = build_dataset(name)
    nuclei = dataset.load_saved_view(NUCLEI_VIEW)
    summary = jobs.segment_by_demonstration(
        demonstrations=nuclei.match_tags(DEMO_TAG),
        targets=nuclei,
        mask_field="ground_truth",
        pred_field=pred_field,
        concept="nucleus",
        overwrite=True,
    )
    report = evaluation.evaluate(nuclei, pred_field, "ground_truth")
    names = dict(zip(dataset.values("id"), (os.path.basename(p) for p in dataset.values("filepath"))))
    return {"dataset": name, "segment": summary, "evaluate": report, "names": names}
