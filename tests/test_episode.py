"""Episode construction: 2×2 mosaic, withheld proxy box, red boxes, coordinate maps."""

from __future__ import annotations

import numpy as np
import pytest

from conceptseg.model.episode import (
    BOX_COLOR,
    MAX_REFERENCES,
    TARGET_SIZE,
    TILE_SIZE,
    BoxMap,
    build_episode,
    format_boxes,
    mask_box,
)
from conceptseg.errors import DemonstrationError
from conceptseg.types import Demonstration

RED = np.array(BOX_COLOR, dtype=np.uint8)
GRAY = np.array([128, 128, 128], dtype=np.uint8)  # 0.5 * 255 = 127.5, rounded half-to-even → 128


def wide_demo(demo_id: str = "wide") -> Demonstration:
    """200(H)x400(W) gray image, mask rows 50..149, cols 100..299."""
    image = np.full((200, 400, 3), 0.5, dtype=np.float32)
    mask = np.zeros((200, 400), dtype=bool)
    mask[50:150, 100:300] = True
    return Demonstration(image=image, mask=mask, id=demo_id)


# Tile-local box of wide_demo at 300², by hand. cv2.INTER_NEAREST samples source index
# floor(dst * src_size / dst_size) (no half-pixel shift):
#   columns: src = floor(x * 400/300). x=74 → 98 (out), x=75 → 100 (in), x=224 → 298 (in),
#            x=225 → 300 (out)  → columns 75..224
#   rows:    src = floor(y * 200/300). y=74 → 49 (out), y=75 → 50 (in), y=224 → 149 (in),
#            y=225 → 150 (out)  → rows 75..224
# The edge-based scale agrees: 100 * 0.75 = 75, 300 * 0.75 - 1 = 224;
# 50 * 1.5 = 75, 150 * 1.5 - 1 = 224.
WIDE_TILE_BOX = (75, 75, 224, 224)


def shifted(box, dx, dy):
    x1, y1, x2, y2 = box
    return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)


def is_red(canvas, y, x) -> bool:
    return bool(np.array_equal(canvas[y, x], RED))


class TestMaskBox:
    def test_empty_mask_has_no_box(self):
        assert mask_box(np.zeros((5, 7), dtype=bool)) is None

    def test_single_pixel_box_is_inclusive(self):
        mask = np.zeros((10, 10), dtype=bool)
        mask[3, 5] = True
        assert mask_box(mask) == (5, 3, 5, 3)

    def test_box_spans_all_blobs(self):
        mask = np.zeros((20, 30), dtype=bool)
        mask[2:4, 25:28] = True  # rows 2..3, cols 25..27
        mask[10:16, 1:3] = True  # rows 10..15, cols 1..2
        assert mask_box(mask) == (1, 2, 27, 15)


class TestTileBoxFromResizedMask:
    def test_wide_demo_box_at_300(self):
        episode = build_episode([wide_demo("a"), wide_demo("b")])
        assert episode.proxy_box == WIDE_TILE_BOX


class TestTileOffsets:
    def test_tiles_are_row_major(self):
        episode = build_episode([wide_demo(str(i)) for i in range(4)])
        assert episode.proxy_box == WIDE_TILE_BOX
        assert episode.reference_boxes == [
            shifted(WIDE_TILE_BOX, 300, 0),  # tile 2: top-right
            shifted(WIDE_TILE_BOX, 0, 300),  # tile 3: bottom-left
            shifted(WIDE_TILE_BOX, 300, 300),  # tile 4: bottom-right
        ]

    def test_tile_maps_carry_the_origins(self):
        episode = build_episode([wide_demo(str(i)) for i in range(4)])
        origins = [(m.origin_x, m.origin_y, m.size) for m in episode.tile_maps]
        assert origins == [(0, 0, 300), (300, 0, 300), (0, 300, 300), (300, 300, 300)]


class TestProxyBox:
    def test_tile_one_box_is_withheld(self):
        episode = build_episode([wide_demo(str(i)) for i in range(4)])
        assert episode.has_proxy
        assert episode.proxy_box not in episode.reference_boxes
        assert len(episode.reference_boxes) == 3

    def test_tile_one_box_is_not_drawn(self):
        canvas = build_episode([wide_demo(str(i)) for i in range(4)]).canvas
        # Mid-points of the four edges of (75, 75, 224, 224), and a corner.
        for y, x in [(150, 75), (150, 224), (75, 150), (224, 150), (75, 75)]:
            assert np.array_equal(canvas[y, x], GRAY)
        assert not (canvas[:TILE_SIZE, :TILE_SIZE] == RED).all(axis=-1).any()


class TestDrawnBoxes:
    @pytest.mark.parametrize("dx, dy", [(300, 0), (0, 300), (300, 300)])
    def test_tiles_two_to_four_have_red_borders(self, dx, dy):
        canvas = build_episode([wide_demo(str(i)) for i in range(4)]).canvas
        x1, y1, x2, y2 = shifted(WIDE_TILE_BOX, dx, dy)
        mid_x, mid_y = (x1 + x2) // 2, (y1 + y2) // 2
        for y, x in [(mid_y, x1), (mid_y, x2), (y1, mid_x), (y2, mid_x)]:
            assert is_red(canvas, y, x), (y, x)
        # Inside the box, past the 2-px stroke, the image shows through.
        assert np.array_equal(canvas[mid_y, mid_x], GRAY)
        assert np.array_equal(canvas[mid_y, x1 + 5], GRAY)

    def test_canvas_is_uint8_600(self):
        canvas = build_episode([wide_demo("a"), wide_demo("b")]).canvas
        assert canvas.shape == (TARGET_SIZE, TARGET_SIZE, 3)
        assert canvas.dtype == np.uint8


class TestSingleDemonstration:
    def test_resized_without_boxes_or_proxy(self):
        episode = build_episode([wide_demo("only")])
        assert episode.canvas.shape == (600, 600, 3)
        assert episode.canvas.dtype == np.uint8
        assert (episode.canvas == GRAY).all()  # no red anywhere
        assert episode.reference_boxes == []
        assert episode.proxy_box is None
        assert not episode.has_proxy
        assert episode.demonstration_ids == ["only"]

    def test_map_covers_the_whole_canvas(self):
        (tile_map,) = build_episode([wide_demo("only")]).tile_maps
        # 200x400 → 600²: rows x3, columns x1.5. Mask (100, 50, 299, 149) →
        # x1 = 100*1.5 = 150, x2 = 300*1.5 - 1 = 449, y1 = 50*3 = 150, y2 = 150*3 - 1 = 449.
        assert tile_map.to_canvas((100, 50, 299, 149)) == (150, 150, 449, 449)


class TestPartialMosaic:
    def test_two_demonstrations_leave_bottom_row_black(self):
        episode = build_episode([wide_demo("a"), wide_demo("b")])
        assert (episode.canvas[300:, :] == 0).all()
        assert episode.reference_boxes == [shifted(WIDE_TILE_BOX, 300, 0)]
        assert episode.demonstration_ids == ["a", "b"]

    def test_three_demonstrations_leave_tile_four_black(self):
        episode = build_episode([wide_demo("a"), wide_demo("b"), wide_demo("c")])
        assert (episode.canvas[300:, 300:] == 0).all()
        assert not (episode.canvas[300:, :300] == 0).all()
        assert episode.reference_boxes == [
            shifted(WIDE_TILE_BOX, 300, 0),
            shifted(WIDE_TILE_BOX, 0, 300),
        ]


class TestOnlyFourUsed:
    def test_fifth_demonstration_is_ignored(self):
        demos = [wide_demo(f"d{i}") for i in range(5)]
        demos[4].mask[:] = False  # would raise if it were used
        episode = build_episode(demos)
        assert MAX_REFERENCES == 4
        assert episode.demonstration_ids == ["d0", "d1", "d2", "d3"]
        assert len(episode.tile_maps) == 4
        assert len(episode.reference_boxes) == 3


class TestEmptyMask:
    def test_mosaic_names_the_demonstration(self):
        empty = wide_demo("sample-42")
        empty.mask[:] = False
        with pytest.raises(DemonstrationError, match="sample-42"):
            build_episode([wide_demo("a"), empty])

    def test_single_demonstration_names_it(self):
        empty = wide_demo("lonely")
        empty.mask[:] = False
        with pytest.raises(DemonstrationError, match="lonely"):
            build_episode([empty])


class TestMisshapenMask:
    def test_mask_of_another_size(self):
        demo = wide_demo("odd")
        demo.mask = np.ones((10, 10), dtype=bool)
        with pytest.raises(DemonstrationError, match="odd"):
            build_episode([wide_demo("a"), demo])


class TestNoDemonstrations:
    def test_empty_list(self):
        with pytest.raises(DemonstrationError, match="at least one"):
            build_episode([])


class TestVanishedMask:
    def test_pixel_skipped_by_nearest_still_gets_a_box(self):
        # 400² → 300² samples source columns floor(x * 4/3) = 0, 1, 2, 4, ...: column 3 (row 3
        # too) is never sampled, so a single pixel at (3, 3) vanishes. The full-resolution box is
        # mapped instead: x1 = round(3 * 0.75 = 2.25) = 2, x2 = round(4 * 0.75 = 3) - 1 = 2.
        image = np.full((400, 400, 3), 0.5, dtype=np.float32)
        mask = np.zeros((400, 400), dtype=bool)
        mask[3, 3] = True
        episode = build_episode([wide_demo("a"), Demonstration(image, mask, "tiny")])
        assert episode.reference_boxes == [(302, 2, 302, 2)]


class TestBoxMapRoundTrip:
    def test_wide_tile_round_trip_is_exact(self):
        tile_map = BoxMap(height=200, width=400, size=300, origin_x=300, origin_y=0)
        canvas_box = tile_map.to_canvas((100, 50, 299, 149))
        assert canvas_box == (375, 75, 524, 224)
        assert tile_map.to_original(canvas_box) == (100, 50, 299, 149)

    def test_odd_sizes(self):
        # 333x517 → 300² at (300, 300): sx = 300/517 ≈ 0.5803, sy = 300/333 ≈ 0.9009.
        # x1 = round(17*sx = 9.86) = 10; x2 = round(402*sx = 233.27) - 1 = 232;
        # y1 = round(40*sy = 36.04) = 36; y2 = round(291*sy = 262.16) - 1 = 261.
        tile_map = BoxMap(height=333, width=517, size=300, origin_x=300, origin_y=300)
        canvas_box = tile_map.to_canvas((17, 40, 401, 290))
        assert canvas_box == (310, 336, 532, 561)
        # Back: x1 = round(10/sx = 17.23) = 17; x2 = round(233/sx = 401.5) - 1 = 401;
        # y1 = round(36/sy = 39.96) = 40; y2 = round(262/sy = 290.8) - 1 = 290.
        assert tile_map.to_original(canvas_box) == (17, 40, 401, 290)

    def test_many_boxes_within_two_pixels(self):
        rng = np.random.default_rng(0)
        for _ in range(200):
            height, width = rng.integers(50, 600, size=2)
            tile_map = BoxMap(int(height), int(width), 300, 0, 300)
            x1, x2 = sorted(rng.integers(0, width, size=2))
            y1, y2 = sorted(rng.integers(0, height, size=2))
            back = tile_map.to_original(tile_map.to_canvas((x1, y1, x2, y2)))
            assert np.abs(np.subtract(back, (x1, y1, x2, y2))).max() <= 2

    def test_clipped_to_the_region(self):
        tile_map = BoxMap(height=100, width=100, size=300, origin_x=300, origin_y=0)
        assert tile_map.to_canvas((-10, -10, 150, 150)) == (300, 0, 599, 299)


class TestTargetMap:
    def test_box_on_600_maps_back_to_1000x500(self):
        target = np.zeros((1000, 500, 3), dtype=np.float32)
        episode = build_episode([wide_demo("a")], target_image=target)
        assert episode.target.shape == (600, 600, 3)
        assert episode.target.dtype == np.uint8
        # sx = 600/500 = 1.2, sy = 600/1000 = 0.6.
        # x1 = 60/1.2 = 50, x2 = 180/1.2 - 1 = 149, y1 = 120/0.6 = 200, y2 = 300/0.6 - 1 = 499.
        assert episode.target_map.to_original((60, 120, 179, 299)) == (50, 200, 149, 499)
        assert episode.target_map.to_original((0, 0, 599, 599)) == (0, 0, 499, 999)

    def test_uint8_and_float_targets_agree(self):
        as_float = np.full((40, 80, 3), 1.0, dtype=np.float32)
        as_uint8 = np.full((40, 80, 3), 255, dtype=np.uint8)
        a = build_episode([wide_demo("a")], target_image=as_float).target
        b = build_episode([wide_demo("a")], target_image=as_uint8).target
        assert (a == 255).all() and (b == 255).all()

    def test_no_target(self):
        episode = build_episode([wide_demo("a")])
        assert episode.target is None
        assert episode.target_map is None


class TestFormatBoxes:
    def test_prompt_text(self):
        text = format_boxes([(1, 2, 3, 4), (375, 75, 524, 224)])
        assert text == "[[1, 2, 3, 4], [375, 75, 524, 224]]"

    def test_no_boxes(self):
        assert format_boxes([]) == "[]"


class TestReferenceEpisode:
    def test_unmasked_references_make_a_mosaic_without_boxes(self):
        from conceptseg.model.episode import build_reference_episode, resize_square

        rng = np.random.default_rng(0)
        refs = [rng.integers(0, 256, (40 + 10 * i, 70, 3), dtype=np.uint8) for i in range(3)]
        target = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
        episode = build_reference_episode(refs, target)
        assert episode.canvas.shape == (600, 600, 3) and not episode.has_proxy and episode.reference_boxes == []
        for i, ref in enumerate(refs):  # row-major 300² tiles, nothing drawn on them
            row, col = divmod(i, 2)
            assert np.array_equal(episode.canvas[row * 300:(row + 1) * 300, col * 300:(col + 1) * 300],
                                  resize_square(ref, 300))
        assert not episode.canvas[300:, 300:].any()  # three references: the fourth tile stays empty
        assert np.array_equal(build_reference_episode(refs[:1], target).canvas, resize_square(refs[0], 600))
        assert episode.target_map.to_original((0, 0, 599, 599)) == (0, 0, 79, 49)
