"""A second run on the same demonstrations reuses their features and forests (routes/memo.py),
and gives exactly what a first run gives."""

import pickle

import numpy as np
import pytest

from conceptseg.routes import AppearanceConfig, AppearanceRoute, memo
from conceptseg.types import Demonstration


@pytest.fixture
def demos(nuclei_tiles):
    memo.clear()
    yield [Demonstration(image=image, mask=mask, id=name) for name, image, mask in nuclei_tiles[:3]]
    memo.clear()


def _run(demos, target, **config):
    route = AppearanceRoute(AppearanceConfig(**config))
    scores = route.verify(demos)
    route.fit(demos)
    return route, scores, route.segment(target)


def test_a_second_run_reuses_the_forests_and_gives_the_same_masks(demos, nuclei_tiles):
    target = nuclei_tiles[5][1]
    first, scores, probability = _run(demos, target)
    assert memo.kept() == (3, 4)  # the demonstrations' features; three leave-one-out forests and the full one
    second, again, same = _run(demos, target)
    assert second._forest is first._forest and again == scores
    np.testing.assert_array_equal(same, probability)
    assert memo.kept() == (3, 4)  # nothing computed twice; the target's features are not kept


def test_other_settings_or_demonstrations_fit_again(demos, nuclei_tiles):
    target = nuclei_tiles[5][1]
    first, _, probability = _run(demos, target)
    reseeded, _, other = _run(demos, target, seed=1)
    assert reseeded._forest is not first._forest and not np.array_equal(other, probability)
    changed = [demos[0], demos[1], Demonstration(image=nuclei_tiles[4][1], mask=nuclei_tiles[4][2], id="x")]
    moved, _, _ = _run(changed, target)
    assert moved._forest is not first._forest
    # One more image kept; 4 + 4 + 3 forests fitted (the new set's fold without "x" is the first set's), all kept.
    assert memo.kept() == (4, 11)


def test_forests_over_the_budget_drop_the_oldest(demos, nuclei_tiles, monkeypatch):
    target = nuclei_tiles[5][1]
    first, _, _ = _run(demos, target, n_estimators=4)  # small forests: this is about the bookkeeping
    sizes = [memo.forest_bytes(f) for f in memo._forests.values()]
    nodes = sum(tree.tree_.node_count for tree in first._forest.estimators_)
    assert len(sizes) == 4 and sizes[-1] == nodes * memo.NODE_BYTES > 0
    budget = sum(sizes[-2:])
    monkeypatch.setattr(memo, "FOREST_BYTES", budget)
    _run(demos, target, n_estimators=4, seed=1)  # four new forests: only the newest that fit the budget stay
    kept = list(memo._forests.values())
    assert kept and sum(map(memo.forest_bytes, kept)) <= budget and first._forest not in kept
    monkeypatch.setattr(memo, "FOREST_BYTES", 1)
    again, _, _ = _run(demos, target, n_estimators=4, seed=2)
    assert list(memo._forests.values()) == kept  # over the budget alone: not kept, and nothing else dropped


class TestForestCacheDirectory:
    """CONCEPTSEG_FOREST_CACHE_DIR: forests fitted in one process are loaded, not fitted, in the next."""

    @pytest.fixture
    def folder(self, tmp_path, monkeypatch):
        monkeypatch.setenv(memo.CACHE_DIR_VAR, str(tmp_path / "forests"))
        return tmp_path / "forests"

    @staticmethod
    def _never_fit(monkeypatch):
        from sklearn.ensemble import RandomForestClassifier

        def refuse(self, *args, **kwargs):
            raise AssertionError("fitted although the cache directory holds this forest")

        monkeypatch.setattr(RandomForestClassifier, "fit", refuse)

    def test_a_new_process_loads_the_forests_and_gives_the_same_masks(self, folder, demos, nuclei_tiles,
                                                                      monkeypatch):
        target = nuclei_tiles[5][1]
        _, scores, probability = _run(demos, target)
        files = sorted(p.name for p in folder.glob("sklearn-*/*.pkl"))
        assert len(files) == 4  # three leave-one-out forests and the full one
        memo.clear()  # what a new process starts with
        self._never_fit(monkeypatch)
        _, again, same = _run(demos, target)
        assert again == scores
        np.testing.assert_array_equal(same, probability)
        assert memo.kept()[1] == 4

    def test_an_unreadable_file_is_fitted_again_and_replaced(self, folder, demos, nuclei_tiles, caplog):
        target = nuclei_tiles[5][1]
        _, _, probability = _run(demos, target)
        torn = sorted(folder.glob("sklearn-*/*.pkl"))[0]
        torn.write_bytes(b"\x80\x05 not a whole pickle")
        memo.clear()
        _, _, same = _run(demos, target)
        np.testing.assert_array_equal(same, probability)
        assert "Ignoring unreadable cached forest" in caplog.text
        with open(torn, "rb") as f:
            assert pickle.load(f).n_estimators == AppearanceConfig().n_estimators

    def test_the_folder_keeps_the_most_recently_used_within_its_budget(self, folder, demos, nuclei_tiles,
                                                                         monkeypatch):
        target = nuclei_tiles[5][1]
        _run(demos, target, n_estimators=4)
        sizes = sorted(p.stat().st_size for p in folder.glob("sklearn-*/*.pkl"))
        monkeypatch.setattr(memo, "FOREST_DISK_BYTES", sum(sizes[-2:]))
        _run(demos, target, n_estimators=4, seed=1)  # four more: the oldest go first
        left = list(folder.glob("sklearn-*/*.pkl"))
        assert 0 < len(left) < 8 and sum(p.stat().st_size for p in left) <= memo.FOREST_DISK_BYTES
        assert max(left, key=lambda p: p.stat().st_mtime_ns).stem in memo._forests

    def test_a_folder_that_cannot_be_written_costs_the_speed_up_not_the_run(self, tmp_path, demos,
                                                                            nuclei_tiles, monkeypatch, caplog):
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv(memo.CACHE_DIR_VAR, str(tmp_path / "a-file"))
        _, scores, _ = _run(demos, nuclei_tiles[5][1])
        assert len(scores) == 3 and "Could not cache the fitted forest" in caplog.text

    def test_without_the_variable_nothing_is_written(self, tmp_path, demos, nuclei_tiles, monkeypatch):
        monkeypatch.delenv(memo.CACHE_DIR_VAR)
        monkeypatch.chdir(tmp_path)
        _run(demos, nuclei_tiles[5][1])
        assert memo.forest_cache_dir() is None and not list(tmp_path.iterdir())


def test_kept_features_are_read_only(demos):
    route = AppearanceRoute()
    route.prepare([demos[0].image])
    feats = route.features(demos[0].image, remember=True)
    with pytest.raises(ValueError, match="read-only"):
        feats[0, 0, 0] = 1.0
    assert route.features(demos[0].image, remember=True) is feats
    assert route.features(demos[0].image).flags.writeable  # a target's: computed, not kept


def test_features_over_the_budget_are_not_kept(demos, monkeypatch):
    monkeypatch.setattr(memo, "FEATURE_BYTES", 1000)
    route = AppearanceRoute()
    route.features(demos[0].image, remember=True)
    assert memo.kept()[0] == 0


def test_bundles_of_one_base_share_its_processor_until_its_files_change(tiny_bundle_dir, tmp_path):
    import json
    import os
    import shutil

    from conceptseg.model.release import load_processor

    source = os.path.join(tiny_bundle_dir, "policy")
    copy = shutil.copytree(source, tmp_path / "policy", ignore=shutil.ignore_patterns("*.safetensors"))
    first = load_processor(source, source)
    assert load_processor(str(copy), str(copy)) is first  # the same files: read once
    config = copy / "tokenizer_config.json"
    edited = dict(json.loads(config.read_text()), model_max_length=77)
    config.write_text(json.dumps(edited))
    again = load_processor(str(copy), str(copy))
    assert again is not first and again.tokenizer.model_max_length == 77
