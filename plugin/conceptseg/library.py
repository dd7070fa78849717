"""A library of saved concepts: demonstrations, settings and record, kept to be applied to other datasets.

One directory per concept under the library directory (``CONCEPTSEG_LIBRARY_DIR``, else
``<FiftyOne config dir>/conceptseg/concepts``), holding immutable versions and a pointer to the
current one (see :mod:`conceptseg.concept_store`)::

    NAME/current                  the current version's number
    NAME/v1/concept.json          settings, rule, verification, provenance, the demonstration list
    NAME/v1/demos/000.png         a copy of each demonstration image (8-bit RGB PNG)
    NAME/v1/demos/000_mask.png    its concept mask (0/255 PNG; empty = a negative demonstration)
    NAME/v2/...                   a later version (``concepts update``, an overwrite)

``NAME`` is the current version, ``NAME@N`` version N. A reader resolves the version once and
reads everything from its directory, so a concurrent overwrite never mixes two versions.

Nothing is pickled: applying a concept refits its route from these files, so a saved concept
survives the deletion of its source dataset and a library update. An imported zip is fully
validated (names inside the library, no links, bounded sizes, image sizes read from their
headers before any decoding, decodable images, a well-formed manifest) in memory before a
single file is written.
"""

from __future__ import annotations

import dataclasses
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import struct
import tempfile
import uuid
import zipfile
import zlib

import cv2
import numpy as np

from conceptseg import concept_store as store
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


# ---- versions: which one a name means, read once ------------------------------------------


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
    record = _parse_manifest(data, f"Concept {name!r} is damaged: {record_path}")
    record["version"] = number  # the directory says which version this is, whatever a zip said
    return Snapshot(name, number, root, record)


def _missing(name: str) -> LibraryError:
    saved = ", ".join(c["name"] for c in list_concepts()) or "none"
    return LibraryError(f"No saved concept {name!r} in {library_dir()}; saved concepts: {saved}.")


def _parse_manifest(data: bytes, where: str) -> dict:
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


def _new_version(name: str, fill, overwrite: bool = False, base: int | None = None) -> int:
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


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("conceptseg-r1", "fiftyone", "numpy", "scikit-learn", "scikit-image", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _write_png(path: str, pixels: np.ndarray) -> None:
    if not cv2.imwrite(path, pixels):
        raise LibraryError(f"Could not write {path}; check that the library directory is writable.")


def select_demonstrations(dataset, ids) -> tuple[object, list[str]]:
    """(the samples of ``dataset`` with these ids, warnings): ids that are no sample are named, not dropped.

    LibraryError when an id is not an id at all, or when none is a sample of the dataset.
    """
    from bson import ObjectId

    from conceptseg.review import id_list

    ids = id_list(ids)
    malformed = [i for i in ids if not ObjectId.is_valid(i)]
    if malformed:
        raise LibraryError(f"{', '.join(repr(i) for i in malformed[:5])} is not a sample id (24 hexadecimal "
                           "digits, as `dataset.values('id')` gives them).")
    view = dataset.select(ids)
    found = set(view.values("id"))
    unknown = [i for i in ids if i not in found]
    if not found:
        raise LibraryError(f"None of the {len(ids)} id(s) given is a sample of {dataset.name!r}: nothing to save.")
    warnings = []
    if unknown:
        warnings.append(f"{len(unknown)} of the {len(ids)} id(s) given are not samples of {dataset.name!r} and were "
                        f"left out: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}.")
    return view, warnings


def save(name: str, demonstrations, mask_field: str, classes: list[str] | None = None, route: str = "auto",
         model: str | None = None, threshold: float | None = None, overwrite: bool = False,
         warnings: list[str] | None = None) -> dict:
    """Saves the concept the ``demonstrations`` (a FiftyOne view) show in ``mask_field``; returns its record.

    The route is chosen and verified now (as a run would, at ``segment``'s threshold unless
    given), so the record holds its rule and verification. Images are copied as 8-bit PNGs,
    masks as the concept's 0/255 pixels. ``warnings`` (e.g. ids left out) are kept in the record.
    """
    from conceptseg import fiftyone_io as fio
    from conceptseg.jobs import _class_list, _load_model
    from conceptseg.router import DEFAULT_THRESHOLD, make_router

    check_name(name)
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if isinstance(classes, str):
        classes = classes.split(",")
    classes = [str(c).replace("\ufeff", "") for c in classes] if classes else classes
    if exists(name) and not overwrite:
        raise LibraryError(f"A concept named {name!r} is saved already; pass --overwrite to replace it.")
    if model is not None and not isinstance(model, str):
        raise LibraryError("Save a concept with a model given by directory, zoo name or hub id, not a loaded bundle.")
    classes = _class_list(classes)
    if len(demonstrations) == 0:
        raise LibraryError("No demonstrations: select samples (or a tag) whose masks show the concept.")
    ids, paths = demonstrations.values("id"), demonstrations.values("filepath")
    demos, concept = fio.read_demonstrations(demonstrations, mask_field, classes=classes)
    router = make_router(route, threshold, bundle=_load_model(model), question=", ".join(concept.classes or []) or None)
    choice = router.choose(demos)
    record = {
        "format": FORMAT, "name": name, "classes": concept.classes, "concept": concept.describe(),
        "settings": {"route": route, "threshold": threshold, "model": model, "mask_field": mask_field,
                     "classes": classes, "label_type": _label_type(demonstrations, mask_field),
                     "shown_class": None if classes else _shown_class(demonstrations, mask_field)},
        "route": choice.route.name, "rule": choice.route.rule(), "verification": choice.verification,
        "verified": choice.verified, "reason": choice.reason, "demonstrations": [],
        "warnings": list(warnings or []),
        "provenance": {"dataset": demonstrations._dataset.name, "sample_ids": ids,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "versions": _versions()},
    }

    def fill(directory: str, version: int) -> None:
        record["demonstrations"] = _write_demos(directory, [], zip(demos, ids, paths))
        record["version"] = version
        _write_record(directory, record)

    _new_version(name, fill, overwrite)
    return record


def _label_type(collection, field: str) -> str | None:
    """The label type's name of ``field`` (what `accept` creates on a dataset without it)."""
    schema = collection.get_field_schema()
    if field not in schema and collection.media_type == "video":
        schema = collection.get_frame_field_schema() or {}
    return getattr(getattr(schema.get(field), "document_type", None), "__name__", None)


def _shown_class(collection, field: str) -> dict | None:
    """The one class the demonstrations show in ``field`` when no classes were named: its name and, in
    a Segmentation, its value. An accept on a run applying the concept writes under that class
    (e.g. value 1 "concept"), not a new class named after the concept. None for several classes.
    """
    from conceptseg import classes as classes_

    label_type = _label_type(collection, field)
    if collection.media_type == "video" or label_type is None:
        return None
    labels = [label for label in collection.values(field) if label is not None]
    targets = classes_.mask_targets_of(collection, field)
    if label_type == "Segmentation":
        values = {v for label in labels for v in classes_.segmentation_values(label)}
        if len(values) != 1:
            return None
        value = values.pop()
        return {"name": classes_._name_of(value, targets),
                "value": list(value) if isinstance(value, tuple) else int(value)}
    names = set().union(*(classes_.label_classes(label, targets) for label in labels))
    return {"name": names.pop(), "value": None} if len(names) == 1 else None


def _write_demos(directory: str, entries: list[dict], new) -> list[dict]:
    """``entries`` plus each (Demonstration, sample id, filepath[, extra keys]) of ``new`` written as PNGs.

    Names continue after the ones ``entries`` use; returns the grown list.
    """
    from conceptseg.imaging import to_uint8

    os.makedirs(os.path.join(directory, "demos"), exist_ok=True)
    taken = {e[k] for e in entries for k in ("image", "mask")}
    out, i = list(entries), 0
    for demo, sample_id, filepath, *extra in new:
        while f"demos/{i:03d}.png" in taken or f"demos/{i:03d}_mask.png" in taken:
            i += 1
        image, mask = f"demos/{i:03d}.png", f"demos/{i:03d}_mask.png"
        taken |= {image, mask}
        _write_png(os.path.join(directory, image), cv2.cvtColor(to_uint8(demo.image), cv2.COLOR_RGB2BGR))
        _write_png(os.path.join(directory, mask), demo.mask.astype(np.uint8) * 255)
        out.append({"image": image, "mask": mask, "negative": not demo.mask.any(), "sample_id": sample_id,
                    "filepath": filepath, **(extra[0] if extra else {})})
    return out


def _write_record(directory: str, record: dict) -> None:
    with open(os.path.join(directory, store.RECORD), "w") as f:
        json.dump(record, f, indent=1)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # matched whole


def _check_model(record: dict):
    """The concept's model, or LibraryError when its bundle directory is gone."""
    model = record["settings"].get("model")
    if not model:
        return None
    from conceptseg.zoo import ZOO

    if model in ZOO or os.path.isdir(model) or HUB_ID.fullmatch(model):
        return model
    raise LibraryError(
        f"Concept {record['name']!r} was saved with the model bundle {model!r}, which is missing: restore "
        "the bundle there, or save the concept again with another --model."
    )


SCRATCH_PREFIX = "conceptseg-scratch-"  # the datasets an apply holds its demonstrations in, while it runs
_SCRATCH_INFO = "conceptseg_scratch"  # dataset.info key: the applying process (as a field lock's holder)


class ApplyInterrupted(KeyboardInterrupt):
    """Ctrl-C during an apply; its message says what was written and how to finish (the CLI prints it)."""


def remove_stale_scratch() -> list[str]:
    """Deletes the scratch datasets of applies killed outright (their process is gone); returns their names.

    A scratch dataset names its process in ``info`` as a field lock does (:mod:`conceptseg.locks`):
    one of another host is kept, as its process cannot be checked from here.
    """
    import fiftyone as fo

    from conceptseg.locks import is_stale

    removed = []
    for scratch_name in fo.list_datasets(glob_patt=SCRATCH_PREFIX + "*"):
        try:
            scratch = fo.load_dataset(scratch_name)
            holder = scratch.info.get(_SCRATCH_INFO)
            if holder is None:  # killed between its creation and its info: judged by its age
                age = datetime.datetime.utcnow() - (scratch.created_at or datetime.datetime.min)
                if age.total_seconds() < 3600:
                    continue
            elif not is_stale(holder):
                continue
            scratch.delete()
            removed.append(scratch_name)
        except ValueError:  # deleted meanwhile by its own apply or another cleanup
            continue
    return removed


def _scratch_dataset(name: str):
    """A new, non-persistent dataset for the demonstrations of an apply of ``name``, named for its process."""
    import fiftyone as fo

    from conceptseg.locks import _holder

    remove_stale_scratch()
    scratch = fo.Dataset(f"{SCRATCH_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
    scratch.info = {_SCRATCH_INFO: _holder()}
    scratch.save()
    return scratch


def _label_view(targets):
    """Where ``targets``' prediction labels are: the frames of a video collection, else the samples."""
    if getattr(targets, "media_type", None) == "video" and not targets._is_frames:
        return targets.to_frames(sample_frames="dynamic")
    return targets


def _interrupted(name: str, targets, pred_field: str, resume: bool, started: datetime.datetime) -> ApplyInterrupted:
    """What an interrupted apply wrote, in words (its labels get ``concept_name`` as a finished apply's do)."""
    from fiftyone import ViewField as F

    from conceptseg.runs import keys_for_field

    dataset, count = targets._root_dataset, 0
    keys = keys_for_field(dataset, pred_field)
    if keys:
        info = dataset.get_run_info(keys[0])
        run_id = getattr(info.config, "run_id", None)
        if run_id and (resume or (info.timestamp and info.timestamp >= started)):  # this run's, not an older one's
            view = _label_view(targets)
            if pred_field in view.get_field_schema():
                written = view.match(F(f"{pred_field}.run_id") == run_id)
                count = len(written)
                if count:
                    written.set_values(f"{pred_field}.concept_name", [name] * count)
    if not count:
        return ApplyInterrupted(f"nothing was written into {pred_field!r}; run the same command again")
    return ApplyInterrupted(
        f"{count} target(s) hold labels of concept {name!r} in {pred_field!r} (kept); run the same command "
        "with --resume to finish")


def apply(name: str, targets, pred_field: str, overwrite: bool = False, resume: bool = False,
          progress=None) -> dict:
    """Segments ``targets`` with the saved concept ``name`` (or ``name@N``): its route refitted on its demonstrations.

    Runs :func:`conceptseg.jobs.segment_by_demonstration` with the stored images and masks
    (through a scratch dataset, deleted after; one left by a killed apply is deleted by the
    next), so the masks are those of a run on ``targets``' dataset with the same
    demonstrations. The version is resolved once and every file is read from it. Labels
    carry ``concept_name`` and ``concept_version``; the run records them (its
    ``concept_source``), so its targets can be reviewed and accepted there, and a resume
    checks that it is the same version. Ctrl-C raises :class:`ApplyInterrupted`, saying how
    many targets were labelled.
    """
    from conceptseg import jobs

    snapshot = resolve(name)
    record = snapshot.record
    model = _check_model(record)
    settings = record["settings"]
    started = datetime.datetime.utcnow() - datetime.timedelta(seconds=1)
    scratch = scratch_demonstrations(snapshot)
    try:
        concept = ", ".join(record.get("classes") or []) or snapshot.name
        summary = jobs.segment_by_demonstration(
            scratch, targets, "mask", pred_field, route=settings["route"], threshold=settings["threshold"],
            concept=concept, overwrite=overwrite, resume=resume, model=model, progress=progress,
            source=concept_source(snapshot),
        )
    except ApplyInterrupted:
        raise
    except KeyboardInterrupt:
        raise _interrupted(snapshot.name, targets, pred_field, resume, started) from None
    finally:
        scratch.delete()
    name_labels(targets, summary, snapshot.name, snapshot.version)
    return {**summary, "concept_name": snapshot.name, "concept_version": snapshot.version}


def demonstration_keys(snapshot: Snapshot) -> list[str]:
    """Stable names of a version's demonstrations ("red@1:demos/000.png"), recorded as a run's demonstration ids."""
    return [f"{snapshot.name}@{snapshot.version}:{e['image']}" for e in snapshot.record["demonstrations"]]


def concept_source(snapshot: Snapshot) -> dict:
    """What a run made from a saved concept records about it (``concept_source`` in the run's config)."""
    record = snapshot.record
    return {"concept": snapshot.name, "version": snapshot.version, "classes": record.get("classes"),
            "mask_field": record["settings"].get("mask_field"), "label_type": record["settings"].get("label_type"),
            "shown_class": record["settings"].get("shown_class"), "demonstration_ids": demonstration_keys(snapshot)}


def scratch_demonstrations(snapshot: Snapshot, extra=()):
    """A temporary dataset of the version's demonstrations (0/1 masks in ``mask``), every file from ``snapshot.root``.

    ``extra``: more (image path, HxW bool mask) demonstrations, after the concept's own.
    """
    import fiftyone as fo

    root = snapshot.root
    samples = []
    for entry in snapshot.record["demonstrations"]:
        image, mask = os.path.join(root, entry["image"]), os.path.join(root, entry["mask"])
        pixels = cv2.imread(mask, cv2.IMREAD_GRAYSCALE) if os.path.isfile(mask) else None
        if not os.path.isfile(image) or pixels is None:
            raise LibraryError(
                f"Concept {snapshot.name!r} is damaged: {entry['image']} or its mask is missing in {root}.")
        samples.append(fo.Sample(filepath=image, mask=fo.Segmentation(mask=(pixels > 0).astype(np.uint8))))
    for filepath, mask in extra:
        samples.append(fo.Sample(filepath=filepath, mask=fo.Segmentation(mask=np.asarray(mask).astype(np.uint8))))
    scratch = _scratch_dataset(snapshot.name)  # not persistent; one a killed apply left is removed by the next
    try:
        scratch.add_samples(samples)
    except BaseException:
        scratch.delete()
        raise
    return scratch


def name_labels(targets, summary: dict, name: str, version: int) -> None:
    """Writes ``concept_name`` and ``concept_version`` on the labels the run of ``summary`` wrote."""
    from fiftyone import ViewField as F

    written = _label_view(targets).match(F(f"{summary['pred_field']}.run_key") == summary["run_key"])
    count = len(written)
    for field in (summary["pred_field"], summary.get("instances_field")):
        if field:
            written.set_values(f"{field}.concept_name", [name] * count)
            written.set_values(f"{field}.concept_version", [version] * count)


# ---- a concept learns from its use: update -----------------------------------------------


def update(name: str, dataset, pred_field: str) -> dict:
    """Adds what the review of a `concepts apply` run taught to the saved concept, as a new version.

    The run's accepted samples (their images, and the concept's pixels in the mask field the
    accepts wrote into) and the samples rejected as absent (negatives) join the current
    version's demonstrations; the route is chosen and verified again on all of them. Samples
    the concept holds already are not added twice. Earlier versions stay applicable as
    ``NAME@N``. Returns the new record with ``added`` (sample ids) and ``previous_version``.
    """
    from conceptseg import review
    from conceptseg.jobs import _load_model
    from conceptseg.router import make_router

    check_name(name)
    source, learned = review.learned_demonstrations(dataset, pred_field)
    if source["concept"] != name:
        raise LibraryError(
            f"{pred_field!r} on {dataset.name!r} applied the saved concept {source['concept']!r}, not {name!r}: "
            f"update {source['concept']!r}, or apply {name!r} and review that run."
        )
    base = resolve(name)
    record = base.record
    origin = record.get("provenance", {}).get("dataset")
    held = {(e.get("dataset", origin), e.get("sample_id")) for e in record["demonstrations"]}
    new = [(demo, demo.id, path, {"dataset": dataset.name}) for demo, path in learned
           if (dataset.name, demo.id) not in held]
    if not new:
        raise LibraryError(
            f"Nothing to add to {name!r}: " + (
                f"the {len(learned)} sample(s) accepted or rejected as absent on {pred_field!r} are in version "
                f"{base.version} already." if learned else
                f"nothing on {pred_field!r} is accepted or rejected as absent yet; review the run "
                f"(`conceptseg review --dataset {dataset.name} --pred-field {pred_field}`) and accept some.")
        )
    limit = (MAX_FILES - 1) // 2
    if len(record["demonstrations"]) + len(new) > limit:
        raise LibraryError(f"{name!r} would hold {len(record['demonstrations']) + len(new)} demonstrations; a concept "
                           f"holds at most {limit} (so that it can be exported). Accept fewer, or save a new concept.")
    settings = record["settings"]
    demos = read_demonstrations(base) + [d for d, *_ in new]
    router = make_router(settings["route"], settings["threshold"], bundle=_load_model(_check_model(record)),
                         question=", ".join(record.get("classes") or []) or None)
    choice = router.choose(demos)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    grown = {**record, "route": choice.route.name, "rule": choice.route.rule(), "verification": choice.verification,
             "verified": choice.verified, "reason": choice.reason}

    def fill(directory: str, version: int) -> None:
        for entry in record["demonstrations"]:  # the base version's files, unchanged
            for key in ("image", "mask"):
                target = os.path.join(directory, entry[key])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(base.root, entry[key]), target)
        grown["demonstrations"] = _write_demos(directory, record["demonstrations"], new)
        grown["version"] = version
        added = {"version": version, "from_version": base.version, "dataset": dataset.name,
                 "pred_field": pred_field, "applied_version": source.get("version"),
                 "sample_ids": [sample_id for _, sample_id, *_ in new],
                 "negatives": sum(1 for d, *_ in new if not d.mask.any()), "date": date}
        grown["provenance"] = {**record.get("provenance", {}),
                               "updates": list(record.get("provenance", {}).get("updates", [])) + [added]}
        _write_record(directory, grown)

    _new_version(name, fill, base=base.version)
    return {**grown, "added": [sample_id for _, sample_id, *_ in new], "previous_version": base.version}


def read_demonstrations(snapshot: Snapshot) -> list:
    """The version's demonstrations as Demonstrations (images and masks read from ``snapshot.root``)."""
    from conceptseg.imaging import load_rgb
    from conceptseg.types import Demonstration

    out = []
    for entry in snapshot.record["demonstrations"]:
        mask = cv2.imread(os.path.join(snapshot.root, entry["mask"]), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise LibraryError(f"Concept {snapshot.name!r} is damaged: {entry['mask']} is missing in {snapshot.root}.")
        out.append(Demonstration(image=load_rgb(os.path.join(snapshot.root, entry["image"])), mask=mask > 0,
                                 id=entry["image"]))
    return out


# ---- zip export and import --------------------------------------------------------------


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
    record = _parse_manifest(files["concept.json"], "concept.json in the zip")
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
                _write_record(staging, record)
                continue
            with open(target, "wb") as f:
                f.write(data)

    _new_version(name, fill, overwrite)
    return record
