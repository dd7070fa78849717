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
validated (names inside the library, no links, bounded sizes, decodable images) in memory
before a single file is written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import zipfile
import zlib

import cv2
import numpy as np

from conceptseg import concept_store as store
from conceptseg.errors import ConceptSegError

FORMAT = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_FILES = 200
MAX_FILE_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 512 * 2**20
MAX_PIXELS = 8192 * 8192


class LibraryError(ConceptSegError):
    """A saved concept is missing, misnamed, invalid, or would be overwritten."""


def library_dir() -> str:
    """The library's directory (``CONCEPTSEG_LIBRARY_DIR`` overrides the default)."""
    override = os.environ.get("CONCEPTSEG_LIBRARY_DIR")
    if override:
        return os.path.abspath(os.path.expanduser(override))
    import fiftyone.constants as foc

    return os.path.join(foc.FIFTYONE_CONFIG_DIR, "conceptseg", "concepts")


def check_name(name: str) -> str:
    """Raises LibraryError unless ``name`` is a plain concept name (no path characters)."""
    if not isinstance(name, str) or not NAME.match(name):
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
    try:
        with open(os.path.join(root, store.RECORD)) as f:
            record = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        raise LibraryError(f"Concept {name!r} version {number} is missing from {path} (deleted while being "
                           "read, or damaged).") from None
    record["version"] = number  # the directory says which version this is, whatever a zip said
    return Snapshot(name, number, root, record)


def load(name: str) -> dict:
    """The record (concept.json) of ``name`` (its current version) or ``name@N``; LibraryError if absent."""
    return resolve(name).record


def list_concepts() -> list[dict]:
    """Every saved concept's summary (name, version, classes, route, verification, date, demonstrations)."""
    root = library_dir()
    if not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root)):
        if NAME.match(name) and _stored(os.path.join(root, name)):
            record = load(name)
            out.append({k: record.get(k) for k in ("name", "version", "classes", "route", "verification", "verified")}
                       | {"demonstrations": len(record["demonstrations"]), "date": record["provenance"]["date"]})
    return out


def delete(name: str) -> None:
    """Removes a saved concept, every version of it."""
    load(name)
    path = _path(name)
    with store.writing(path):
        store.remove(path)


def _new_version(name: str, fill, overwrite: bool = False, base: int | None = None) -> int:
    """Writes a new version of ``name`` and makes it current; returns its number.

    ``fill(directory, version)`` writes the version's files into a staging directory, which
    is then renamed in whole. A concept of that name must not be saved already unless
    ``overwrite``; with ``base`` (an update), the current version must still be ``base``.
    Earlier versions stay as they are (``NAME@N``).
    """
    path = _path(name)
    os.makedirs(library_dir(), exist_ok=True)
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


def save(name: str, demonstrations, mask_field: str, classes: list[str] | None = None, route: str = "auto",
         model: str | None = None, threshold: float = 0.5, overwrite: bool = False) -> dict:
    """Saves the concept the ``demonstrations`` (a FiftyOne view) show in ``mask_field``; returns its record.

    The route is chosen and verified now (as a run would), so the record holds its rule and
    verification. Images are copied as 8-bit PNGs, masks as the concept's 0/255 pixels.
    """
    from conceptseg import fiftyone_io as fio
    from conceptseg.imaging import to_uint8
    from conceptseg.jobs import _class_list, _load_model
    from conceptseg.router import make_router

    check_name(name)
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
                     "classes": classes, "label_type": _label_type(demonstrations, mask_field)},
        "route": choice.route.name, "rule": choice.route.rule(), "verification": choice.verification,
        "verified": choice.verified, "reason": choice.reason, "demonstrations": [],
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


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_model(record: dict):
    """The concept's model, or LibraryError when its bundle directory is gone."""
    model = record["settings"].get("model")
    if not model:
        return None
    from conceptseg.zoo import ZOO

    if model in ZOO or os.path.isdir(model) or HUB_ID.match(model):
        return model
    raise LibraryError(
        f"Concept {record['name']!r} was saved with the model bundle {model!r}, which is missing: restore "
        "the bundle there, or save the concept again with another --model."
    )


def apply(name: str, targets, pred_field: str, overwrite: bool = False, resume: bool = False,
          progress=None) -> dict:
    """Segments ``targets`` with the saved concept ``name`` (or ``name@N``): its route refitted on its demonstrations.

    Runs :func:`conceptseg.jobs.segment_by_demonstration` with the stored images and masks
    (through a temporary dataset), so the masks are those of a run on ``targets``' dataset
    with the same demonstrations. The version is resolved once and every file is read from
    it. Labels carry ``concept_name`` and ``concept_version``; the run records them (its
    ``concept_source``), so its targets can be reviewed and accepted there.
    """
    from conceptseg import jobs

    snapshot = resolve(name)
    record = snapshot.record
    model = _check_model(record)
    settings = record["settings"]
    scratch = scratch_demonstrations(snapshot)
    try:
        concept = ", ".join(record.get("classes") or []) or snapshot.name
        summary = jobs.segment_by_demonstration(
            scratch, targets, "mask", pred_field, route=settings["route"], threshold=settings["threshold"],
            concept=concept, overwrite=overwrite, resume=resume, model=model, progress=progress,
            source=concept_source(snapshot),
        )
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
            "demonstration_ids": demonstration_keys(snapshot)}


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
    scratch = fo.Dataset()  # not persistent: gone with the process at the latest
    try:
        scratch.add_samples(samples)
    except BaseException:
        scratch.delete()
        raise
    return scratch


def name_labels(targets, summary: dict, name: str, version: int) -> None:
    """Writes ``concept_name`` and ``concept_version`` on the labels the run of ``summary`` wrote."""
    from fiftyone import ViewField as F

    written = targets.match(F(f"{summary['pred_field']}.run_key") == summary["run_key"])
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


def export(name: str, out_zip: str) -> str:
    """Writes the concept's current version (or ``name@N``) into ``out_zip`` (files at its root); returns its path."""
    snapshot = resolve(name)
    record, root = snapshot.record, snapshot.root
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(os.path.join(root, "concept.json"), "concept.json")
        for entry in record["demonstrations"]:
            for key in ("image", "mask"):
                z.write(os.path.join(root, entry[key]), entry[key])
    return os.path.abspath(out_zip)


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


def _decode(name: str, data: bytes, flags: int) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if pixels is None:
        raise LibraryError(f"{name} in the zip is not a readable PNG/JPEG image (truncated or not an image).")
    if pixels.shape[0] * pixels.shape[1] > MAX_PIXELS:
        raise LibraryError(f"{name} in the zip is {pixels.shape[1]}x{pixels.shape[0]}: too large.")
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
    try:
        record = json.loads(files["concept.json"])
        check_name(record["name"])
        entries = record["demonstrations"]
        record["settings"]["route"], record["provenance"]["date"]
    except (ValueError, KeyError, TypeError) as e:
        raise LibraryError(f"concept.json in the zip is not a concept record ({e}).") from None
    expected = {"concept.json"}
    if not entries:
        raise LibraryError("concept.json lists no demonstrations.")
    for entry in entries:
        image, mask = entry.get("image"), entry.get("mask")
        for member in (image, mask):
            if not isinstance(member, str) or member not in files:
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
