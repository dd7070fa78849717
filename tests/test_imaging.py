"""Tests for conceptseg.imaging on real files written with OpenCV and tifffile."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from conceptseg.errors import ImageReadError
from conceptseg.imaging import load_rgb, read_image, to_rgb_float, to_uint8


def write_png(path, image: np.ndarray) -> str:
    """Writes ``image`` (OpenCV channel order) with cv2 and returns the path as str."""
    assert cv2.imwrite(str(path), image), f"cv2 could not write {path}"
    return str(path)


def write_tiff(path, image: np.ndarray, **kwargs) -> str:
    """Writes ``image`` with tifffile (``kwargs`` go to ``imwrite``) and returns the path."""
    tifffile.imwrite(str(path), image, **kwargs)
    return str(path)


def fluorescence_like(dtype=np.uint16) -> np.ndarray:
    """A 118x100 image holding each value 0..235 exactly 50 times, shuffled.

    Sorted, value v fills positions 50v..50v+49 of 11800, so numpy's linear percentiles
    are exact: the 1st percentile (position 117.99) is 2 and the 99.8th (11775.40) is 235.
    """
    values = np.repeat(np.arange(236), 50)
    np.random.default_rng(0).shuffle(values)
    return values.reshape(118, 100).astype(dtype)


LO, HI = 2.0, 235.0  # the percentiles of fluorescence_like(), worked out above


class TestGray8BitPng:
    def test_reads_2d_uint8_with_the_written_values(self, tmp_path):
        gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
        path = write_png(tmp_path / "gray.png", gray)

        image = read_image(path)

        assert image.dtype == np.uint8
        assert image.shape == (16, 16)
        np.testing.assert_array_equal(image, gray)

    def test_becomes_three_equal_channels_divided_by_255(self, tmp_path):
        gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
        rgb = load_rgb(write_png(tmp_path / "gray.png", gray))

        assert rgb.dtype == np.float32
        assert rgb.shape == (16, 16, 3)
        assert rgb.flags["C_CONTIGUOUS"]
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel], gray.astype(np.float32) / 255.0)
        assert rgb[0, 0, 0] == 0.0 and rgb[15, 15, 0] == 1.0
        assert rgb[8, 0, 0] == pytest.approx(128 / 255)

    def test_dim_8bit_image_is_not_stretched(self, tmp_path):
        # 8-bit values keep their meaning: a dark image stays dark.
        gray = np.full((8, 8), 40, np.uint8)
        gray[0, 0] = 10
        rgb = load_rgb(write_png(tmp_path / "dim.png", gray))

        assert rgb.max() == pytest.approx(40 / 255)
        assert rgb[0, 0, 0] == pytest.approx(10 / 255)


class TestRgbPngChannelOrder:
    def test_pure_red_written_as_bgr_reads_as_rgb_red(self, tmp_path):
        bgr = np.zeros((4, 6, 3), np.uint8)
        bgr[0, 0] = (0, 0, 255)  # red in OpenCV's BGR
        bgr[1, 1] = (0, 255, 0)  # green
        bgr[2, 2] = (255, 0, 0)  # blue in OpenCV's BGR
        path = write_png(tmp_path / "rgb.png", bgr)

        image = read_image(path)

        assert image.shape == (4, 6, 3) and image.dtype == np.uint8
        assert tuple(image[0, 0]) == (255, 0, 0)
        assert tuple(image[1, 1]) == (0, 255, 0)
        assert tuple(image[2, 2]) == (0, 0, 255)
        assert tuple(load_rgb(path)[0, 0]) == (1.0, 0.0, 0.0)

    def test_16bit_rgb_png_is_also_reordered(self, tmp_path):
        bgr = np.zeros((2, 2, 3), np.uint16)
        bgr[0, 0] = (0, 0, 60000)  # red
        image = read_image(write_png(tmp_path / "rgb16.png", bgr))

        assert image.dtype == np.uint16
        assert tuple(image[0, 0]) == (60000, 0, 0)


class TestRgbaPng:
    def test_read_keeps_alpha_in_rgba_order(self, tmp_path):
        bgra = np.zeros((3, 3, 4), np.uint8)
        bgra[0, 0] = (0, 0, 255, 0)  # transparent red
        bgra[1, 1] = (255, 0, 0, 128)  # half-transparent blue
        image = read_image(write_png(tmp_path / "rgba.png", bgra))

        assert image.shape == (3, 3, 4)
        assert tuple(image[0, 0]) == (255, 0, 0, 0)
        assert tuple(image[1, 1]) == (0, 0, 255, 128)

    def test_alpha_is_dropped_not_applied(self, tmp_path):
        bgra = np.zeros((3, 3, 4), np.uint8)
        bgra[0, 0] = (0, 0, 255, 0)
        bgra[1, 1] = (255, 0, 0, 128)
        rgb = load_rgb(write_png(tmp_path / "rgba.png", bgra))

        assert rgb.shape == (3, 3, 3)
        assert tuple(rgb[0, 0]) == (1.0, 0.0, 0.0)  # colour kept although fully transparent
        assert tuple(rgb[1, 1]) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("writer, name", [(write_png, "fluo.png"), (write_tiff, "fluo.tif")])
class TestLowDynamicRange16Bit:
    """16-bit files whose values fill 0..235 of 0..65535, as fluorescence images do."""

    def test_read_keeps_uint16_values(self, tmp_path, writer, name):
        stored = fluorescence_like()
        image = read_image(writer(tmp_path / name, stored))

        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, stored)

    def test_stretched_to_span_zero_to_one(self, tmp_path, writer, name):
        rgb = load_rgb(writer(tmp_path / name, fluorescence_like()))

        assert rgb.shape == (118, 100, 3) and rgb.dtype == np.float32
        assert rgb.min() == 0.0 and rgb.max() == 1.0
        # Divided by the dtype's maximum instead, everything would sit below 0.004.
        assert np.median(rgb) == pytest.approx((117.5 - LO) / (HI - LO), abs=1e-6)

    def test_percentiles_map_to_zero_and_one(self, tmp_path, writer, name):
        stored = fluorescence_like()
        gray = load_rgb(writer(tmp_path / name, stored))[..., 0]

        # Values at or below the 1st percentile (0, 1, 2) become 0: 150 pixels, 1.27%.
        assert np.count_nonzero(gray == 0.0) == 150
        np.testing.assert_array_equal(np.unique(stored[gray == 0.0]), [0, 1, 2])
        # Only the top value, 235, reaches 1.
        np.testing.assert_array_equal(np.unique(stored[gray == 1.0]), [235])
        # In between the stretch is linear.
        for value in (3, 118, 234):
            assert gray[stored == value] == pytest.approx((value - LO) / (HI - LO), abs=1e-6)

    def test_hot_pixel_is_clipped_without_dimming_the_rest(self, tmp_path, writer, name):
        stored = fluorescence_like()
        r, c = np.argwhere(stored == 235)[0]
        stored[r, c] = 4000  # one saturated pixel
        gray = load_rgb(writer(tmp_path / name, stored))[..., 0]

        assert gray[r, c] == 1.0
        assert gray[stored == 118] == pytest.approx((118 - LO) / (HI - LO), abs=1e-6)
        assert gray[stored == 235] == pytest.approx(1.0)


class TestFloatTiff:
    def test_read_keeps_float32_values(self, tmp_path):
        stored = fluorescence_like(np.float32) * 0.5 - 20.0  # -20 .. 97.5, negatives included
        image = read_image(write_tiff(tmp_path / "float.tif", stored))

        assert image.dtype == np.float32
        np.testing.assert_array_equal(image, stored)

    def test_stretched_between_percentiles(self, tmp_path):
        stored = fluorescence_like(np.float32) * 0.5 - 20.0
        gray = load_rgb(write_tiff(tmp_path / "float.tif", stored))[..., 0]

        lo, hi = LO * 0.5 - 20.0, HI * 0.5 - 20.0  # -19, 97.5
        assert gray.min() == 0.0 and gray.max() == 1.0
        assert gray[stored == -20.0] == pytest.approx(0.0)
        assert gray[stored == 39.0] == pytest.approx((39.0 - lo) / (hi - lo), abs=1e-6)

    def test_constant_image_gives_zeros_not_nan(self, tmp_path):
        gray = load_rgb(write_tiff(tmp_path / "flat.tif", np.full((5, 5), 3.5, np.float32)))

        assert np.isfinite(gray).all()
        np.testing.assert_array_equal(gray, 0.0)

    def test_nan_pixel_does_not_spread_to_the_whole_image(self, tmp_path):
        stored = fluorescence_like(np.float32)
        stored[0, 0] = np.nan
        gray = load_rgb(write_tiff(tmp_path / "nan.tif", stored))[..., 0]

        assert np.isfinite(gray).all()
        assert gray[0, 0] == 0.0  # a masked pixel reads as the darkest value
        assert gray.max() == 1.0


class TestSingleChannelLastAxis:
    def test_array_hxwx1_becomes_hxwx3(self):
        image = np.arange(12, dtype=np.uint8).reshape(3, 4, 1) * 20
        rgb = to_rgb_float(image)

        assert rgb.shape == (3, 4, 3)
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel], image[..., 0] / np.float32(255))

    def test_tiff_stored_hxwx1_is_read_and_converted(self, tmp_path):
        stored = np.arange(42, dtype=np.uint8).reshape(6, 7, 1) * 5
        # One grey sample per pixel; tifffile records the trailing axis and restores it.
        path = write_tiff(tmp_path / "one_channel.tif", stored, photometric="minisblack")

        image = read_image(path)
        assert image.shape == (6, 7, 1)
        np.testing.assert_array_equal(image, stored)
        rgb = load_rgb(path)
        assert rgb.shape == (6, 7, 3)
        assert tuple(rgb[5, 6]) == pytest.approx((205 / 255,) * 3)

    def test_16bit_hxwx1_is_stretched_like_2d(self):
        image = fluorescence_like()
        np.testing.assert_array_equal(to_rgb_float(image[..., None]), to_rgb_float(image))


class TestUnreadableFiles:
    def test_missing_file(self, tmp_path):
        path = str(tmp_path / "nowhere" / "missing.png")
        with pytest.raises(ImageReadError, match="not found") as err:
            read_image(path)
        assert path in str(err.value)

    @pytest.mark.parametrize("name", ["truncated.png", "truncated.tif"])
    def test_truncated_file(self, tmp_path, name):
        full = tmp_path / ("full" + name[-4:])
        image = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
        write_png(full, image) if name.endswith(".png") else write_tiff(full, image)
        data = full.read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])

        with pytest.raises(ImageReadError) as err:
            read_image(str(path))
        assert str(path) in str(err.value)

    @pytest.mark.parametrize("name", ["garbage.png", "garbage.jpg", "garbage.tif", "garbage.TIFF"])
    def test_garbage_file(self, tmp_path, name):
        path = tmp_path / name
        path.write_bytes(b"this is not an image\n" * 10)

        with pytest.raises(ImageReadError) as err:
            read_image(str(path))
        assert str(path) in str(err.value)

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.png"
        path.write_bytes(b"")

        with pytest.raises(ImageReadError, match="empty, truncated or not an image") as err:
            read_image(str(path))
        assert str(path) in str(err.value)

    def test_load_rgb_raises_the_same_error(self, tmp_path):
        path = str(tmp_path / "missing.tif")
        with pytest.raises(ImageReadError, match="missing.tif"):
            load_rgb(path)


class TestToUint8:
    def test_round_trip_of_every_8bit_value(self, tmp_path):
        gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
        back = to_uint8(load_rgb(write_png(tmp_path / "gray.png", gray)))

        assert back.dtype == np.uint8 and back.shape == (16, 16, 3)
        for channel in range(3):
            np.testing.assert_array_equal(back[..., channel], gray)

    def test_round_trip_of_rgb_colours(self, tmp_path):
        bgr = (np.random.default_rng(2).random((10, 12, 3)) * 255).astype(np.uint8)
        path = write_png(tmp_path / "colours.png", bgr)

        np.testing.assert_array_equal(to_uint8(load_rgb(path)), read_image(path))

    def test_clips_and_rounds(self):
        image = np.array([[[-0.5, 0.0, 1.5], [0.4 / 255, 0.6 / 255, 1.0]]], np.float32)

        np.testing.assert_array_equal(to_uint8(image), [[[0, 0, 255], [0, 1, 255]]])
