"""The model zoo source and apply_model, with the tiny bundle built offline by the zoo itself."""

import os

import fiftyone as fo
import fiftyone.zoo as foz
import fiftyone.zoo.models as fozm
import numpy as np
import pytest

from conceptseg.model.checkpoint import BundleError
from conceptseg.model.zoo import ZOO, download_zoo_bundle
from conceptseg.errors import ConceptSegError
from conceptseg.metrics import score_sample

TINY = "conceptseg-tiny-random"


class TestZooSource:
    def test_source_and_models_are_listed(self, plugin_installed):
        # The manifest has no url (the project has no public home): FiftyOne lists its models
        # as remote ones but not the source; `register-source URL` would stamp the URL.
        assert set(ZOO) <= set(foz.list_zoo_models())
        assert all(isinstance(foz.get_zoo_model(n), fozm.RemoteZooModel) for n in ZOO)
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
        from conceptseg.runs.jobs import segment_by_query

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
        from conceptseg.testing import scripted_bundle

        _, path = foz.download_zoo_model(TINY)
        with scripted_bundle(path, "no tags here"):  # a random policy's text differs between CPUs
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

    def test_loads_without_arguments_and_apply_model_names_both_ways(self, plugin_installed, nuclei_dataset):
        from conceptseg.runs.zoo_model import ConceptSegModel

        model = foz.load_zoo_model(TINY)
        assert isinstance(model, ConceptSegModel)
        view = nuclei_dataset.limit(2)
        with pytest.raises(ConceptSegError, match=r"demonstrations=<view>.*text=") as error:
            view.apply_model(model, label_field="zoo", num_workers=0, skip_failures=False)
        assert "model.text" in str(error.value) and "load_zoo_model" in str(error.value)
        assert not nuclei_dataset.has_field("zoo") and nuclei_dataset.list_runs() == []

    def test_demonstrations_and_text_together_are_refused(self, plugin_installed):
        with pytest.raises(ConceptSegError, match="not both"):
            foz.load_zoo_model(TINY, text="the animal", demo_tag="demo")
        model = foz.load_zoo_model(TINY, text="the animal")
        with pytest.raises(ConceptSegError, match="not both"):
            model.demo_tag = "demo"

    def test_predict_on_a_plain_array(self, plugin_installed, nuclei_dataset):
        model = foz.load_zoo_model(TINY, text="the animal")
        label = model.predict(np.zeros((40, 60, 3), np.uint8))
        assert label.mask.shape == (40, 60)


class TestModelNames:
    def test_segment_accepts_a_zoo_name(self, plugin_installed, nuclei_dataset):
        from conceptseg.runs.jobs import segment_by_query

        summary = segment_by_query(nuclei_dataset.limit(1), "the animal", "zq", TINY)
        assert summary["segmented"] == 1 and summary["route"] == "reasoning"


def _masks(dataset, field):
    """Every sample's mask in ``field`` as bytes (None where absent): to compare before and after."""
    return [None if l is None else l.get_mask().tobytes() for l in dataset.values(field)]


class TestApplyModelRuns:
    def test_tag_set_on_the_model_records_a_run_and_skips_demonstrations(
            self, plugin_installed, nuclei_dataset, tmp_path):
        model = foz.load_zoo_model(TINY)
        model.demo_tag, model.mask_field = "demo", "ground_truth"
        nuclei = nuclei_dataset.load_saved_view("nuclei")  # 16 tiles, 3 of them demonstrations
        nuclei.apply_model(model, label_field="zoo", batch_size=4, num_workers=0, skip_failures=False,
                           output_dir=str(tmp_path / "masks"))
        demos = nuclei_dataset.match_tags("demo")
        assert demos.values("zoo") == [None, None, None]  # never their own targets
        targets = nuclei.match_tags("demo", bool=False)
        labels = targets.values("zoo")
        assert len(labels) == 13 and all(l is not None for l in labels)
        info = nuclei_dataset.get_run_info("conceptseg_zoo")
        assert info.config.entry == "apply_model" and info.config.pred_field == "zoo"
        assert sorted(info.config.demonstration_ids) == sorted(demos.values("id"))
        assert all(l.run_key == "conceptseg_zoo" and l.run_id == info.config.run_id for l in labels)
        assert all(l.route == "appearance" and l.verified is True and l.cost > 0 for l in labels)
        assert all(l.verification == pytest.approx(info.config.verification) for l in labels)
        summary = nuclei_dataset.load_run_results("conceptseg_zoo").summary
        assert summary["targets"] == 13 and summary["segmented"] == 13 and summary["failures"] == []
        assert sorted(nuclei_dataset.load_run_view("conceptseg_zoo").values("id")) == sorted(targets.values("id"))
        assert {"zoo.route", "zoo.verified", "zoo.verification", "zoo.cost"} <= set(
            nuclei_dataset.get_field_schema(flat=True))

    def test_text_set_on_the_model(self, plugin_installed, nuclei_dataset):
        model = foz.load_zoo_model(TINY)
        model.text = "the animal"
        view = nuclei_dataset.limit(2)
        view.apply_model(model, label_field="q", batch_size=2, num_workers=0, skip_failures=False)
        assert all(l.route == "reasoning" and l.run_key == "conceptseg_q" for l in view.values("q"))
        assert nuclei_dataset.get_run_info("conceptseg_q").config.query == "the animal"

    @pytest.mark.parametrize("output, label_field", [("segmentation", "ground_truth"), ("both", "ground")])
    def test_writing_into_the_mask_field_is_refused_before_anything_is_written(
            self, plugin_installed, nuclei_dataset, output, label_field):
        from conceptseg.errors import FieldError

        before, mask_targets = _masks(nuclei_dataset, "ground_truth"), dict(nuclei_dataset.mask_targets)
        model = foz.load_zoo_model(TINY, demo_tag="demo", mask_field="ground_truth", output=output)
        if output == "both":  # writes ground_segmentation and ground_instances: only a clash is refused
            model.mask_field = "ground_segmentation"
            nuclei_dataset.clone_sample_field("ground_truth", "ground_segmentation")
            before = _masks(nuclei_dataset, "ground_segmentation")
        with pytest.raises(FieldError, match="demonstrations' mask field"):
            nuclei_dataset.apply_model(model, label_field=label_field, num_workers=0, skip_failures=False)
        field = "ground_truth" if output == "segmentation" else "ground_segmentation"
        assert _masks(nuclei_dataset, field) == before
        assert nuclei_dataset.list_runs() == [] and dict(nuclei_dataset.mask_targets) == mask_targets
        assert not nuclei_dataset.has_field("ground_instances")


@pytest.mark.sam3
class TestReleaseThroughAStandInHub:
    """The 7B entry against a local stand-in for the Hub serving tiny weights in the release's
    layout under the real names: everything lands in the zoo dir, then loads offline."""

    @pytest.fixture
    def hub(self, tmp_path, monkeypatch):
        import huggingface_hub.constants

        from conceptseg.model.checkpoint import load_bundle
        from conceptseg.testing import (TINY_BASE_ID, StandInHub, build_tiny_bundle, build_tiny_sam3,
                                        write_release_layout)

        tiny = build_tiny_bundle(str(tmp_path / "tiny"), translator_heads=16, tie_embeddings=False)
        release = write_release_layout(str(tmp_path / "release"), os.path.join(tiny, "policy"),
                                       load_bundle(tiny).translator, processor_files=False)
        sam3 = build_tiny_sam3(str(tmp_path / "sam3"))
        server = StandInHub({"zhaoyuan666/ConceptSeg-R1-7B": release, "facebook/sam3": sam3,
                             TINY_BASE_ID: os.path.join(tiny, "policy")}, gated={"facebook/sam3": "hf_granted"})
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("CONCEPTSEG_DOWNLOAD_ANYWAY", "1")  # past the GPU check: this machine has none
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run offline
        yield server
        server.close()

    def test_everything_lands_in_the_zoo_dir_and_loads_offline(self, hub, tmp_path, monkeypatch):
        import huggingface_hub.constants

        from conceptseg.model.checkpoint import load_bundle
        from conceptseg.model.zoo import is_downloaded

        monkeypatch.setenv("HF_TOKEN", "hf_granted")
        path = download_zoo_bundle("conceptseg-r1-7b", str(tmp_path / "zoo" / "conceptseg-r1-7b"))
        assert is_downloaded(path) and os.path.isfile(os.path.join(path, "sam3", "model.safetensors"))
        assert {"tokenizer_config.json", "processor_config.json"} <= set(os.listdir(path)), os.listdir(path)  # the base's processor files
        assert not os.path.exists(os.path.join(path, "model.safetensors"))  # not the base's weights
        fetched = {p.split("/resolve/")[0] for m, p in hub.requests if "/resolve/" in p}
        assert fetched == {"zhaoyuan666/ConceptSeg-R1-7B", "facebook/sam3", "conceptseg-tests/tiny-qwen2.5-vl"}
        hub.close()
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.delenv("HF_TOKEN")
        bundle = load_bundle(path)
        assert type(bundle.segmenter).__name__ == "Sam3Segmenter"
        assert bundle.segmenter.config.path == os.path.join(path, "sam3")
        assert bundle.policy.config.max_new_tokens == 2048

    @pytest.mark.parametrize("token", [None, "hf_not_granted"])
    def test_a_missing_or_refused_token_says_what_to_do(self, hub, tmp_path, monkeypatch, token):
        from conceptseg.model.zoo import GatedModelError

        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        else:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        target = tmp_path / "zoo" / "conceptseg-r1-7b"
        with pytest.raises(GatedModelError, match=r"facebook/sam3 is gated: request access on "
                                                  r"https://huggingface.co/facebook/sam3.*set HF_TOKEN.*FiftyOne secret"):
            download_zoo_bundle("conceptseg-r1-7b", str(target))
        assert not target.exists() and os.listdir(tmp_path / "zoo") == []
