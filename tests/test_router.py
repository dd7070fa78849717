"""The appearance route and the router on real nuclei tiles (no database)."""

import numpy as np
import pytest

from conceptseg.errors import ConceptSegError, DemonstrationError
from conceptseg.metrics import score_sample
from conceptseg.routes.router import Router, make_router
from conceptseg.routes import AppearanceConfig, AppearanceRoute
from conceptseg.types import Demonstration, Target

DEMO_INDICES = (0, 5, 10)


def _demos(tiles, indices=DEMO_INDICES):
    return [Demonstration(tiles[i][1], tiles[i][2], tiles[i][0]) for i in indices]


def _targets(tiles, indices=DEMO_INDICES):
    return [(Target(t[1], t[0]), t[2]) for i, t in enumerate(tiles) if i not in indices]


class TestAppearanceQuality:
    def test_three_demonstrations_segment_held_out_tiles(self, nuclei_tiles):
        route = AppearanceRoute()
        route.fit(_demos(nuclei_tiles))
        ious = [score_sample(route.segment(t.image) > route.threshold, gt)["iou"] for t, gt in _targets(nuclei_tiles)]
        assert len(ious) == 13
        assert np.mean(ious) >= 0.8
        assert min(ious) >= 0.7

    def test_probability_map_has_image_size_and_range(self, nuclei_tiles):
        route = AppearanceRoute()
        route.fit(_demos(nuclei_tiles))
        prob = route.segment(nuclei_tiles[1][1])
        assert prob.shape == (128, 128) and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0

    def test_same_seed_same_masks(self, nuclei_tiles):
        a, b = AppearanceRoute(), AppearanceRoute()
        a.fit(_demos(nuclei_tiles))
        b.fit(_demos(nuclei_tiles))
        image = nuclei_tiles[3][1]
        assert np.array_equal(a.segment(image), b.segment(image))

    def test_large_images_are_shrunk_for_features_and_resized_back(self, nuclei_tiles):
        route = AppearanceRoute(AppearanceConfig(max_side=64))
        route.fit(_demos(nuclei_tiles))
        assert route.features(nuclei_tiles[1][1]).shape[:2] == (64, 64)
        assert route.segment(nuclei_tiles[1][1]).shape == (128, 128)

    def test_segment_before_fit_says_what_to_call(self, nuclei_tiles):
        with pytest.raises(RuntimeError, match="fit"):
            AppearanceRoute().segment(nuclei_tiles[0][1])


class TestVerification:
    def test_leave_one_out_scores_every_demonstration(self, nuclei_tiles):
        scores = AppearanceRoute().verify(_demos(nuclei_tiles))
        assert set(scores) == {nuclei_tiles[i][0] for i in DEMO_INDICES}
        assert all(0.75 <= s <= 1.0 for s in scores.values())

    def test_verification_does_not_leave_a_partial_model(self, nuclei_tiles):
        route = AppearanceRoute()
        route.verify(_demos(nuclei_tiles))
        with pytest.raises(RuntimeError):
            route.segment(nuclei_tiles[1][1])


class TestRouterChoice:
    def test_passing_route_is_taken_and_verified(self, nuclei_tiles):
        choice = Router().choose(_demos(nuclei_tiles))
        assert choice.route.name == "appearance"
        assert choice.verified is True
        assert choice.verification >= 0.8
        assert "re-found" in choice.reason

    def test_nothing_passes_best_runs_flagged_unverified(self, nuclei_tiles):
        choice = Router(threshold=0.99).choose(_demos(nuclei_tiles))
        assert choice.verified is False
        assert choice.verification is not None and choice.verification < 0.99
        assert "unverified" in choice.reason
        results = list(Router(threshold=0.99).segment(choice, [_targets(nuclei_tiles)[0][0]]))
        assert results[0].verified is False and results[0].mask is not None

    def test_single_demonstration_verification_unavailable_not_zero(self, nuclei_tiles):
        choice = Router().choose(_demos(nuclei_tiles, (0,)))
        assert choice.verification is None
        assert choice.verified is False
        assert "unavailable" in choice.reason
        result = next(Router().segment(choice, [_targets(nuclei_tiles, (0,))[0][0]]))
        assert result.verification is None
        assert score_sample(result.mask, _targets(nuclei_tiles, (0,))[0][1])["iou"] >= 0.7

    def test_results_record_route_score_and_cost(self, nuclei_tiles):
        router = Router()
        choice = router.choose(_demos(nuclei_tiles))
        results = list(router.segment(choice, [t for t, _ in _targets(nuclei_tiles)[:3]]))
        assert [r.route for r in results] == ["appearance"] * 3
        assert all(r.verification == choice.verification and r.seconds > 0 for r in results)
        assert all(r.error is None and r.mask.shape == (128, 128) for r in results)


class TestBadDemonstrations:
    def test_no_demonstrations(self):
        with pytest.raises(DemonstrationError, match="at least one"):
            Router().choose([])

    def test_empty_mask_is_a_negative_demonstration(self, nuclei_tiles):
        demos = _demos(nuclei_tiles)
        demos[1] = Demonstration(demos[1].image, np.zeros((128, 128), bool), "tile-without-nuclei")
        choice = Router().choose(demos)
        # the held-out negative is scored like any demonstration (IoU of two empty masks is 1)
        assert "tile-without-nuclei" in choice.verifications[0].scores

    def test_only_negatives_are_refused(self, nuclei_tiles):
        demos = [Demonstration(d.image, np.zeros((128, 128), bool), d.id) for d in _demos(nuclei_tiles)]
        with pytest.raises(DemonstrationError, match="all negatives"):
            Router().choose(demos)

    def test_tiny_demonstration_is_refused_by_size(self, nuclei_tiles):
        demos = _demos(nuclei_tiles)
        demos.append(Demonstration(np.zeros((1, 500, 3), np.float32), np.zeros((1, 500), bool), "sliver"))
        with pytest.raises(DemonstrationError, match="sliver is 500x1 pixels"):
            Router().choose(demos)

    def test_a_target_that_breaks_the_route_is_its_own_failure(self, nuclei_tiles):
        router = Router()
        choice = router.choose(_demos(nuclei_tiles))
        good = _targets(nuclei_tiles)[0][0]
        targets = [Target(np.zeros((1, 1, 3), np.float32), "dot"), Target(np.zeros((1, 500, 3), np.float32), "sliver"), good]
        results = list(router.segment(choice, targets))
        assert [r.error is None for r in results] == [False, False, True]
        assert "1x1 image" in results[0].error and "500x1 image" in results[1].error

    def test_mask_of_other_size(self, nuclei_tiles):
        demos = _demos(nuclei_tiles)
        demos[0] = Demonstration(demos[0].image, np.ones((64, 64), bool), "small-mask")
        with pytest.raises(DemonstrationError, match="small-mask.*64x64"):
            Router().choose(demos)

    def test_mask_covering_everything(self, nuclei_tiles):
        demos = _demos(nuclei_tiles)
        demos[2] = Demonstration(demos[2].image, np.ones((128, 128), bool), "all-concept")
        with pytest.raises(DemonstrationError, match="all-concept.*whole image"):
            Router().choose(demos)

    def test_unknown_route_lists_known_ones(self):
        with pytest.raises(ConceptSegError, match="auto or one of: appearance"):
            make_router("telepathy")

    def test_threshold_out_of_range(self):
        with pytest.raises(ConceptSegError, match=r"\[0, 1\]"):
            Router(threshold=1.5)
