"""The model zoo source and apply_model, with the tiny bundle built offline by the zoo itself."""

import os

import fiftyone as fo
import fiftyone.zoo as foz
import numpy as np
import pytest

from conceptseg.checkpoint import ZOO, BundleError, download_zoo_bundle
from conceptseg.errors import ConceptSegError
from conceptseg.metrics import score_sample

TINY = "conceptseg-tiny-random"


class TestZooSource:
    def test_source_and_models_are_listed(self, plugin_installed):
        assert any("conceptseg" in s for s in foz.list_zoo_model_sources())
        assert set(ZOO) <= set(foz.list_zoo_models())
        assert not os.path.islink(os.path.join(fo.config.model_zoo_dir, "conceptseg", "conceptseg-models"))

    def test_download_is_idempotent_and_lands_in_the_zoo_dir(self, plugin_installed):
        _, path = foz.download_zoo_model(TINY)
        assert path.startswith(fo.config.model_zoo_dir)
        assert os.path.isfile(os.path.join(path, "bundle.json"))
        stamp = os.path.getmtime(os.path.join(path, "bundle.json"))
        foz.download_zoo_model(TINY)
        assert os.path.getmtime(os.path.join(path, "bundle.json")) == stamp

    def test_failed_download_leaves_no_directory(self, tmp_path, monkeypatch):
        monkeypatch.setenv("CONCEPTSEG_DOWNLOAD_ANYWAY", "1")  # past the GPU and disk check, to the download
        target = tmp_path / "conceptseg-r1-7b"
        with pytest.raises(BundleError, match="Could not download"):
            download_zoo_bundle("conceptseg-r1-7b", str(target))  # no network for weights here
        assert not target.exists()
        assert [p for p in os.listdir(tmp_path)] == []

    def test_unknown_names_list_the_known_ones(self, tmp_path, nuclei_dataset):
        from conceptseg.jobs import segment_by_query

        with pytest.raises(BundleError, match="known: conceptseg-r1-7b"):
            download_zoo_bundle("conceptseg-huge", str(tmp_path / "x"))
        with pytest.raises(ConceptSegError, match="conceptseg-tiny-random"):
            segment_by_query(nuclei_dataset, "the animal", "q", "no-such-model")


class TestApplyModel:
    def test_demonstrations_mode_on_mixed_sizes_in_batches(self, plugin_installed, nuclei_dataset, tmp_path):
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        model = foz.load_zoo_model(TINY, demonstrations=nuclei.match_tags("demo"), mask_field="ground_truth",
                                   concept="nucleus", output="both")
        assert model.choice.route.name == "appearance"
        targets = nuclei_dataset.match_tags("demo", bool=False)  # 13 tiles of 128² + the 643x960 quokka
        targets.apply_model(model, label_field="zoo", batch_size=4, num_workers=0, skip_failures=False,
                            output_dir=str(tmp_path / "masks"))
        assert len(targets.exists("zoo_segmentation")) == 14
        quokka = targets.match({"concept": "animal"}).first()
        assert quokka.zoo_segmentation.get_mask().shape == (643, 960)
        tile = targets.match({"concept": "nucleus"}).first()
        seg = tile.zoo_segmentation
        assert seg.mask_path and seg.mask_path.startswith(str(tmp_path / "masks"))
        assert seg.route == "appearance" and seg.verified is True
        assert score_sample(seg.get_mask(), tile.ground_truth.get_mask())["iou"] >= 0.7
        assert all(d.confidence > 0 for d in tile.zoo_instances.detections)

    def test_query_mode_with_the_reasoning_route(self, plugin_installed, nuclei_dataset):
        model = foz.load_zoo_model(TINY, text="the animal")
        view = nuclei_dataset.limit(2)
        view.apply_model(model, label_field="q", batch_size=2, num_workers=0, skip_failures=False)
        labels = view.values("q")
        assert all(l is not None and l.route == "reasoning" and l.parse_error for l in labels)
        assert labels[0].mask.shape == (128, 128)

    def test_local_bundle_path_replaces_the_download(self, plugin_installed, nuclei_dataset):
        _, path = foz.download_zoo_model(TINY)
        model = foz.load_zoo_model(TINY, bundle=path, text="the animal")
        assert model.router.routes[0].bundle.path == path

    def test_either_demonstrations_or_text(self, plugin_installed):
        with pytest.raises(ConceptSegError, match="either demonstrations"):
            foz.load_zoo_model(TINY)

    def test_predict_on_a_plain_array(self, plugin_installed, nuclei_dataset):
        model = foz.load_zoo_model(TINY, text="the animal")
        label = model.predict(np.zeros((40, 60, 3), np.uint8))
        assert label.mask.shape == (40, 60)


class TestModelNames:
    def test_segment_accepts_a_zoo_name(self, plugin_installed, nuclei_dataset):
        from conceptseg.jobs import segment_by_query

        summary = segment_by_query(nuclei_dataset.limit(1), "the animal", "zq", TINY)
        assert summary["segmented"] == 1 and summary["route"] == "reasoning"
