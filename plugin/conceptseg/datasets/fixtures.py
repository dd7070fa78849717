"""Tiny datasets in each import layout, written from the real demo images (nuclei, quokka).

Tests and benchmarks build them on the fly; users can try the importers with them. The
nuclei tiles stand in for a medical dataset (key ``isic2018``, level CD) and the quokka
for a rare class (key ``rare``, level CI); masks are real annotations.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

from conceptseg.datasets import demo_data
from conceptseg.imaging import to_rgb_float, to_uint8

# Tiles of the demo's 4x4 grid: train (demonstrations) and test targets.
TRAIN_TILES = ("nuclei_r000_c000", "nuclei_r128_c128", "nuclei_r256_c256")
TEST_TILES = ("nuclei_r000_c256", "nuclei_r128_c384", "nuclei_r384_c000", "nuclei_r384_c384")
MIG_TILES = ("nuclei_r256_c000", "nuclei_r256_c384", "nuclei_r000_c128")


def nuclei_tiles(files: demo_data.DemoFiles, tile: int = 128) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name → (HxW uint8 grey tile, HxW uint16 instance labels); the image normalised once."""
    image, labels = demo_data.nuclei(files)
    image8 = to_uint8(to_rgb_float(image))[..., 0]
    out = {}
    for name, _, tile_labels in demo_data.nuclei_tiles(files, tile):
        r, c = (int(p[1:]) for p in name.split("_")[1:])
        out[name] = (image8[r : r + tile, c : c + tile], tile_labels)
    return out


def large_nuclei_tiles(files: demo_data.DemoFiles, offset: int = 0,
                       tile: int = 128) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The size concept "nuclei larger than the median": (name, HxWx3 float tile, bool mask) per tile.

    The image is normalised once as a whole and cut into tiles starting ``offset`` px in;
    the median is the whole image's nucleus area, and a nucleus cut by a tile border counts
    by its visible part (its pixels inside the tile).
    """
    image, labels = demo_data.nuclei(files)
    image8 = to_uint8(to_rgb_float(image))
    areas = np.bincount(labels.ravel())[1:]
    median = float(np.median(areas[areas > 0]))
    out = []
    for r in range(offset, image.shape[0] - tile + 1, tile):
        for c in range(offset, image.shape[1] - tile + 1, tile):
            tile_labels = labels[r : r + tile, c : c + tile]
            large = np.flatnonzero(np.bincount(tile_labels.ravel()) > median)
            mask = np.isin(tile_labels, large[large > 0])
            out.append((f"nuclei_r{r:03d}_c{c:03d}", to_rgb_float(image8[r : r + tile, c : c + tile]), mask))
    return out


def quokka_small(files: demo_data.DemoFiles, width: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """The quokka shrunk to ``width`` (fast to segment): HxWx3 uint8 BGR and its bool mask."""
    photo, mask = demo_data.quokka(files)
    height = round(photo.shape[0] * width / photo.shape[1])
    photo = cv2.resize(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), (width, height), interpolation=cv2.INTER_AREA)
    return photo, cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def quokka_halves(files: demo_data.DemoFiles) -> list[tuple[np.ndarray, np.ndarray]]:
    """The small quokka's top and bottom halves, each (image, mask), both with head/body and background."""
    photo, mask = quokka_small(files)
    mid = photo.shape[0] // 2
    return [(photo[:mid], mask[:mid]), (photo[mid:], mask[mid:])]


def _write(path: str, image: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, image)
    return path


def _item(images: list[str], mask: str, cls_name: str, dataset_name: str, **extra) -> dict:
    return dict(img_path=images, mask_path=mask, cls_name=cls_name, dataset_name=dataset_name,
                task_name=dataset_name, **extra)


def write_conceptseg_benchmark(root: str, files: demo_data.DemoFiles) -> str:
    """all_meta.json with two concepts (nucleus, quokka) and one MIG item; returns the manifest path.

    Masks are stored 0/255 (the benchmark's convention); the quokka's halves and their
    mirror images are its train (top) and test (bottom) samples. The MIG item (two
    reference tiles, then the target tile) has no train sample of its concept.
    """
    tiles = nuclei_tiles(files)
    meta: dict = {"train": {}, "test": {}}
    for split, names in (("train", TRAIN_TILES), ("test", TEST_TILES)):
        for name in names:
            image, labels = tiles[name]
            _write(os.path.join(root, "isic2018", "images", name + ".png"), image)
            _write(os.path.join(root, "isic2018", "masks", name + ".png"), (labels > 0).astype(np.uint8) * 255)
            meta[split].setdefault("isic2018_nucleus", []).append(
                _item([f"isic2018/images/{name}.png"], f"isic2018/masks/{name}.png", "isic2018_nucleus", "isic2018"))
    for split, (photo, mask) in zip(("train", "test"), quokka_halves(files)):
        for flip, suffix in ((False, ""), (True, "_mirror")):
            image, m = (photo[:, ::-1], mask[:, ::-1]) if flip else (photo, mask)
            name = f"quokka_{split}{suffix}"
            _write(os.path.join(root, "rare", name + ".jpg"), image)
            _write(os.path.join(root, "rare", name + "_mask.png"), m.astype(np.uint8) * 255)
            meta[split].setdefault("rare_quokka", []).append(
                _item([f"rare/{name}.jpg"], f"rare/{name}_mask.png", "rare_quokka", "rare"))
    refs = []
    for name in MIG_TILES:
        image, labels = tiles[name]
        refs.append(f"MIG/{name}.png")
        _write(os.path.join(root, refs[-1]), image)
    _write(os.path.join(root, "MIG", "target_mask.png"), (tiles[MIG_TILES[-1]][1] > 0).astype(np.uint8) * 255)
    meta["test"]["MIG_common_object_nuclei"] = [_item(
        refs, "MIG/target_mask.png", "MIG_common_object_nuclei", "MIG_common_object",
        problem="the objects the images have in common", ref_box=[[0.1, 0.1, 0.5, 0.5]])]
    path = os.path.join(root, "all_meta.json")
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


def _polygons(mask: np.ndarray, label: str) -> list[dict]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [{"label": label, "points": c[:, 0, :].tolist(), "shape_type": "polygon"} for c in contours if len(c) >= 3]


def write_reasonseg(root: str, files: demo_data.DemoFiles) -> str:
    """LISA layout: val/ (the quokka, with an ignore box and a flag shape) and test/ (a nuclei tile)."""
    full, full_mask = quokka_small(files)
    _write(os.path.join(root, "val", "quokka.jpg"), full)
    height, width = full_mask.shape
    shapes = _polygons(full_mask, "target")
    shapes.append({"label": "ignore", "points": [[0, 0], [width // 4, 0], [width // 4, height // 4], [0, height // 4]]})
    corner = [[width - 20, height - 20], [width - 1, height - 20], [width - 1, height - 1]]
    shapes.append({"label": "flag", "points": corner})
    texts = ["the animal that lives on Rottnest Island", "the marsupial"]
    anno = {"text": texts, "is_sentence": True, "shapes": shapes}
    with open(os.path.join(root, "val", "quokka.json"), "w") as f:
        json.dump(anno, f)
    image, labels = nuclei_tiles(files)[TEST_TILES[0]]
    _write(os.path.join(root, "test", "cells.png"), image)
    anno = {"text": "the cell nuclei", "is_sentence": False, "shapes": _polygons(labels > 0, "target")}
    with open(os.path.join(root, "test", "cells.json"), "w") as f:
        json.dump(anno, f)
    return root


def write_folder(root: str, files: demo_data.DemoFiles) -> str:
    """images/ + masks/ (16-bit instance labels) + concepts.csv with a train/test split."""
    tiles = nuclei_tiles(files)
    rows = ["name,concept,split"]
    for split, names in (("train", TRAIN_TILES), ("test", TEST_TILES)):
        for name in names:
            image, labels = tiles[name]
            _write(os.path.join(root, "images", name + ".png"), image)
            _write(os.path.join(root, "masks", name + ".png"), labels.astype(np.uint16))
            rows.append(f"{name}.png,nucleus,{split}")
    with open(os.path.join(root, "concepts.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return root
