"""Real images with real masks, taken from two wheels on the package registry.

- stardist 0.9.2: ``img2d.tif`` / ``mask2d.tif``, a 512x512 fluorescence image of
  nuclei with 125 labelled instances from the 2018 Kaggle Data Science Bowl (Caicedo et
  al., Nature Methods 2019; BBBC038, CC0). Package licence BSD-3-Clause.
- imgaug 0.4.0: ``quokka.jpg`` (643x960) and ``quokka_annotations.json``, whose
  polygon outlines the animal. Package licence MIT.

The wheels are downloaded with pip (no other source) and only these files are kept,
with both licence files, under the cache directory. Neither package is imported:
imgaug breaks on numpy 2 and stardist needs TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from conceptseg.errors import SetupError

# (wheel requirement, {member in wheel: (file name in cache, sha256)})
_WHEELS = {
    "stardist==0.9.2": {
        "stardist/data/images/img2d.tif": (
            "nuclei_img2d.tif",
            "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
        ),
        "stardist/data/images/mask2d.tif": (
            "nuclei_mask2d.tif",
            "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
        ),
        "stardist-0.9.2.dist-info/licenses/LICENSE.txt": ("LICENSE-stardist.txt", None),
    },
    "imgaug==0.4.0": {
        "imgaug/quokka.jpg": (
            "quokka.jpg",
            "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e",
        ),
        "imgaug/quokka_annotations.json": (
            "quokka_annotations.json",
            "ac105c75c464fb5174d9a3f109a6440f8a3fdc6b52dfde4b7610c4ddc47471e1",
        ),
        "imgaug-0.4.0.dist-info/LICENSE": ("LICENSE-imgaug.txt", None),
    },
}

# stardist ships one wheel per platform; the data files are the same in each, so ask
# for one fixed wheel whatever machine runs this.
_PIP_PLATFORM = [
    "--only-binary=:all:",
    "--platform", "manylinux_2_28_x86_64",
    "--python-version", "3.11",
    "--implementation", "cp",
]


def default_cache_dir() -> str:
    """``$CONCEPTSEG_DATA_DIR``, else ``~/.cache/conceptseg/demo``."""
    return os.environ.get("CONCEPTSEG_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "conceptseg", "demo"
    )


@dataclass
class DemoFiles:
    """Paths of the extracted demo files."""

    nuclei_image: str
    nuclei_mask: str
    quokka_image: str
    quokka_annotations: str


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _complete(cache_dir: str) -> bool:
    for members in _WHEELS.values():
        for name, digest in members.values():
            path = os.path.join(cache_dir, name)
            if not os.path.isfile(path) or (digest and _sha256(path) != digest):
                return False
    return True


def fetch_demo_files(cache_dir: str | None = None) -> DemoFiles:
    """Downloads the two wheels once and extracts the demo files (checksums verified)."""
    cache_dir = cache_dir or default_cache_dir()
    if not _complete(cache_dir):
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp]
            proc = subprocess.run(cmd + _PIP_PLATFORM + list(_WHEELS), capture_output=True, text=True)
            if proc.returncode != 0:
                raise SetupError(
                    "Could not download the demo wheels (stardist==0.9.2, imgaug==0.4.0) from the "
                    f"package registry: {proc.stderr.strip()[-500:]}. Check pip's index access, or "
                    f"place the files in {cache_dir} (CONCEPTSEG_DATA_DIR)."
                )
            for wheel in os.listdir(tmp):
                _extract(os.path.join(tmp, wheel), cache_dir)
        if not _complete(cache_dir):
            raise SetupError(f"Demo files in {cache_dir} are missing or fail their checksum.")
    return DemoFiles(
        nuclei_image=os.path.join(cache_dir, "nuclei_img2d.tif"),
        nuclei_mask=os.path.join(cache_dir, "nuclei_mask2d.tif"),
        quokka_image=os.path.join(cache_dir, "quokka.jpg"),
        quokka_annotations=os.path.join(cache_dir, "quokka_annotations.json"),
    )


def _extract(wheel: str, cache_dir: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        for members in _WHEELS.values():
            for member, (name, _) in members.items():
                if member in z.namelist():
                    with z.open(member) as src, open(os.path.join(cache_dir, name), "wb") as dst:
                        dst.write(src.read())


def nuclei(files: DemoFiles) -> tuple[np.ndarray, np.ndarray]:
    """The 512x512 uint16 fluorescence image and its uint16 instance labels (0 = background)."""
    import tifffile

    return tifffile.imread(files.nuclei_image), tifffile.imread(files.nuclei_mask)


def nuclei_tiles(files: DemoFiles, tile: int = 128) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Cuts the nuclei image into tile x tile pieces: (name, uint16 image, uint16 labels)."""
    image, labels = nuclei(files)
    out = []
    for r in range(0, image.shape[0] - tile + 1, tile):
        for c in range(0, image.shape[1] - tile + 1, tile):
            out.append((f"nuclei_r{r:03d}_c{c:03d}", image[r : r + tile, c : c + tile], labels[r : r + tile, c : c + tile]))
    return out


def quokka(files: DemoFiles) -> tuple[np.ndarray, np.ndarray]:
    """The quokka photo (643x960x3 uint8 RGB) and its polygon rasterised as a bool mask."""
    import cv2

    image = cv2.cvtColor(cv2.imread(files.quokka_image, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with open(files.quokka_annotations) as f:
        polygon = json.load(f)["polygons"][0]["keypoints"]
    points = np.array([[p["x"], p["y"]] for p in polygon], np.int32)
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [points], 1)
    return image, mask.astype(bool)
