"""The object route: candidates (colour rule, pixel forest), per-object features, the forest, and its bad inputs."""

import re

import numpy as np
import pytest
from scipy.ndimage import label as ndi_label

from conceptseg.routes.router import Router, make_router
from conceptseg.routes import ROUTES, ObjectConfig, ObjectRoute
from conceptseg.routes.base import mask_iou
from conceptseg.routes.object import SOURCES
from conceptseg.routes.objects import FEATURES, CandidateConfig, features, object_labels, propose, split_at_necks
from conceptseg.routes.pixel_objects import PixelConfig, PixelObjects, pixel_target
from conceptseg.training import procedural
from conceptseg.types import Demonstration, Target

GREY = (0.5, 0.5, 0.5)


def _concept(name: str, n_targets: int = 3, seed: int = 0):
    items = procedural.generate([name], per_concept=3 + n_targets, seed=seed)
    pairs = [(it.image.astype(np.float32) / 255, it.mask) for it in items]
    demos = [Demonstration(im, m, f"{name}-{i}") for i, (im, m) in enumerate(pairs[:3])]
    return demos, pairs[3:]


def _canvas(size=128):
    return np.full((size, size, 3), GREY, np.float32)


def _feature(table: np.ndarray, name: str) -> np.ndarray:
    return table[:, FEATURES.index(name)]


def _mean_iou(route, targets) -> float:
    return float(np.mean([mask_iou(route.segment(im) > route.threshold, m) for im, m in targets]))


def _disks(centres, radius=12, size=128):
    """A grey canvas with bright disks (touching where their centres are < 2 radii apart) and their mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for r, c in centres:
        mask |= (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
    image = _canvas(size)
    image[mask] = (0.9, 0.9, 0.9)
    return image, mask


@pytest.fixture(scope="module")
def large_nuclei(demo_files):
    """The size concept on the demo's nuclei tiles: 3 demonstrations, 13 targets."""
    from conceptseg.datasets.fixtures import large_nuclei_tiles
    from conceptseg.demo import DEMO_TILES

    tiles = large_nuclei_tiles(demo_files)
    demos = [Demonstration(im, m, name) for name, im, m in tiles if name in DEMO_TILES]
    targets = [(im, m) for name, im, m in tiles if name not in DEMO_TILES]
    return demos, targets


@pytest.fixture(scope="module")
def large_nuclei_choice(large_nuclei):
    """The router's choice on the size concept (both routes verified, the chosen one fitted)."""
    return Router().choose(large_nuclei[0])


class TestShapeConcepts:
    def test_triangles_among_other_shapes_of_any_colour(self):
        demos, targets = _concept("triangle")
        route = ObjectRoute()
        route.fit(demos)
        ious = [mask_iou(route.segment(im) > route.threshold, m) for im, m in targets]
        assert np.mean(ious) >= 0.8
        rule = route.rule()
        assert rule.startswith("objects with ") and "corners < 3.5" in rule  # a triangle has 3

    def test_router_takes_the_object_route_on_shapes_and_appearance_on_colours(self):
        ring = Router().choose(_concept("ring")[0])
        assert ring.route.name == "object" and ring.verified
        assert [v.route for v in ring.verifications] == ["appearance", "object"]
        assert ring.verifications[0].score < ring.verifications[1].score
        red = Router().choose(_concept("red object")[0])
        assert red.route.name == "appearance" and red.verified

    def test_probability_is_constant_per_object_and_zero_off_objects(self):
        demos, targets = _concept("ring")
        route = ObjectRoute()
        route.fit(demos)
        image = targets[0][0]
        prob = route.segment(image)
        labels = route.objects(image).labels
        assert prob.shape == (128, 128) and prob.dtype == np.float32
        assert np.all(prob[labels == 0] == 0)
        for i in range(1, labels.max() + 1):
            assert np.unique(prob[labels == i]).size == 1

    def test_named_route_and_registration_order(self):
        assert list(ROUTES)[:2] == ["appearance", "object"]
        assert [r.name for r in make_router("object").routes] == ["object"]


class TestVerification:
    def test_leave_one_out_scores_every_demonstration(self):
        demos, _ = _concept("ring")
        scores = ObjectRoute().verify(demos)
        assert set(scores) == {d.id for d in demos}
        assert all(s >= 0.8 for s in scores.values())

    def test_verification_does_not_leave_a_partial_model(self):
        demos, targets = _concept("star")
        route = ObjectRoute()
        route.verify(demos)
        with pytest.raises(RuntimeError, match="fit"):
            route.segment(targets[0][0])


class TestPixelObjects:
    def test_watershed_splits_two_touching_disks_and_keeps_a_lone_one_whole(self):
        _, pair = _disks([(64, 52), (64, 75)])  # centres 23 px apart: a neck of 10 px
        labels, _ = ndi_label(pair)
        assert labels.max() == 1
        split = split_at_necks(pair, labels, PixelConfig().split_h)
        assert np.unique(split[pair]).size == 2
        areas = np.bincount(split.ravel())[1:]
        assert areas.min() > 0.4 * pair.sum()  # halves, not a sliver
        _, lone = _disks([(64, 64)])
        assert np.unique(split_at_necks(lone, ndi_label(lone)[0], PixelConfig().split_h)[lone]).size == 1

    def test_forest_fitted_on_disks_finds_each_of_a_touching_pair(self):
        image, mask = _disks([(30, 30), (90, 80)])
        pixels = PixelObjects(PixelConfig(), CandidateConfig())
        pixels.prepare([image])
        pixels.fit([(pixels.features(image), pixel_target(image, mask, CandidateConfig()))])
        target, target_mask = _disks([(64, 41), (64, 64)])  # touching: one blob to the colour rule
        assert propose(target, CandidateConfig(split_touching=False)).max() == 1
        labels = pixels.objects(target, pixels.features(target))
        assert labels.max() == 2
        for centre in ((64, 41), (64, 64)):
            disk = _disks([centre])[1]
            assert mask_iou(labels == labels[centre], disk) >= 0.8

    def test_target_leaves_out_the_objects_a_mask_leaves(self):
        image = _canvas()
        image[10:40, 10:40] = (0.9, 0.1, 0.1)
        image[70:100, 70:100] = (0.1, 0.1, 0.9)
        mask = np.zeros((128, 128), bool)
        mask[12:38, 12:38] = True  # inside the red square, two pixels short of its edge
        target = pixel_target(image, mask, CandidateConfig())
        assert target.dtype == np.int8
        assert (target[mask] == 1).all()
        assert (target[70:100, 70:100] == -1).all()  # the blue square: an object, not background
        assert target[10, 10] == 0 and target[0, 0] == 0  # the red square's rim and the background


class TestCandidateSources:
    def test_size_concept_on_real_nuclei_beats_the_colour_rule(self, large_nuclei, large_nuclei_choice):
        _, targets = large_nuclei
        route = large_nuclei_choice.route
        assert route.name == "object" and route.source in ("pixels", "refined")
        colour_rule = ObjectRoute(ObjectConfig(sources=("proposal",)))
        colour_rule.fit(large_nuclei[0])
        # Measured (seeds fixed): 0.653 against the colour rule's 0.484 (0.614 with the
        # refined boundary at half maximum rather than where the masks draw it).
        assert _mean_iou(route, targets) >= 0.64
        assert _mean_iou(colour_rule, targets) <= 0.5

    def test_router_verification_is_the_chosen_sources_and_the_rule_says_so(self, large_nuclei_choice):
        route = large_nuclei_choice.route
        rule = route.rule()
        assert "pixel forest fitted on the demonstrations" in rule
        listed = re.search(r"leave-one-out IoU per source: ([^)]*)\)", rule).group(1)
        measured = {name: float(value) for name, value in (item.split() for item in listed.split(", "))}
        assert set(measured) == set(SOURCES)
        assert measured[route.source] > measured["proposal"] + ObjectConfig().margin  # clearly, not by a hair
        assert large_nuclei_choice.verification == pytest.approx(measured[route.source], abs=5e-4)

    def test_shapes_keep_the_colour_rule(self):
        demos, targets = _concept("circle")
        route = ObjectRoute()
        route.fit(demos)  # no verify first: fit compares the sources itself
        assert route.source == "proposal"
        assert _mean_iou(route, targets) >= 0.85
        pixels_only = ObjectRoute(ObjectConfig(sources=("pixels",)))
        pixels_only.fit(demos)
        assert _mean_iou(pixels_only, targets) < 0.6  # what choosing by leave-one-out avoids

    def test_camouflage_takes_the_pixel_forest_and_beats_the_colour_rule(self):
        demos, targets = _concept("camouflaged blob")
        route = ObjectRoute()
        route.fit(demos)
        colour_rule = ObjectRoute(ObjectConfig(sources=("proposal",)))
        colour_rule.fit(demos)
        assert route.source == "pixels"
        assert _mean_iou(route, targets) >= _mean_iou(colour_rule, targets) + 0.1

    def test_a_lead_within_the_margin_keeps_the_colour_rule(self):
        demos, targets = _concept("striped object")
        route = ObjectRoute()
        route.fit(demos)  # pixels leads the rule by 0.006 in leave-one-out, not on every demonstration
        no_margin = ObjectRoute(ObjectConfig(margin=0.0))
        no_margin.fit(demos)
        assert route.source == "proposal" and no_margin.source == "pixels"
        assert _mean_iou(route, targets) > _mean_iou(no_margin, targets) + 0.3  # measured 0.667 vs 0.000

    def test_one_demonstration_takes_the_first_source(self):
        demos, _ = _concept("square")
        route = ObjectRoute(ObjectConfig(sources=("refined", "proposal")))
        route.fit(demos[:1])
        assert route.source == "refined" and "leave-one-out" not in route.rule()

    def test_unknown_or_repeated_sources_are_named(self):
        with pytest.raises(ValueError, match="sources must be distinct names among proposal, pixels, refined"):
            ObjectConfig(sources=("pixels", "magic"))
        with pytest.raises(ValueError, match="distinct"):
            ObjectConfig(sources=("pixels", "pixels"))


class TestBadInput:
    def test_objects_split_by_a_mask_follow_the_majority(self):
        image = _canvas()
        image[10:40, 10:40] = (0.9, 0.1, 0.1)  # A: 900 px
        image[70:100, 70:100] = (0.1, 0.1, 0.9)  # B: 900 px
        mask = np.zeros((128, 128), bool)
        mask[10:40, 10:31] = True  # 70% of A
        mask[70:100, 70:79] = True  # 30% of B
        labels = propose(image, CandidateConfig())
        positive, split = object_labels(labels, mask)
        assert labels.max() == 2 and split == 2
        assert positive[labels[20, 20] - 1] and not positive[labels[80, 80] - 1]

        other = _canvas()
        other[50:80, 20:50] = (0.9, 0.1, 0.1)
        other[20:50, 80:110] = (0.1, 0.1, 0.9)
        other_mask = np.zeros((128, 128), bool)
        other_mask[50:80, 20:50] = True
        route = ObjectRoute()
        route.fit([Demonstration(image, mask, "split"), Demonstration(other, other_mask, "whole")])
        rule = route.rule()
        assert "most of its pixels lie inside" in rule and "2 objects were split" in rule
        assert mask_iou(route.segment(image) > 0.5, labels == labels[20, 20]) == 1.0

    def test_target_without_candidate_objects_gets_an_empty_mask(self):
        demos, _ = _concept("triangle")
        rng = np.random.default_rng(0)
        noise = np.clip(_canvas() + rng.normal(0, 0.01, (128, 128, 1)), 0, 1).astype(np.float32)
        router = Router([ObjectRoute()])
        choice = router.choose(demos)
        results = list(router.segment(choice, [Target(noise, "noise"), Target(_canvas(), "flat")]))
        assert [r.error for r in results] == [None, None]
        assert all(r.mask.shape == (128, 128) and not r.mask.any() for r in results)
        assert propose(noise, CandidateConfig()).max() == 0

    def test_thousands_of_tiny_objects_are_dropped_and_the_count_bounded(self):
        image = _canvas(256)
        image[::3, ::3] = (0.9, 0.9, 0.1)  # 86 x 86 = 7396 single-pixel specks
        image[20:60, 20:60] = (0.9, 0.1, 0.1)
        image[150:200, 150:180] = (0.1, 0.1, 0.9)
        labels = propose(image, CandidateConfig())
        assert labels.max() == 2  # the specks are under min_area (12 px)

        grid = _canvas(256)
        for r in range(2, 250, 8):
            for c in range(2, 250, 8):
                grid[r : r + 4, c : c + 4] = (0.9, 0.1, 0.1)  # 31 x 31 = 961 objects of 16 px
        grid[100:104, 100:106] = (0.1, 0.1, 0.9)  # one larger, 24 px: among the kept
        labels = propose(grid, CandidateConfig(max_objects=500))
        assert labels.max() == 500
        assert labels[101, 103] > 0
        assert features(grid, labels).shape == (500, len(FEATURES))

    def test_single_object_has_defined_context_features(self):
        image = _canvas()
        image[40:80, 30:90] = (0.2, 0.7, 0.2)
        labels = propose(image, CandidateConfig())
        table = features(image, labels)
        assert table.shape == (1, len(FEATURES)) and np.isfinite(table).all()
        assert _feature(table, "relative_area")[0] == 1.0
        assert _feature(table, "neighbour_distance")[0] == pytest.approx(np.sqrt(2))
        assert _feature(table, "distinctness")[0] == 0.0 and _feature(table, "size_deviation")[0] == 0.0
        demos, _ = _concept("square")
        route = ObjectRoute()
        route.fit(demos)
        assert route.segment(image).shape == (128, 128)

    def test_negative_demonstration_teaches_absence(self):
        demos, targets = _concept("triangle")
        no_triangle = _canvas()
        no_triangle[30:60, 30:60] = (0.1, 0.1, 0.9)
        negative = Demonstration(no_triangle, np.zeros((128, 128), bool), "no-triangle")
        route = ObjectRoute()
        scores = route.verify(demos + [negative])
        assert scores["no-triangle"] == 1.0  # nothing found where nothing was shown
        route.fit(demos + [negative])
        assert "from 4 demonstrations" in route.rule()
        assert not (route.segment(no_triangle) > 0.5).any()

    def test_router_passes_negative_demonstrations_to_the_object_route(self):
        demos, _ = _concept("ring")
        no_ring = _canvas()
        no_ring[30:60, 30:60] = (0.1, 0.1, 0.9)
        choice = Router().choose(demos + [Demonstration(no_ring, np.zeros((128, 128), bool), "no-ring")])
        assert choice.route.name == "object" and choice.verified
        assert "no-ring" in choice.verifications[-1].scores
        assert "from 4 demonstrations" in choice.route.rule()

    def test_only_negative_demonstrations_find_nothing(self):
        image = _canvas()
        image[30:60, 30:60] = (0.1, 0.1, 0.9)
        route = ObjectRoute()
        route.fit([Demonstration(image, np.zeros((128, 128), bool), "empty")])
        assert not route.segment(image).any()
        assert route.rule().startswith("no object")

    def test_segment_before_fit_says_what_to_call(self):
        with pytest.raises(RuntimeError, match="fit"):
            ObjectRoute().segment(_canvas())

    def test_unknown_proposal_is_named(self):
        with pytest.raises(ValueError, match="proposal must be one of background"):
            ObjectConfig(candidates=CandidateConfig(proposal="magic"))


class TestFromTheCommandLine:
    def test_route_object_writes_labels_and_records_the_majority_rule(self, nuclei_dataset, capsys):
        import json

        from conceptseg import cli
        from conceptseg.metrics import score_sample

        args = ["segment", "--dataset", nuclei_dataset.name, "--demo-tag", "demo", "--mask-field",
                "ground_truth", "--pred-field", "pred", "--view", "nuclei", "--route", "object", "--json"]
        assert cli.main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["route"] == "object" and summary["segmented"] == 13 and summary["failures"] == []
        info = nuclei_dataset.get_run_info("conceptseg_pred")
        assert info.config.route == "object" and "most of its pixels lie inside" in info.config.rule
        ious = []
        for sample in nuclei_dataset.load_saved_view("nuclei").match_tags("demo", bool=False):
            assert sample["pred"].route == "object" and sample["pred"].rule == info.config.rule
            ious.append(score_sample(sample["pred"].get_mask(), sample["ground_truth"].get_mask() > 0)["iou"])
        assert np.mean(ious) >= 0.6  # every nucleus is the concept: the candidates' own quality


def _blurred_disks(centres, radius=14, size=128, sigma=3.0):
    """Bright disks on a dark canvas, blurred so their edges ramp over several pixels, and the disks."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:size, :size]
    disk = np.zeros((size, size), bool)
    for r, c in centres:
        disk |= (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
    image = np.full((size, size, 3), 0.2, np.float32)
    image[disk] = 0.9
    return gaussian_filter(image, (sigma, sigma, 0)), disk


@pytest.mark.parametrize("level", [0.3, 0.7])
def test_refine_learns_where_the_masks_draw_boundaries(level):
    """A mask drawn at 30% (or 70%) of the blurred disks' peak contrast: the learned fraction
    is that level, and refined objects take the mask's area; the fixed half maximum does not."""
    from scipy.ndimage import binary_dilation
    from conceptseg.routes.pixel_objects import boundary_fraction, contrast

    image, disk = _blurred_disks([(40, 40), (80, 90)])
    strength = contrast(image)
    mask = strength >= level * strength.max()
    assert boundary_fraction([image], [mask]) == pytest.approx(level, abs=0.03)
    assert boundary_fraction([image], [np.zeros_like(mask)]) is None

    loose = ndi_label(binary_dilation(disk, iterations=2))[0].astype(np.int32)  # a forest's blurred objects
    learned = PixelObjects(PixelConfig(refine_fraction=None), CandidateConfig())
    learned.learn_boundary([image], [mask])
    fixed = PixelObjects(PixelConfig(refine_fraction=0.5), CandidateConfig())
    assert learned.fraction == pytest.approx(level, abs=0.03) and fixed.fraction == 0.5
    refined_area = int((learned.refine(loose, image) > 0).sum())
    assert refined_area == pytest.approx(int(mask.sum()), rel=0.03)
    assert abs(int((fixed.refine(loose, image) > 0).sum()) - mask.sum()) > 0.15 * mask.sum()
