"""Reading images of any common kind into one convention: HxWx3 float32 RGB in [0, 1]."""

from __future__ import annotations

import hashlib
import os

import cv2
import numpy as np

from conceptseg.errors import ImageReadError

# Wider-than-8-bit and float images are stretched between these percentiles: robust to a
# few hot pixels, and it fills [0, 1] for low-dynamic-range fluorescence or 12-bit sensors.
_PERCENTILES = (1.0, 99.8)


def read_image(path: str) -> np.ndarray:
    """Reads an image file as it is stored (any dtype, 2-D or HxWxC, RGB order)."""
    if not os.path.isfile(path):
        raise ImageReadError(f"Image file not found: {path}. Check the sample's filepath.")
    image = None
    if path.lower().endswith((".tif", ".tiff")):
        import tifffile

        try:
            image = tifffile.imread(path)
        except Exception as e:  # tifffile raises many types for corrupt files
            raise ImageReadError(f"Cannot decode TIFF {path}: {e}") from e
    else:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ImageReadError(
                f"Cannot decode image {path}: the file is empty, truncated or not an image."
            )
        if image.ndim == 3:
            code = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
            image = cv2.cvtColor(image, code)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ImageReadError(f"Image {path} has shape {image.shape}; expected HxW or HxWxC.")
    return image


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """Converts grayscale, RGB, RGBA, 8/16-bit or float images to HxWx3 float32 in [0, 1].

    8-bit images are divided by 255 so that colours keep their meaning across images;
    wider integer and float images are stretched between their 1st and 99.8th
    percentiles, the usual normalisation for microscopy, whose values fill only a small
    part of the 16-bit range. Alpha is dropped: the concept lives in the colour channels.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        image = image[..., :3]
    if image.dtype == np.uint8 or image.dtype == bool:
        out = image.astype(np.float32) / (1.0 if image.dtype == bool else 255.0)
    else:
        out = image.astype(np.float32)
        # NaN pixels (masked areas of float TIFFs) would turn every percentile into NaN.
        out = np.nan_to_num(out, nan=float(np.nanmin(out)) if np.isfinite(out).any() else 0.0)
        lo, hi = np.percentile(out, _PERCENTILES)
        if hi <= lo:
            hi = lo + 1.0
        out = np.clip((out - lo) / (hi - lo), 0.0, 1.0)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_rgb(path: str) -> np.ndarray:
    """Reads an image file and converts it with :func:`to_rgb_float`."""
    return to_rgb_float(read_image(path))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Converts an HxWx3 float image in [0, 1] to uint8 for display and files."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def content_key(image: np.ndarray) -> str:
    """A cache key naming an HxWx3 uint8 image by its content: equal pixels, equal key."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(repr(image.shape).encode())
    return f"content-{digest.hexdigest()}"
