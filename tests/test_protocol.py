"""The benchmark protocol on imported fixtures: scores match the stored masks, runs resume."""

import json
import os
import uuid

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

from conceptseg import cli
from conceptseg.datasets import fixtures, import_dataset
from conceptseg.errors import ConceptSegError, FieldError
from conceptseg.metrics import score_sample
from conceptseg.runs.protocol import draw_demonstrations, run_benchmark
from conceptseg.tables import percent

CONCEPT_KEYS = ("iou", "wfm", "sm", "em", "mae", "dice", "ber", "miou")


def _import(fmt, path, tmp):
    name = f"bench-{uuid.uuid4().hex[:8]}"
    import_dataset(fmt, path, name, media_dir=os.path.join(tmp, "media-" + name))
    return fo.load_dataset(name)


@pytest.fixture(scope="module")
def scored(demo_files, tmp_path_factory):
    """The conceptseg-benchmark fixture imported and benchmarked once (appearance route)."""
    tmp = str(tmp_path_factory.mktemp("protocol"))
    layout = fixtures.write_conceptseg_benchmark(os.path.join(tmp, "cb"), demo_files)
    dataset = _import("conceptseg-benchmark", layout, tmp)
    results = run_benchmark(dataset, route="appearance")
    yield dataset, results
    fo.delete_dataset(dataset.name)


def _direct(sample, size=600):
    """Metrics recomputed from the stored prediction and ground-truth PNGs."""
    return score_sample(sample.benchmark_pred.get_mask(), sample.ground_truth.get_mask(), size=size)


class TestConceptProtocol:
    def test_table_matches_metrics_on_the_stored_masks(self, scored):
        dataset, results = scored
        direct = {s.id: _direct(s) for s in dataset.match(F("benchmark_scored") == True)}  # noqa: E712
        assert len(direct) == 6 and set(direct) == set(results["samples"])
        for sample_id, scores in direct.items():
            for key in CONCEPT_KEYS:
                assert results["samples"][sample_id][key] == pytest.approx(scores[key], abs=1e-12)
                assert dataset[sample_id][f"benchmark_{key}"] == pytest.approx(scores[key], abs=1e-12)
        for level, concept in (("CD", "isic2018/nucleus"), ("CI", "rare/quokka")):
            mine = [direct[i] for i, s in results["samples"].items() if s["group"] == concept]
            for key in ("wfm", "sm", "miou", "iou"):
                expected = float(np.mean([m[key] for m in mine]))
                assert results["concepts"][concept][key] == pytest.approx(expected, abs=1e-12)
                assert results["levels"][level][key] == pytest.approx(expected, abs=1e-12)
            row = next(line for line in results["tables"][level].splitlines() if concept.split("/")[1] in line)
            cells = [c.strip() for c in row.strip("|").split("|")]
            means = [percent(np.mean([m[k] for m in mine])) for k in ("wfm", "sm", "miou", "iou")]
            assert cells[3:] == [str(len(mine))] + means
        assert results["levels"]["CD"]["n"] == 4 and results["concepts"]["isic2018/nucleus"]["wfm"] > 0.8

    def test_demonstrations_come_from_train_of_the_same_concept(self, scored):
        dataset, results = scored
        for key, concept in (("isic2018/nucleus", "nucleus"), ("rare/quokka", "quokka")):
            train = dataset.match_tags("train").match(F("concept") == concept)
            demos = results["concepts"][key]["demonstrations"]
            assert demos and set(demos) <= set(train.values("id"))
        pool = dataset.match_tags("train").match(F("concept") == "nucleus")

        def draw(seed):
            return [d.id for d in draw_demonstrations(dataset, pool, 2, seed, "isic2018/nucleus", "ground_truth")]

        assert draw(0) == draw(0) and len({tuple(draw(s)) for s in range(6)}) > 1

    def test_counts_skips_labels_and_run_record(self, scored):
        dataset, results = scored
        assert results["counts"] == dict(targets=7, no_ground_truth=0, no_concept=0, no_train=0, needs_model=1,
                                         scored_before=0, scored_now=6, failed=0)
        mig = results["concepts"]["MIG_common_object/nuclei"]
        assert mig["n"] == 0 and "multi-image items need the reasoning route" in mig["skipped"]
        assert "| **mean** |  |  | 0 | **—** |" in results["tables"]["CR"]
        assert sorted(results["tables"]) == ["CD", "CI", "CR"] and "### CD" in results["markdown"]
        json.dumps(results)
        assert dataset.match_tags("train").exists("benchmark_pred").count() == 0
        sample = dataset.exists("benchmark_pred").first()
        label = sample.benchmark_pred
        assert label.route == "appearance" and label.run_key == "benchmark" and label.verified is True
        assert label.get_mask().shape == (sample.metadata.height, sample.metadata.width)
        info = dataset.get_run_info("benchmark")
        assert info.config.seed == 0 and info.config.num_demonstrations == 3 and info.config.route == "appearance"
        assert dataset.load_run_results("benchmark").levels["CD"]["n"] == 4

    def test_resume_skips_scored_samples(self, scored, capsys):
        dataset, results = scored
        redo = dataset.match_tags("test").match(F("concept") == "nucleus").first()
        others = {s.id: os.path.getmtime(s.benchmark_pred.mask_path) for s in dataset.exists("benchmark_pred")}
        redo.benchmark_scored = False
        redo.save()
        again = run_benchmark(dataset, route="appearance")
        assert again["counts"]["scored_before"] == 5 and again["counts"]["scored_now"] == 1
        for key in CONCEPT_KEYS:  # the same seeded demonstrations give the same mask
            assert again["samples"][redo.id][key] == pytest.approx(results["samples"][redo.id][key], abs=1e-12)
        rewritten = [i for i, t in others.items() if os.path.getmtime(dataset[i].benchmark_pred.mask_path) != t]
        assert rewritten in ([], [redo.id])  # only the unscored sample is segmented again
        assert cli.main(["benchmark", "--dataset", dataset.name, "--route", "appearance"]) == 0
        out = capsys.readouterr().out
        assert "scored 0 now and 6 before" in out and results["tables"]["CD"] in out
        with pytest.raises(ConceptSegError, match="seed=0.*--restart"):
            run_benchmark(dataset, route="appearance", seed=1)

    def test_run_key_of_another_kind_is_refused(self, scored):
        dataset, _ = scored
        dataset.add_sample_field("taken_iou", fo.FloatField)
        with pytest.raises(FieldError, match="taken_iou"):
            run_benchmark(dataset, route="appearance", run_key="taken")
        with pytest.raises(ConceptSegError, match="needs a model"):
            run_benchmark(dataset, route="reasoning")


class TestMultiImageItems:
    def test_cr_items_are_scored_with_their_own_references_and_question(self, demo_files, tmp_path, tiny_bundle_dir):
        import dataclasses

        from conceptseg.model.checkpoint import load_bundle
        from conceptseg.testing import ScriptedPolicy

        seen = []

        class Recording(ScriptedPolicy):
            def generate(self, requests, **kwargs):
                seen.extend(requests)
                return super().generate(requests, **kwargs)

        bundle = load_bundle(tiny_bundle_dir)
        text = "<think>t</think><rule>r</rule><bbox>[0, 0, 599, 599]</bbox><answer>nuclei</answer>"
        bundle = dataclasses.replace(bundle, policy=Recording(bundle.policy, text))
        layout = fixtures.write_conceptseg_benchmark(str(tmp_path / "cb"), demo_files)
        dataset = _import("conceptseg-benchmark", layout, str(tmp_path))
        cr = dataset.match(F("level") == "CR").first()
        results = run_benchmark(dataset, route="reasoning", model=bundle)
        assert results["levels"]["CR"]["n"] == 1 and "wfm" in results["levels"]["CR"]
        assert results["samples"][cr.id]["level"] == "CR" and "| **mean** |" in results["tables"]["CR"]
        asked = [r for r in seen if r.text.find(cr.question) >= 0 and cr.question not in ("nucleus", "quokka")]
        assert len(asked) == 1 and len(asked[0].images) == 2  # its references' canvas, then the target
        assert "<check>" not in asked[0].text  # no box withheld: the references have no masks
        from conceptseg.model.episode import build_reference_episode
        from conceptseg.imaging import load_rgb

        canvas = build_reference_episode([load_rgb(p) for p in cr.references], load_rgb(cr.filepath)).canvas
        assert np.array_equal(asked[0].images[0], canvas)
        assert json.loads(json.dumps(results))["levels"]["CR"]["n"] == 1
        assert dataset[cr.id].benchmark_pred.answer == "nuclei"
        fo.delete_dataset(dataset.name)


class TestFolderFromTheCli:
    def test_benchmark_json_and_restart(self, demo_files, tmp_path, capsys):
        dataset = _import("folder", fixtures.write_folder(str(tmp_path / "cells"), demo_files), str(tmp_path))
        args = ["benchmark", "--dataset", dataset.name, "--route", "appearance", "--json"]
        assert cli.main(args) == 0
        results = json.loads(capsys.readouterr().out)
        assert set(results["levels"]) == {"custom"} and results["levels"]["custom"]["n"] == 4
        for sample in dataset.match_tags("test"):
            assert results["samples"][sample.id]["wfm"] == pytest.approx(_direct(sample)["wfm"], abs=1e-12)
        assert cli.main(args + ["--seed", "1"]) == 2 and "--restart" in capsys.readouterr().err
        assert cli.main(args + ["--seed", "1", "--restart", "--demonstrations", "1"]) == 0
        again = json.loads(capsys.readouterr().out)["concepts"]["cells/nucleus"]
        assert again["n"] == 4 and len(again["demonstrations"]) == 1
        assert again["verification"] is None and again["verified"] is False  # one demonstration: nothing held out


class TestReasonSeg:
    def test_without_a_model_queries_are_skipped_and_counted(self, demo_files, tmp_path, capsys):
        dataset = _import("reasonseg", fixtures.write_reasonseg(str(tmp_path / "rs"), demo_files), str(tmp_path))
        assert cli.main(["benchmark", "--dataset", dataset.name]) == 0
        out = capsys.readouterr().out
        assert "### ReasonSeg-test" in out and "### ReasonSeg-val" in out and "text query without model 2" in out

    def test_with_a_model_scored_at_original_resolution(self, demo_files, tmp_path, tiny_bundle_dir):
        from conceptseg.model.checkpoint import load_bundle

        bundle = load_bundle(tiny_bundle_dir)  # a fresh copy: the test shortens its generation
        bundle.policy.config.max_new_tokens = 8  # a random policy: any text will do, shorter is faster
        root = fixtures.write_reasonseg(str(tmp_path / "rs"), demo_files)
        dataset = _import("reasonseg", os.path.join(root, "val"), str(tmp_path))
        results = run_benchmark(dataset, model=bundle)
        sample = dataset.first()
        pred = sample.benchmark_pred.get_mask() > 0
        gt, ignore = sample.ground_truth.get_mask() > 0, sample.ignore_mask.get_mask() > 0
        assert pred.shape == gt.shape == (sample.metadata.height, sample.metadata.width)
        kept = pred & ~ignore
        inter, union = (kept & gt).sum(), (kept | gt).sum()
        level = results["levels"]["ReasonSeg-val"]
        assert level["giou"] == pytest.approx(inter / union) and level["ciou"] == pytest.approx(inter / union)
        assert sample.benchmark_pred.route == "reasoning" and results["counts"]["scored_now"] == 1
        assert "| ReasonSeg | val | 1 |" in results["tables"]["ReasonSeg-val"]
