"""Exporting a concept as a zip and importing one: every member checked before anything is written."""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
import zipfile
import zlib

import cv2
import numpy as np

from conceptseg.runs.library import store
from conceptseg.runs.library.concepts import (LibraryError, MAX_FILES, MAX_FILE_BYTES, MAX_PIXELS, MAX_TOTAL_BYTES,
                                              new_version, parse_manifest, exists, resolve)
from conceptseg.runs.library.saving import write_record


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread meanwhile)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _export_target(out_zip: str, overwrite: bool) -> str:
    """The absolute path to write an export to; LibraryError for a directory, a missing parent or an existing file."""
    out = os.path.abspath(os.path.expanduser(out_zip))
    if os.path.isdir(out):
        raise LibraryError(f"{out_zip} is a directory: give the zip's file name, e.g. "
                           f"{os.path.join(out_zip, 'concept.zip')}.")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise LibraryError(f"The directory {parent} does not exist: create it first, or export elsewhere.")
    if os.path.lexists(out) and not overwrite:
        raise LibraryError(f"{out_zip} exists already: pass --overwrite to replace it, or choose another file name.")
    return out


def export(name: str, out_zip: str, overwrite: bool = False) -> str:
    """Writes the concept's current version (or ``name@N``) into ``out_zip`` (files at its root); returns its path.

    An existing file is replaced only with ``overwrite``. The zip is written under a temporary
    name beside it and renamed when whole, so an interrupted export leaves no partial zip.
    """
    snapshot = resolve(name)
    record, root = snapshot.record, snapshot.root
    out = _export_target(out_zip, overwrite)
    members = ["concept.json"] + [entry[key] for entry in record["demonstrations"] for key in ("image", "mask")]
    missing = [m for m in members if not os.path.isfile(os.path.join(root, m))]
    if missing:
        raise LibraryError(f"Concept {name!r} is damaged: {', '.join(missing[:5])} missing in {root}.")
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".partial",
                                       dir=os.path.dirname(out))
    except OSError as e:
        raise LibraryError(f"Cannot write into {os.path.dirname(out)} ({e.strerror or e}).") from None
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for member in dict.fromkeys(members):
                z.write(os.path.join(root, member), member)
        os.chmod(partial, 0o666 & ~_umask())  # as a plainly created file (mkstemp's are private)
        if os.path.isdir(out):  # became one meanwhile: never renamed onto
            raise LibraryError(f"{out_zip} is a directory: give the zip's file name.")
        os.replace(partial, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise LibraryError(f"Cannot write {out} ({e.strerror or e}).") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return out


def _safe_member(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        raise LibraryError(f"The zip holds {name!r}: absolute paths are refused.")
    if any(part in ("..", "") for part in name.rstrip("/").split("/")):
        raise LibraryError(f"The zip holds {name!r}: a path leaving the concept's directory is refused.")
    mode = (info.external_attr >> 16) & 0o170000
    if mode == 0o120000:
        raise LibraryError(f"The zip holds {name!r} as a symbolic link; links are refused.")
    if info.file_size > MAX_FILE_BYTES:
        raise LibraryError(f"The zip holds {name!r} of {info.file_size} bytes; at most {MAX_FILE_BYTES} per file.")
    return name


_PNG = b"\x89PNG\r\n\x1a\n"


# JPEG start-of-frame markers (they hold the size): C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG from its header, without decoding; None for anything else."""
    if data[:8] == _PNG:
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        return None
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # the image ends or its data starts before any frame header
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if length < 7 or i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _decode(name: str, data: bytes, flags: int) -> np.ndarray:
    """Decodes a PNG/JPEG of the zip once its header says a size within MAX_PIXELS (checked first: no
    allocation for a few-kilobyte file claiming 32000x32000)."""
    size = header_size(data)
    if size is None:
        raise LibraryError(f"{name} in the zip is not a readable PNG/JPEG image (truncated or not an image).")
    width, height = size
    if width * height > MAX_PIXELS:
        raise LibraryError(f"{name} in the zip is {width}x{height} (its header says): too large, at most "
                           f"{MAX_PIXELS} pixels.")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if width and height else None
    if pixels is None or pixels.shape[:2] != (height, width):
        raise LibraryError(f"{name} in the zip is not a readable PNG/JPEG image (truncated or not an image).")
    return pixels


def validate_zip(path: str) -> tuple[dict, dict[str, bytes]]:
    """Reads and checks a concept zip entirely in memory; (record, files by name) or LibraryError."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise LibraryError(f"{path} is not a readable zip file ({e}).") from None
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        if len(infos) > MAX_FILES:
            raise LibraryError(f"The zip holds {len(infos)} files; a concept has at most {MAX_FILES}.")
        if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
            raise LibraryError(f"The zip unpacks to more than {MAX_TOTAL_BYTES} bytes; refused.")
        files = {}
        for info in infos:
            name = _safe_member(info)
            try:
                files[name] = z.read(info)
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
                raise LibraryError(f"{name} in the zip is damaged ({e}).") from None
    if "concept.json" not in files:
        raise LibraryError("The zip has no concept.json at its root: it is not an exported concept.")
    record = parse_manifest(files["concept.json"], "concept.json in the zip")
    expected = {"concept.json"}
    for entry in record["demonstrations"]:
        image, mask = entry["image"], entry["mask"]
        for member in (image, mask):
            if member not in files:
                raise LibraryError(f"concept.json names {member!r}, which the zip does not hold.")
        size = _decode(image, files[image], cv2.IMREAD_COLOR).shape[:2]
        if _decode(mask, files[mask], cv2.IMREAD_GRAYSCALE).shape[:2] != size:
            raise LibraryError(f"{mask} in the zip is not the size of {image}.")
        expected |= {image, mask}
    extra = sorted(set(files) - expected)
    if extra:
        raise LibraryError(f"The zip holds files concept.json does not name: {', '.join(extra[:5])}.")
    return record, files


def import_zip(path: str, overwrite: bool = False) -> dict:
    """Validates a concept zip, then writes it into the library; returns its record."""
    record, files = validate_zip(path)
    name = record["name"]
    if exists(name) and not overwrite:
        raise LibraryError(f"A concept named {name!r} is saved already; pass --overwrite to replace it.")

    def fill(staging: str, version: int) -> None:
        record["version"] = version  # numbered here, whatever the zip said
        for member, data in files.items():
            target = os.path.realpath(os.path.join(staging, member))
            if not target.startswith(os.path.realpath(staging) + os.sep):  # checked above; kept as a guard
                raise LibraryError(f"{member!r} would land outside the library.")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if member == store.RECORD:
                write_record(staging, record)
                continue
            with open(target, "wb") as f:
                f.write(data)

    new_version(name, fill, overwrite)
    return record
