"""The plugin as FiftyOne sees it: links, registry, forms, immediate and delegated runs."""

import os

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError
from fiftyone.operators.registry import OperatorRegistry

from conceptseg.errors import SetupError
from conceptseg.install import PLUGIN_NAME, install_plugin, repo_root, setup_database

SEGMENT = f"{PLUGIN_NAME}/segment_by_demonstration"
EVALUATE = f"{PLUGIN_NAME}/evaluate_concept_segmentation"
TRAIN = f"{PLUGIN_NAME}/train_concept_policy"


class TestInstallPlugin:
    def test_links_plugin_and_zoo_idempotently(self, tmp_path):
        plugins, zoo = tmp_path / "plugins", tmp_path / "zoo"
        first = install_plugin(str(plugins), str(zoo))
        second = install_plugin(str(plugins), str(zoo))
        link = plugins / "@conceptseg" / "conceptseg-r1"
        assert os.path.realpath(link) == os.path.realpath(repo_root())
        assert os.path.isfile(zoo / "conceptseg" / "conceptseg-models" / "manifest.json")
        assert all(m.startswith("linked") for m in first)
        assert all("already links" in m for m in second)

    def test_never_replaces_a_foreign_directory(self, tmp_path):
        foreign = tmp_path / "plugins" / "@conceptseg" / "conceptseg-r1"
        foreign.mkdir(parents=True)
        (foreign / "keep.txt").write_text("someone else's")
        with pytest.raises(SetupError, match="not a link made by conceptseg"):
            install_plugin(str(tmp_path / "plugins"), str(tmp_path / "zoo"))
        assert (foreign / "keep.txt").read_text() == "someone else's"

    def test_other_plugins_are_untouched(self, tmp_path):
        other = tmp_path / "plugins" / "@someone" / "other"
        other.mkdir(parents=True)
        (other / "fiftyone.yml").write_text("name: '@someone/other'\n")
        install_plugin(str(tmp_path / "plugins"), str(tmp_path / "zoo"))
        assert (other / "fiftyone.yml").read_text() == "name: '@someone/other'\n"

    def test_database_is_usable(self):
        assert "mongod" in setup_database() or "FIFTYONE_DATABASE_URI" in setup_database()


class TestRegistry:
    def test_every_listed_operator_registers_without_errors(self, plugin_installed):
        registry = OperatorRegistry()
        uris = {op.uri for op in registry.list_operators(type="operator") if op.uri.startswith(PLUGIN_NAME)}
        metrics = {f"{PLUGIN_NAME}/concept_{m}" for m in ("iou", "dice", "wfm", "sm")}
        loop = {f"{PLUGIN_NAME}/{n}" for n in ("accept_targets", "reject_targets", "promote_corrections",
                                               "rerun_review", "save_concept", "apply_concept",
                                               "update_concept", "correct_most_doubtful")}
        assert uris == {SEGMENT, EVALUATE, TRAIN, f"{PLUGIN_NAME}/segment_by_query",
                        f"{PLUGIN_NAME}/delete_concept_run", f"{PLUGIN_NAME}/segment_shard"} | metrics | loop
        assert registry.list_errors() == []

    def test_plugin_import_loads_no_heavy_packages(self):
        import subprocess
        import sys

        # Whatever FiftyOne itself imports is not ours to avoid; compare against it.
        code = (
            "import sys, importlib.util, fiftyone.operators;"
            "before = set(sys.modules);"
            f"spec = importlib.util.spec_from_file_location('cs_plugin', {os.path.join(repo_root(), '__init__.py')!r},"
            f" submodule_search_locations=[{repo_root()!r}]);"
            "m = importlib.util.module_from_spec(spec); sys.modules['cs_plugin'] = m; spec.loader.exec_module(m);"
            "new = {k.split('.')[0] for k in set(sys.modules) - before};"
            "print(sorted(new & {'torch', 'sklearn', 'skimage', 'transformers', 'sam2', 'peft', 'conceptseg'}))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"


class TestSegmentOperator:
    def _params(self, **extra):
        return {"demo_source": "selected", "mask_field": "ground_truth", "pred_field": "op_pred", **extra}

    def test_immediate_run_on_selected_samples(self, plugin_installed, nuclei_dataset):
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        demo_ids = nuclei.match_tags("demo").values("id")
        result = foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, view=nuclei, selected=demo_ids,
            params=self._params(view_target="CURRENT_VIEW", concept="nucleus"),
        )
        assert result.error is None
        assert result.result["route"] == "appearance" and result.result["segmented"] == 13
        requests = result.executor.to_json()["requests"]
        assert any(r.get("operator_uri") == "reload_dataset" for r in requests)
        assert len(nuclei_dataset.exists("op_pred")) == 13
        assert nuclei_dataset.match({"concept": "animal"}).first().op_pred is None

    def test_resize_masks_and_no_instances_as_on_the_cli(self, plugin_installed, nuclei_dataset):
        import cv2

        nuclei = nuclei_dataset.load_saved_view("nuclei")
        demo_ids = nuclei.match_tags("demo").values("id")
        small = nuclei_dataset[demo_ids[0]]
        mask = small.ground_truth.get_mask()
        small.ground_truth = fo.Segmentation(mask=cv2.resize(mask, (mask.shape[1] // 2, mask.shape[0] // 2),
                                                             interpolation=cv2.INTER_NEAREST))
        small.save()
        ctx = dict(dataset=nuclei_dataset, view=nuclei, selected=demo_ids)
        with pytest.raises(ExecutionError, match="pass resize_masks"):
            foo.execute_operator(SEGMENT, **ctx, params=self._params(view_target="CURRENT_VIEW"))
        assert not nuclei_dataset.has_field("op_pred") or len(nuclei_dataset.exists("op_pred")) == 0
        result = foo.execute_operator(SEGMENT, **ctx, params=self._params(
            view_target="CURRENT_VIEW", resize_masks=True, instances=False, overwrite=True))
        assert result.error is None and result.result["segmented"] == 13
        assert len(nuclei_dataset.exists("op_pred")) == 13
        assert not nuclei_dataset.has_field("op_pred_instances")

    def test_delegated_run_by_tag_reports_progress(self, plugin_installed, nuclei_dataset):
        nuclei_dataset.persistent = True
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        queued = foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, view=nuclei, request_delegation=True,
            params=self._params(demo_source="tag", demo_tag="demo", view_target="CURRENT_VIEW"),
        )
        assert queued.delegated is True
        service = DelegatedOperationService()
        service.execute_queued_operations(operator=SEGMENT, dataset_name=nuclei_dataset.name, limit=1)
        doc = service.get(queued.result["id"])
        assert doc.run_state == "completed", doc.run_state
        assert doc.result.result["segmented"] == 13
        assert doc.status.progress == pytest.approx(1.0)
        assert len(nuclei_dataset.exists("op_pred")) == 13

    def test_shards_field_queues_the_run_for_workers(self, plugin_installed, nuclei_dataset):
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        result = foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, view=nuclei, selected=nuclei.match_tags("demo").values("id"),
            params=self._params(view_target="CURRENT_VIEW", route="appearance", shards=2),
        )
        assert result.error is None and result.result["queued"] and result.result["shards"] == 2
        assert not nuclei_dataset.has_field("op_pred") or len(nuclei_dataset.exists("op_pred")) == 0
        shard = f"{PLUGIN_NAME}/segment_shard"
        done = DelegatedOperationService().execute_queued_operations(operator=shard, dataset_name=nuclei_dataset.name)
        assert [r.error for r in done] == [None, None]
        assert len(nuclei_dataset.exists("op_pred")) == 13

    def test_form_flags_an_existing_output_field(self, plugin_installed, nuclei_dataset):
        nuclei_dataset.add_sample_field("op_pred", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
        ctx = dict(dataset=nuclei_dataset, selected=nuclei_dataset.match_tags("demo").values("id"))
        with pytest.raises(ExecutionError, match="'op_pred' exists: tick overwrite or resume"):
            foo.execute_operator(SEGMENT, **ctx, params=self._params(view_target="DATASET"))
        assert len(nuclei_dataset.exists("op_pred")) == 0

    def test_form_without_selection_asks_for_one(self, plugin_installed, nuclei_dataset):
        with pytest.raises(ExecutionError, match="demo_count"):
            foo.execute_operator(SEGMENT, dataset=nuclei_dataset, params=self._params(view_target="DATASET"))
        assert not nuclei_dataset.has_field("op_pred")


class TestTrainOperator:
    @pytest.fixture
    def shapes(self, tmp_path):
        """3 procedural concepts × 3 images (2 train, 1 test each); import makes it persistent."""
        import uuid

        from conceptseg.datasets import import_dataset
        from conceptseg.training.procedural import generate, write_folder

        name = f"train-op-{uuid.uuid4().hex[:8]}"
        items = generate(["circle", "square", "red object"], per_concept=3, size=96)
        import_dataset("folder", write_folder(str(tmp_path / "shapes"), items), name)
        yield fo.load_dataset(name)
        fo.delete_dataset(name)

    def test_is_listed_for_delegation_only(self, plugin_installed):
        op = next(o for o in OperatorRegistry().list_operators() if o.uri == TRAIN)
        assert not op.config.unlisted
        assert (op.config.allow_immediate_execution, op.config.allow_delegated_execution) == (False, True)

    def test_an_sdk_run_is_queued_and_a_worker_trains_one_step(self, plugin_installed, shapes, tiny_bundle_dir,
                                                                 tmp_path):
        out = str(tmp_path / "trained")
        queued = foo.execute_operator(TRAIN, dataset=shapes, params=dict(
            view_target="DATASET", concept_field="concept", mask_field="ground_truth", model=tiny_bundle_dir,
            out_dir=out, stage="1", steps=1, test_tag="test"))
        assert queued.delegated is True  # no request_delegation: a delegated-only operator is queued anyway
        service = DelegatedOperationService()
        service.execute_queued_operations(operator=TRAIN, dataset_name=shapes.name, limit=1)
        doc = service.get(queued.result["id"])
        assert doc.run_state == "completed", doc.run_state
        result = doc.result.result
        assert result["bundle"] == out and result["steps"] == 1 and result["stage"] == 1
        assert result["episodes"]["episodes"] == 6 and result["run_key"] in shapes.list_runs()
        assert doc.status.progress == pytest.approx(1.0) and doc.status.label.startswith("step 1/1: loss ")
        assert os.path.isfile(os.path.join(out, "bundle.json"))


class TestEvaluateOperator:
    def test_scores_and_stores(self, plugin_installed, nuclei_dataset):
        nuclei = nuclei_dataset.load_saved_view("nuclei")
        foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, view=nuclei, selected=nuclei.match_tags("demo").values("id"),
            params=dict(demo_source="selected", mask_field="ground_truth", pred_field="p", view_target="CURRENT_VIEW"),
        )
        result = foo.execute_operator(
            EVALUATE, dataset=nuclei_dataset, view=nuclei,
            params=dict(pred_field="p", gt_field="ground_truth", eval_key="ev", view_target="CURRENT_VIEW"),
        )
        assert result.error is None
        assert result.result["scored"] == 13 and result.result["missing_pred"] == 3
        assert result.result["metrics"]["iou"] >= 0.8
        assert len(nuclei_dataset.exists("ev_concept_wfm")) == 13


class TestCustomEvaluationMetrics:
    def test_fiftyone_evaluation_gains_true_iou_and_dice(self, plugin_installed, nuclei_dataset):
        from conceptseg.runs.evaluation import evaluate

        nuclei = nuclei_dataset.load_saved_view("nuclei")
        foo.execute_operator(
            SEGMENT, dataset=nuclei_dataset, view=nuclei, selected=nuclei.match_tags("demo").values("id"),
            params=dict(demo_source="selected", mask_field="ground_truth", pred_field="p", view_target="CURRENT_VIEW"),
        )
        targets = nuclei.exists("p")
        uris = [f"{PLUGIN_NAME}/concept_{m}" for m in ("iou", "dice", "wfm", "sm")]
        results = targets.evaluate_segmentations("p", gt_field="ground_truth", eval_key="fo", custom_metrics=uris,
                                                 compute_dice=True)
        ours = evaluate(targets, "p", "ground_truth", eval_key="cs")["metrics"]
        for uri, name in zip(uris, ("iou", "dice", "wfm", "sm")):
            assert results.custom_metrics[uri]["value"] == pytest.approx(ours[name], abs=1e-9)
        assert targets.values("fo_concept_iou") == pytest.approx(targets.values("cs_concept_iou"))
        # FiftyOne's own Dice field under the same key is its own, not overwritten by ours
        assert targets.values("fo_concept_dice") == pytest.approx(targets.values("cs_concept_dice"))
        assert len(targets.exists("fo_dice")) == len(targets.exists("fo_concept_dice")) == len(targets)
        # FiftyOne's own per-sample accuracy on binary masks is foreground IoU too (metrics.md §4)
        assert targets.values("fo_accuracy") == pytest.approx(targets.values("cs_concept_iou"), abs=1e-9)
