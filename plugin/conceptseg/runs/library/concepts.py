"""Saved concepts on disk: names, versions (``NAME@N``), manifests, listing and deletion."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil

import cv2
import numpy as np

from conceptseg.runs.library import store
from conceptseg.errors import ConceptSegError



FORMAT = 1


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # matched whole (fullmatch): "abc\n" is no name


# A file a manifest names: relative, plain characters, no ".." (matched whole).
MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


MAX_FILES = 200


MAX_FILE_BYTES = 64 * 2**20


MAX_TOTAL_BYTES = 512 * 2**20


MAX_PIXELS = 8192 * 8192


class LibraryError(ConceptSegError):
    """A saved concept is missing, misnamed, invalid, or would be overwritten."""


def library_dir() -> str:
    """The library's directory (``CONCEPTSEG_LIBRARY_DIR`` overrides the default); LibraryError if it is a file."""
    override = os.environ.get("CONCEPTSEG_LIBRARY_DIR")
    if override:
        path = os.path.abspath(os.path.expanduser(override))
    else:
        import fiftyone.constants as foc

        path = os.path.join(foc.FIFTYONE_CONFIG_DIR, "conceptseg", "concepts")
    if os.path.exists(path) and not os.path.isdir(path):
        raise LibraryError(
            f"The concept library {path} is a file, not a directory: point CONCEPTSEG_LIBRARY_DIR at a "
            "directory (or unset it for the default)."
        )
    return path


def _ensure_library_dir() -> str:
    """The library's directory, created if needed (LibraryError where it cannot be)."""
    root = library_dir()
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise LibraryError(f"Cannot create the concept library {root} ({e.strerror or e}): point "
                           "CONCEPTSEG_LIBRARY_DIR at a writable directory.") from None
    return root


def check_name(name: str) -> str:
    """Raises LibraryError unless ``name`` is a plain concept name (no path characters)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise LibraryError(
            f"The concept name {name!r} is not allowed: use letters, digits, '_' and '-' (at most 64, "
            "starting with a letter or digit), e.g. 'red_disc'."
        )
    return name


def _path(name: str) -> str:
    return os.path.join(library_dir(), check_name(name))


def exists(name: str) -> bool:
    """Whether a concept of that name is saved."""
    return _stored(_path(name))


def _stored(path: str) -> bool:
    try:
        return store.current(path) is not None
    except store.StoreError:
        return True  # saved, but damaged: resolve() names the damage


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One version of a saved concept, resolved once: every file of it is read from ``root``."""

    name: str
    version: int
    root: str
    record: dict


VERSION_REF = re.compile(r"^([1-9][0-9]{0,8})$")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """("red", None) for "red" (the current version), ("red", 2) for "red@2"."""
    if isinstance(ref, str) and "@" in ref:
        name, _, version = ref.partition("@")
        check_name(name)
        if not VERSION_REF.match(version):
            raise LibraryError(f"{ref!r} is not NAME@VERSION: a version is a number from 1 (e.g. {name}@1).")
        return name, int(version)
    return check_name(ref), None


def resolve(ref: str) -> Snapshot:
    """The version ``ref`` names (``NAME``: the current one, ``NAME@N``: version N), its record read once."""
    name, version = parse_ref(ref)
    path = _path(name)
    try:
        latest = store.current(path)
    except store.StoreError as e:
        raise LibraryError(f"Concept {name!r} is damaged: {e}; delete it and save or import it again.") from None
    if latest is None:
        saved = ", ".join(c["name"] for c in list_concepts()) or "none"
        raise LibraryError(f"No saved concept {name!r} in {library_dir()}; saved concepts: {saved}.")
    number = latest if version is None else version
    root = store.version_dir(path, number)
    if root is None:
        known = ", ".join(f"{name}@{v}" for v in store.versions(path)) or "none"
        if version is None:
            raise LibraryError(f"Concept {name!r} is damaged: its current version {number} is missing (versions "
                               f"there: {known}); apply one of those, or delete it and save it again.")
        raise LibraryError(f"Concept {name!r} has no version {version}; its versions: {known}.")
    record_path = os.path.join(root, store.RECORD)
    try:
        with open(record_path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise LibraryError(f"Concept {name!r} version {number} is missing from {path} (deleted while being "
                           "read, or damaged).") from None
    except OSError as e:
        raise LibraryError(f"Cannot read {record_path} ({e.strerror or e}).") from None
    record = parse_manifest(data, f"Concept {name!r} is damaged: {record_path}")
    record["version"] = number  # the directory says which version this is, whatever a zip said
    return Snapshot(name, number, root, record)


def _missing(name: str) -> LibraryError:
    saved = ", ".join(c["name"] for c in list_concepts()) or "none"
    return LibraryError(f"No saved concept {name!r} in {library_dir()}; saved concepts: {saved}.")


def parse_manifest(data: bytes, where: str) -> dict:
    """concept.json's bytes as a checked record (a UTF-8 BOM is allowed); LibraryError naming ``where``."""
    try:
        record = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        raise LibraryError(f"{where} is not valid JSON ({e}).") from None
    try:
        return validate_manifest(record)
    except LibraryError as e:
        raise LibraryError(f"{where} is not a concept record: {e}") from None


def load(name: str) -> dict:
    """The record (concept.json) of ``name`` (its current version) or ``name@N``; LibraryError if absent or damaged."""
    return resolve(name).record


def list_concepts(broken: dict | None = None) -> list[dict]:
    """Every saved concept's summary (name, version, classes, route, verification, date, demonstrations).

    A concept whose record is damaged is left out; with ``broken`` (a dict) it is named there
    with the reason, so one bad concept.json never hides the others.
    """
    root = library_dir()
    if not os.path.isdir(root):
        return []
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        raise LibraryError(f"Cannot read the concept library {root} ({e.strerror or e}).") from None
    out = []
    for name in names:
        if NAME.fullmatch(name) and _stored(os.path.join(root, name)):
            try:
                record = load(name)
            except LibraryError as e:
                if broken is not None:
                    broken[name] = str(e)
                continue
            out.append({k: record.get(k) for k in ("name", "version", "classes", "route", "verification", "verified")}
                       | {"demonstrations": len(record["demonstrations"]), "date": record["provenance"]["date"]})
    return out


def delete(name: str) -> None:
    """Removes a saved concept, every version of it, a damaged one included."""
    path = _path(name)
    if not os.path.isdir(path):
        raise _missing(name)
    with store.writing(path):
        if not os.path.isdir(path):
            raise _missing(name)  # removed meanwhile
        try:
            store.remove(path)
        except OSError as e:
            raise LibraryError(f"Cannot remove {path} ({e.strerror or e}).") from None


def new_version(name: str, fill, overwrite: bool = False, base: int | None = None) -> int:
    """Writes a new version of ``name`` and makes it current; returns its number.

    ``fill(directory, version)`` writes the version's files into a staging directory, which
    is then renamed in whole. A concept of that name must not be saved already unless
    ``overwrite``; with ``base`` (an update), the current version must still be ``base``.
    Earlier versions stay as they are (``NAME@N``).
    """
    path = _path(name)
    _ensure_library_dir()
    with store.writing(path):
        try:
            latest = store.current(path)
        except store.StoreError as e:
            raise LibraryError(f"Concept {name!r} is damaged: {e}; delete it and save or import it again.") from None
        if base is not None and latest != base:
            raise LibraryError(f"Concept {name!r} changed while this update was prepared (version {latest} now, "
                               f"the update was made on version {base}); run the update again.")
        if base is None and latest is not None and not overwrite:
            raise LibraryError(f"A concept named {name!r} is saved already; pass --overwrite to replace it.")
        version = store.next_version(path)
        staged = store.staging(path)
        try:
            fill(staged, version)
            store.install(path, staged, version)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            if latest is None and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)  # nothing of a concept that was never saved stays behind
            raise
    return version


def _text(value, what: str, optional: bool = True) -> str | None:
    """A string of the manifest, a stray UTF-8 BOM removed (it must not reach a prompt)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise LibraryError(f"{what} must be a string, got {type(value).__name__} {value!r:.60}.")
    return value.replace("\ufeff", "")


def _class_names(value, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):  # "disc" is one class name, not four
        raise LibraryError(f"{what} must be a list of class names, got {type(value).__name__} {value!r:.60}.")
    names = [_text(c, f"each of {what}", optional=False).strip() for c in value]
    if not all(names):
        raise LibraryError(f"{what} holds an empty class name.")
    return names


def _number(value, what: str, optional: bool, low: float | None = None, high: float | None = None):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LibraryError(f"{what} must be a number, got {value!r:.60}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise LibraryError(f"{what} must be in [{low}, {high}], got {value!r}.")
    return value


def _member(value, what: str) -> str:
    if not isinstance(value, str) or not MEMBER.fullmatch(value) or ".." in value.split("/"):
        raise LibraryError(f"{what} must be a relative file name such as 'demos/000.png', got {value!r:.80}.")
    return value


def _mapping(record: dict, key: str) -> dict:
    value = record.get(key)
    if not isinstance(value, dict):
        raise LibraryError(f"{key!r} must be an object, got {value!r:.60}.")
    return value


def validate_manifest(record) -> dict:
    """Checks a concept record (concept.json) field by field; returns it with its strings cleaned.

    Raises LibraryError, one sentence naming the first bad field: a damaged or hand-edited
    record is refused where it is read, never half-used.
    """
    if not isinstance(record, dict):
        raise LibraryError(f"the record must be a JSON object, got {type(record).__name__}.")
    record = dict(record)
    version = record.get("format", FORMAT)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT:
        raise LibraryError(f"'format' is {version!r}; this version reads concept format {FORMAT} "
                           "(a newer conceptseg wrote it?).")
    check_name(record.get("name"))
    demos = record.get("demonstrations")
    if not isinstance(demos, list) or not demos:
        raise LibraryError(f"'demonstrations' must be a non-empty list of {{image, mask}} entries, got {demos!r:.60}.")
    entries = []
    for i, entry in enumerate(demos):
        if not isinstance(entry, dict):
            raise LibraryError(f"demonstration {i} must be an object with 'image' and 'mask', got {entry!r:.60}.")
        entry = dict(entry, image=_member(entry.get("image"), f"demonstration {i}'s 'image'"),
                     mask=_member(entry.get("mask"), f"demonstration {i}'s 'mask'"))
        if not isinstance(entry.get("negative", False), bool):
            raise LibraryError(f"demonstration {i}'s 'negative' must be true or false.")
        entries.append(entry)
    record["demonstrations"] = entries
    settings = dict(_mapping(record, "settings"))
    settings["route"] = _text(settings.get("route"), "'settings.route'", optional=False)
    if "threshold" not in settings:
        raise LibraryError("'settings.threshold' is missing (the held-out IoU the route must reach).")
    settings["threshold"] = _number(settings["threshold"], "'settings.threshold'", False, 0.0, 1.0)
    for key in ("model", "mask_field"):
        settings[key] = _text(settings.get(key), f"'settings.{key}'")
    settings["classes"] = _class_names(settings.get("classes"), "'settings.classes'")
    record["settings"] = settings
    record["classes"] = _class_names(record.get("classes"), "'classes'")
    for key in ("concept", "route", "rule", "reason"):
        record[key] = _text(record.get(key), f"{key!r}")
    record["verification"] = _number(record.get("verification"), "'verification'", True)
    if not isinstance(record.get("verified"), (bool, type(None))):
        raise LibraryError(f"'verified' must be true or false, got {record.get('verified')!r:.60}.")
    provenance = dict(_mapping(record, "provenance"))
    provenance["date"] = _text(provenance.get("date"), "'provenance.date'", optional=False)
    record["provenance"] = provenance
    warnings = record.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise LibraryError("'warnings' must be a list of strings.")
    return record


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("conceptseg-r1", "fiftyone", "numpy", "scikit-learn", "scikit-image", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def write_png(path: str, pixels: np.ndarray) -> None:
    if not cv2.imwrite(path, pixels):
        raise LibraryError(f"Could not write {path}; check that the library directory is writable.")
