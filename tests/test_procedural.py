"""Procedural concepts: every family renders what its name says, exactly masked, and imports into FiftyOne."""

import csv
import os

import cv2
import fiftyone as fo
import numpy as np
import pytest

from conceptseg.datasets import import_dataset
from conceptseg.training import procedural
from conceptseg.training.procedural import COLOURS, concept_names, generate, level_of, render, write_folder


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a bool mask, each as a bool mask."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == k for k in range(1, count)]


def objects(image: np.ndarray) -> np.ndarray:
    """Pixels that are not background: the grey background has R = G = B, no palette colour does."""
    return (image[..., 0] != image[..., 1]) | (image[..., 1] != image[..., 2])


class TestConceptNames:
    def test_enough_distinct_concepts_in_every_family(self):
        names = concept_names()
        assert len(names) == len(set(names)) == 16
        assert names[:3] == ["triangle", "circle", "square"] and names[-2:] == ["camouflaged blob", "odd one out"]
        assert {"red object", "striped object", "dotted object", "checkered object"} <= set(names)

    def test_levels(self):
        assert [level_of(c) for c in ("triangle", "red object", "striped object")] == ["CI", "CI", "CI"]
        assert level_of("camouflaged blob") == "CD" and level_of("odd one out") == "CR"

    def test_unknown_concept_names_the_known_ones(self):
        with pytest.raises(ValueError, match="Unknown concept 'dog'; known concepts: triangle, circle"):
            level_of("dog")


class TestDeterminism:
    def test_same_seed_same_bytes_other_seed_other_bytes(self):
        first, again, other = (generate(per_concept=2, seed=s) for s in (3, 3, 4))
        assert len(first) == 32
        assert [i.image.tobytes() + i.mask.tobytes() for i in first] == [i.image.tobytes() + i.mask.tobytes() for i in again]
        assert all(a.image.tobytes() != b.image.tobytes() for a, b in zip(first, other))

    def test_a_concepts_images_do_not_depend_on_the_others_asked_for(self):
        alone = generate(["ring"], per_concept=3, seed=5)
        among = [i for i in generate(["star", "ring"], per_concept=3, seed=5) if i.concept == "ring"]
        assert [i.image.tobytes() for i in alone] == [i.image.tobytes() for i in among]


class TestEveryConcept:
    @pytest.mark.parametrize("concept", concept_names())
    def test_renders_a_non_empty_mask_of_the_image_size(self, concept):
        for seed in range(5):
            item = render(concept, np.random.default_rng(seed), size=96)
            assert item.image.shape == (96, 96, 3) and item.image.dtype == np.uint8
            assert item.mask.shape == (96, 96) and item.mask.dtype == bool and item.mask.any()
            assert item.concept == concept and item.level == level_of(concept)
            assert item.family == procedural.FAMILIES[concept]


class TestScatteredFamilies:
    @pytest.mark.parametrize("colour", list(COLOURS))
    def test_masked_pixels_are_exactly_the_pixels_of_the_colour(self, colour):
        for seed in range(10):
            item = render(f"{colour} object", np.random.default_rng(seed))
            is_colour = (item.image == COLOURS[colour]).all(axis=2)
            np.testing.assert_array_equal(is_colour, item.mask)
            assert (objects(item.image) & ~item.mask).any()  # distractors of other colours are there
            assert 1 <= len(components(item.mask)) <= 3

    def test_circles_fill_their_enclosing_circle_and_triangles_do_not(self):
        # An equilateral triangle covers 3√3/(4π) ≈ 0.41 of its circumscribed circle; a disc covers all of it.
        for concept, low, high in (("circle", 0.8, 1.3), ("triangle", 0.3, 0.6)):
            for seed in range(5):
                for part in components(render(concept, np.random.default_rng(seed)).mask):
                    points = np.argwhere(part).astype(np.float32)
                    _, radius = cv2.minEnclosingCircle(points)
                    assert low < part.sum() / (np.pi * radius**2) < high, (concept, seed)

    def test_textured_instances_show_two_colours_and_distractors_differ(self):
        for concept in ("striped object", "dotted object", "checkered object"):
            for seed in range(5):
                item = render(concept, np.random.default_rng(seed))
                for part in components(item.mask):
                    assert len(np.unique(item.image[part], axis=0)) == 2, (concept, seed)
                assert (objects(item.image) & ~item.mask).any()


class TestCamouflage:
    def test_one_blob_close_to_its_surroundings_in_colour(self):
        for seed in range(10):
            item = render("camouflaged blob", np.random.default_rng(seed))
            assert len(components(item.mask)) == 1 and 0.02 < item.mask.mean() < 0.08
            ring = cv2.dilate(item.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~item.mask
            image = item.image.astype(float)
            gap = np.abs(image[item.mask].mean(axis=0) - image[ring].mean(axis=0)).max()
            assert 3 < gap < 45  # low contrast, yet not identical


class TestOddOneOut:
    def test_exactly_one_odd_object_in_a_full_grid(self):
        for seed in range(30):
            item = render("odd one out", np.random.default_rng(seed))
            assert len(components(item.mask)) == 1
            assert len(components(objects(item.image))) in (9, 16)  # a 3×3 or 4×4 grid


class TestBadInput:
    def test_unknown_concept_and_bad_counts(self, tmp_path):
        with pytest.raises(ValueError, match="known concepts: triangle"):
            render("dog", np.random.default_rng(0))
        with pytest.raises(ValueError, match="known concepts: triangle"):
            generate(["ring", "dog"])
        with pytest.raises(ValueError, match="per_concept must be at least 1; got 0"):
            generate(per_concept=0)
        with pytest.raises(ValueError, match="size must be at least 64"):
            render("ring", np.random.default_rng(0), size=32)
        with pytest.raises(ValueError, match="named once"):
            generate(["ring", "ring"])
        with pytest.raises(ValueError, match="No items"):
            write_folder(str(tmp_path), [])
        with pytest.raises(ValueError, match="test_fraction"):
            write_folder(str(tmp_path), generate(["ring"], per_concept=1), test_fraction=0)


class TestWriteFolder:
    def test_splits_per_concept(self, tmp_path):
        items = generate(["ring"], per_concept=1) + generate(["star"], per_concept=2) + generate(
            ["red object"], per_concept=3) + generate(["odd one out"], per_concept=6)
        root = write_folder(str(tmp_path / "shapes"), items)
        with open(os.path.join(root, "concepts.csv")) as f:
            rows = list(csv.DictReader(f))
        assert [r["name"] for r in rows[:4]] == ["ring_000.png", "star_000.png", "star_001.png", "red_object_000.png"]
        tests = {c: sum(r["split"] == "test" for r in rows if r["concept"] == c)
                 for c in ("ring", "star", "red object", "odd one out")}
        assert tests == {"ring": 0, "star": 1, "red object": 1, "odd one out": 2}  # round(0.34 n), ≥1 train
        assert {r["level"] for r in rows if r["concept"] == "odd one out"} == {"CR"}
        # The clamps: three images always give one test image, two always keep one train image.
        few = write_folder(str(tmp_path / "few"), items[3:6], test_fraction=0.1)
        many = write_folder(str(tmp_path / "many"), items[1:3], test_fraction=0.9)
        for folder, expected in ((few, ["test", "train", "train"]), (many, ["test", "train"])):
            with open(os.path.join(folder, "concepts.csv")) as f:
                assert sorted(r["split"] for r in csv.DictReader(f)) == expected
        mask = cv2.imread(os.path.join(root, "masks", "ring_000.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask).tolist()) == {0, 255}
        with pytest.raises(ValueError, match="not empty"):
            write_folder(root, items)

    def test_imports_into_fiftyone_with_concepts_levels_splits_and_masks(self, tmp_path, name):
        items = generate(["circle", "blue object", "camouflaged blob", "odd one out"], per_concept=3, seed=1)
        root = write_folder(str(tmp_path / "procedural"), items)
        report = import_dataset("folder", root, name)
        assert report.imported == 12 and report.splits == {"train": 8, "test": 4}
        assert report.binarised == [] and report.without_mask == []
        dataset = fo.load_dataset(name)
        assert dataset.distinct("concept") == ["blue object", "camouflaged blob", "circle", "odd one out"]
        assert dataset.distinct("level") == ["CD", "CI", "CR"]
        by_file = {f"{i.concept.replace(' ', '_')}_{k % 3:03d}.png": i for k, i in enumerate(items)}
        for sample in dataset:
            item = by_file[os.path.basename(sample.filepath)]
            assert sample.concept == item.concept and sample.level == item.level
            assert len(sample.tags) == 1 and sample.tags[0] in ("train", "test")
            np.testing.assert_array_equal(sample.ground_truth.get_mask(), item.mask.astype(np.uint8))
            np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(sample.filepath), cv2.COLOR_BGR2RGB), item.image)
