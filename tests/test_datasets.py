"""Importers: each layout built from the real demo images, read into a real FiftyOne dataset."""

import hashlib
import json
import os

import cv2
import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

from conceptseg import cli
from conceptseg.datasets import (
    DatasetExistsError,
    DatasetFormatError,
    MaskSizeError,
    fixtures,
    import_dataset,
)
from conceptseg.datasets.reasonseg import rasterise


@pytest.fixture
def benchmark_dir(demo_files, tmp_path):
    fixtures.write_conceptseg_benchmark(str(tmp_path / "cb"), demo_files)
    return tmp_path / "cb"


def _digests(root):
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in (os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)}


def _manifest(root):
    return json.load(open(root / "all_meta.json"))


def _save_manifest(root, meta):
    json.dump(meta, open(root / "all_meta.json", "w"))


class TestConceptSegBenchmark:
    def test_levels_concepts_splits_and_masks(self, benchmark_dir, name, tmp_path):
        before = _digests(benchmark_dir)
        report = import_dataset("conceptseg-benchmark", str(benchmark_dir), name, media_dir=str(tmp_path / "media"))
        assert report.imported == 12 and report.skipped == 0 and report.splits == {"train": 5, "test": 7}
        dataset = fo.load_dataset(name)
        assert dataset.persistent
        rows = set(zip(*dataset.values(["level", "category", "dataset_key", "concept"])))
        assert rows == {("CD", "Medical lesion", "isic2018", "nucleus"), ("CI", "Diverse Classes", "rare", "quokka"),
                        ("CR", "Consistency", "MIG_common_object", "nuclei")}
        assert sorted(dataset.match_tags("train").distinct("concept")) == ["nucleus", "quokka"]
        for sample in dataset:
            stored = sample.ground_truth.get_mask()
            assert sample.ground_truth.mask_path.startswith(str(tmp_path / "media"))
            assert stored.dtype == np.uint8 and set(np.unique(stored)) <= {0, 1}
            assert stored.shape == (sample.metadata.height, sample.metadata.width)
            assert stored.shape == cv2.imread(sample.filepath, cv2.IMREAD_UNCHANGED).shape[:2]
        assert _digests(benchmark_dir) == before  # the source is only read

    def test_multi_image_item_keeps_references_and_question(self, benchmark_dir, name):
        import_dataset("conceptseg-benchmark", str(benchmark_dir / "all_meta.json"), name)
        mig = fo.load_dataset(name).match({"level": "CR"}).first()
        item = _manifest(benchmark_dir)["test"]["MIG_common_object_nuclei"][0]
        assert mig.filepath == str(benchmark_dir / item["img_path"][-1])
        assert mig.references == [str(benchmark_dir / p) for p in item["img_path"][:-1]]
        assert mig.question == item["problem"] and mig.ref_boxes == item["ref_box"]
        source = cv2.imread(str(benchmark_dir / item["mask_path"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mig.ground_truth.get_mask(), (source > 127).astype(np.uint8))

    def test_cli_import_prints_the_report(self, benchmark_dir, name, capsys):
        assert cli.main(["import", "--format", "conceptseg-benchmark", str(benchmark_dir), "--dataset", name,
                         "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["imported"] == 12
        assert cli.main(["import", "--format", "conceptseg-benchmark", str(benchmark_dir), "--dataset", name]) == 2
        assert "--overwrite" in capsys.readouterr().err
        assert cli.main(["import", "--format", "conceptseg-benchmark", str(benchmark_dir), "--dataset", name,
                         "--overwrite"]) == 0
        assert "imported 12 samples" in capsys.readouterr().out


class TestBadBenchmarkInput:
    def test_missing_files_are_listed_skipped_and_counted(self, benchmark_dir, name):
        meta = _manifest(benchmark_dir)
        gone_mask = benchmark_dir / meta["test"]["isic2018_nucleus"][0]["mask_path"]
        gone_image = benchmark_dir / meta["train"]["rare_quokka"][0]["img_path"][0]
        os.remove(gone_mask), os.remove(gone_image)
        report = import_dataset("conceptseg-benchmark", str(benchmark_dir), name)
        assert sorted(report.missing) == sorted([str(gone_mask), str(gone_image)])
        assert report.skipped == 2 and report.imported == 10 and len(fo.load_dataset(name)) == 10

    def test_duplicates_and_invalid_entries(self, benchmark_dir, name):
        meta = _manifest(benchmark_dir)
        meta["test"]["isic2018_nucleus"].append(dict(meta["test"]["isic2018_nucleus"][1]))
        meta["test"]["isic2018_nucleus"].append({"img_path": ["x.png"]})  # no mask_path
        _save_manifest(benchmark_dir, meta)
        report = import_dataset("conceptseg-benchmark", str(benchmark_dir), name)
        assert len(report.duplicates) == 1 and "isic2018_nucleus[4]" in report.duplicates[0]
        assert len(report.invalid) == 1 and "mask_path" in report.invalid[0]
        assert report.imported == 12 and report.skipped == 2

    def test_mask_of_another_size_is_an_error_or_resized(self, benchmark_dir, name):
        mask_path = benchmark_dir / _manifest(benchmark_dir)["train"]["isic2018_nucleus"][0]["mask_path"]
        source = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(mask_path), cv2.resize(source, (256, 256), interpolation=cv2.INTER_NEAREST))
        with pytest.raises(MaskSizeError, match=f"{mask_path}.*256x256.*128x128.*resize_masks"):
            import_dataset("conceptseg-benchmark", str(benchmark_dir), name)
        assert not fo.dataset_exists(name)  # nothing half-imported is left behind
        report = import_dataset("conceptseg-benchmark", str(benchmark_dir), name, resize_masks=True)
        assert report.resized == [str(mask_path)]
        sample = fo.load_dataset(name).match(F("filepath").ends_with("r000_c000.png")).first()
        np.testing.assert_array_equal(sample.ground_truth.get_mask(), (source > 127).astype(np.uint8))

    def test_non_binary_masks_follow_the_documented_threshold(self, benchmark_dir, name):
        meta = _manifest(benchmark_dir)
        soft_path = benchmark_dir / meta["train"]["isic2018_nucleus"][0]["mask_path"]
        labels_path = benchmark_dir / meta["train"]["isic2018_nucleus"][1]["mask_path"]
        soft = np.tile(np.arange(128, dtype=np.uint8) * 2, (128, 1))  # 0..254: an 8-bit soft map
        labels = (cv2.imread(str(labels_path), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8) * 3  # label id 3
        cv2.imwrite(str(soft_path), soft), cv2.imwrite(str(labels_path), labels)
        report = import_dataset("conceptseg-benchmark", str(benchmark_dir), name)
        assert sorted(report.binarised) == sorted([str(soft_path), str(labels_path)])
        dataset = fo.load_dataset(name)
        by_file = {os.path.basename(s.filepath): s.ground_truth.get_mask() for s in dataset}
        np.testing.assert_array_equal(by_file[os.path.basename(soft_path)], (soft > 127).astype(np.uint8))
        np.testing.assert_array_equal(by_file[os.path.basename(labels_path)], (labels > 0).astype(np.uint8))

    def test_malformed_manifests(self, tmp_path, name):
        (tmp_path / "all_meta.json").write_text("{not json")
        with pytest.raises(DatasetFormatError, match="not valid JSON"):
            import_dataset("conceptseg-benchmark", str(tmp_path), name)
        (tmp_path / "all_meta.json").write_text(json.dumps({"train": []}))
        with pytest.raises(DatasetFormatError, match="must map splits"):
            import_dataset("conceptseg-benchmark", str(tmp_path), name)
        (tmp_path / "empty").mkdir()
        with pytest.raises(DatasetFormatError, match="No all_meta.json or data.json"):
            import_dataset("conceptseg-benchmark", str(tmp_path / "empty"), name)
        with pytest.raises(DatasetFormatError, match="does not exist"):
            import_dataset("conceptseg-benchmark", str(tmp_path / "nowhere"), name)
        with pytest.raises(DatasetFormatError, match="Unknown format 'coco'"):
            import_dataset("coco", str(tmp_path), name)
        assert not fo.dataset_exists(name)

    def test_existing_dataset_needs_overwrite(self, benchmark_dir, name):
        import_dataset("conceptseg-benchmark", str(benchmark_dir), name)
        with pytest.raises(DatasetExistsError, match="overwrite"):
            import_dataset("conceptseg-benchmark", str(benchmark_dir), name)
        assert import_dataset("conceptseg-benchmark", str(benchmark_dir), name, overwrite=True).imported == 12


class TestReasonSeg:
    def test_polygons_queries_and_ignore_regions(self, demo_files, tmp_path, name, capsys):
        root = fixtures.write_reasonseg(str(tmp_path / "rs"), demo_files)
        assert cli.main(["import", "--format", "reasonseg", root, "--dataset", name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["splits"] == {"test": 1, "val": 1}
        dataset = fo.load_dataset(name)
        quokka = dataset.match_tags("val").first()
        anno = json.load(open(os.path.join(root, "val", "quokka.json")))
        assert quokka.query == anno["text"][0] and quokka.queries == anno["text"] and quokka.is_sentence
        assert quokka.level == "ReasonSeg" and not dataset.has_field("concept")
        gt, ignore = quokka.ground_truth.get_mask() > 0, quokka.ignore_mask.get_mask() > 0
        image = cv2.imread(quokka.filepath)
        assert gt.shape == ignore.shape == image.shape[:2]  # original resolution
        height, width = gt.shape
        box = np.zeros_like(gt)
        box[: height // 4 + 1, : width // 4 + 1] = True
        np.testing.assert_array_equal(ignore, box)
        assert not (gt & ignore).any() and gt.sum() > 1000
        cells = dataset.match_tags("test").first()
        assert cells.query == "the cell nuclei" and cells.ignore_mask is None

    def test_lisa_draw_order_smaller_shapes_win(self):
        big = {"label": "target", "points": [[0, 0], [9, 0], [9, 9], [0, 9]]}
        hole = {"label": "ignore region", "points": [[3, 3], [6, 3], [6, 6], [3, 6]]}
        inner = {"label": "target", "points": [[4, 4], [5, 4], [5, 5], [4, 5]]}
        flag = {"label": "Flag", "points": [[10, 10], [11, 10], [11, 11]]}  # deprecated: dropped
        mask = rasterise([inner, hole, big, flag], (12, 12))
        assert mask[0, 0] == 1 and mask[3, 3] == 255 and mask[4, 4] == 1 and mask[9, 9] == 1
        assert mask[11, 11] == 0 and mask.shape == (12, 12)

    def test_unpaired_files_and_bad_json(self, demo_files, tmp_path, name):
        root = fixtures.write_reasonseg(str(tmp_path / "rs"), demo_files)
        os.remove(os.path.join(root, "test", "cells.json"))
        cv2.imwrite(os.path.join(root, "val", "quokka.png"), np.zeros((4, 4, 3), np.uint8))  # same stem
        with open(os.path.join(root, "val", "lonely.json"), "w") as f:
            json.dump({"text": ["x"], "shapes": []}, f)
        cv2.imwrite(os.path.join(root, "val", "broken.png"), np.zeros((4, 4, 3), np.uint8))
        with open(os.path.join(root, "val", "broken.json"), "w") as f:
            f.write('{"shapes": []}')
        report = import_dataset("reasonseg", root, name)
        assert report.imported == 1
        assert sorted(report.missing) == sorted([os.path.join(root, "test", "cells.json"),
                                                 os.path.join(root, "val", "lonely.jpg")])
        assert report.duplicates == [os.path.join(root, "val", "quokka.png")]
        assert len(report.invalid) == 1 and "broken.json" in report.invalid[0]
        assert report.skipped == 4


class TestFolder:
    def test_images_masks_and_concepts_csv(self, demo_files, tmp_path, name, capsys):
        root = fixtures.write_folder(str(tmp_path / "cells"), demo_files)
        assert cli.main(["import", "--format", "folder", root, "--dataset", name]) == 0
        assert "imported 7 samples" in capsys.readouterr().out
        dataset = fo.load_dataset(name)
        assert dataset.distinct("concept") == ["nucleus"] and dataset.distinct("dataset_key") == ["cells"]
        assert dataset.count_sample_tags() == {"train": 3, "test": 4}
        for sample in dataset:
            labels = cv2.imread(os.path.join(root, "masks", os.path.basename(sample.filepath)), cv2.IMREAD_UNCHANGED)
            assert labels.dtype == np.uint16 and labels.max() > 1  # instance ids: a label image, > 0
            np.testing.assert_array_equal(sample.ground_truth.get_mask(), (labels > 0).astype(np.uint8))

    def test_unmatched_and_duplicate_files(self, demo_files, tmp_path, name):
        root = fixtures.write_folder(str(tmp_path / "cells"), demo_files)
        first = sorted(os.listdir(os.path.join(root, "images")))[0]
        stem = os.path.splitext(first)[0]
        os.remove(os.path.join(root, "masks", first))
        cv2.imwrite(os.path.join(root, "images", stem + ".tif"), np.zeros((8, 8), np.uint8))
        cv2.imwrite(os.path.join(root, "masks", "orphan.png"), np.zeros((8, 8), np.uint8))
        with open(os.path.join(root, "concepts.csv"), "a") as f:
            f.write(f"{stem},cell,test\nghost.png,nucleus,test\n")
        report = import_dataset("folder", root, name, split="test")
        assert report.imported == 7 and report.without_mask == [os.path.join(root, "images", first)]
        assert report.duplicates == [os.path.join(root, "images", stem + ".tif"),
                                     f"{os.path.join(root, 'concepts.csv')}: {stem}"]
        assert sorted(report.missing) == [os.path.join(root, "images", "ghost.png"),
                                          os.path.join(root, "images", "orphan.*")]
        assert fo.load_dataset(name).exists("ground_truth", False).count() == 1

    def test_csv_needs_name_and_concept(self, demo_files, tmp_path, name):
        root = fixtures.write_folder(str(tmp_path / "cells"), demo_files)
        with open(os.path.join(root, "concepts.csv"), "w") as f:
            f.write("file,label\na,b\n")
        with pytest.raises(DatasetFormatError, match="name,concept"):
            import_dataset("folder", root, name)
        with pytest.raises(DatasetFormatError, match="No images/ folder"):
            import_dataset("folder", str(tmp_path), name)


class TestDatasetKeys:
    def test_levels_follow_the_method_table(self):
        from conceptseg.datasets.conceptseg_benchmark import level_of

        assert level_of("COD10K1024") == ("CD", "Camouflage") and level_of("ultra_rare") == ("CI", "Diverse Classes")
        assert level_of("MIG_view_diff") == ("CR", "Difference") and level_of("MIG_new_task") == ("CR", "Consistency")
        assert level_of("coco2014_Other") == ("CI", "Diverse Classes") and level_of("fewshot1000")[0] == "other"
        assert level_of("something") == ("other", "Unknown")

    def test_dataset_prefix_is_stripped_from_class_names(self):
        from conceptseg.datasets.conceptseg_benchmark import dataset_key_of, strip_prefix

        assert strip_prefix("coco2014_Living_golden_retriever", "coco2014_Living") == "golden_retriever"
        assert strip_prefix("DUTS", "DUTS") == "DUTS" and strip_prefix("dog", "rare") == "dog"
        assert dataset_key_of({}, "ultra_rare_axolotl") == "ultra_rare" and dataset_key_of({}, "x") == "unknown"
