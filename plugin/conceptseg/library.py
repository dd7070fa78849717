"""A library of saved concepts: demonstrations, settings and record, kept to be applied to other datasets.

One directory per concept under the library directory (``CONCEPTSEG_LIBRARY_DIR``, else
``<FiftyOne config dir>/conceptseg/concepts``)::

    NAME/concept.json          settings, rule, verification, provenance, the demonstration list
    NAME/demos/000.png         a copy of each demonstration image (8-bit RGB PNG)
    NAME/demos/000_mask.png    its concept mask (0/255 PNG; empty = a negative demonstration)

Nothing is pickled: applying a concept refits its route from these files, so a saved concept
survives the deletion of its source dataset and a library update. An imported zip is fully
validated (names inside the library, no links, bounded sizes, decodable images) in memory
before a single file is written.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib

import cv2
import numpy as np

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
    return os.path.isfile(os.path.join(_path(name), "concept.json"))


def load(name: str) -> dict:
    """The concept's record (concept.json); LibraryError naming the saved ones if absent."""
    path = os.path.join(_path(name), "concept.json")
    if not os.path.isfile(path):
        saved = ", ".join(c["name"] for c in list_concepts()) or "none"
        raise LibraryError(f"No saved concept {name!r} in {library_dir()}; saved concepts: {saved}.")
    with open(path) as f:
        return json.load(f)


def list_concepts() -> list[dict]:
    """Every saved concept's summary (name, classes, route, verification, date, demonstrations)."""
    root = library_dir()
    if not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root)):
        if NAME.match(name) and os.path.isfile(os.path.join(root, name, "concept.json")):
            record = load(name)
            out.append({k: record.get(k) for k in ("name", "classes", "route", "verification", "verified")}
                       | {"demonstrations": len(record["demonstrations"]), "date": record["provenance"]["date"]})
    return out


def delete(name: str) -> None:
    """Removes a saved concept."""
    load(name)
    shutil.rmtree(_path(name))


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
    os.makedirs(library_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=library_dir())
    try:
        os.makedirs(os.path.join(staging, "demos"))
        entries = []
        for i, (demo, sample_id, filepath) in enumerate(zip(demos, ids, paths)):
            image, mask = f"demos/{i:03d}.png", f"demos/{i:03d}_mask.png"
            _write_png(os.path.join(staging, image), cv2.cvtColor(to_uint8(demo.image), cv2.COLOR_RGB2BGR))
            _write_png(os.path.join(staging, mask), demo.mask.astype(np.uint8) * 255)
            entries.append({"image": image, "mask": mask, "negative": not demo.mask.any(),
                            "sample_id": sample_id, "filepath": filepath})
        record = {
            "format": FORMAT, "name": name, "classes": concept.classes, "concept": concept.describe(),
            "settings": {"route": route, "threshold": threshold, "model": model, "mask_field": mask_field,
                         "classes": classes},
            "route": choice.route.name, "rule": choice.route.rule(), "verification": choice.verification,
            "verified": choice.verified, "reason": choice.reason, "demonstrations": entries,
            "provenance": {"dataset": demonstrations._dataset.name, "sample_ids": ids,
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "versions": _versions()},
        }
        with open(os.path.join(staging, "concept.json"), "w") as f:
            json.dump(record, f, indent=1)
        _install(staging, name, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _install(staging: str, name: str, overwrite: bool) -> None:
    """Moves a complete staging directory into place (the old concept goes only once the new one is whole)."""
    final = _path(name)
    if os.path.exists(final):
        if not overwrite:
            raise LibraryError(f"A concept named {name!r} is saved already; pass --overwrite to replace it.")
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


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
    """Segments ``targets`` with the saved concept ``name``: its route refitted on its stored demonstrations.

    Runs :func:`conceptseg.jobs.segment_by_demonstration` with the stored images and masks
    (through a temporary dataset), so the masks are those of a run on ``targets``' dataset
    with the same demonstrations. Labels carry ``concept_name``.
    """
    import fiftyone as fo
    from fiftyone import ViewField as F

    from conceptseg import jobs

    record = load(name)
    model = _check_model(record)
    root = _path(name)
    settings = record["settings"]
    scratch = fo.Dataset()  # not persistent: gone with the process at the latest
    try:
        for entry in record["demonstrations"]:
            image, mask = os.path.join(root, entry["image"]), os.path.join(root, entry["mask"])
            pixels = cv2.imread(mask, cv2.IMREAD_GRAYSCALE) if os.path.isfile(mask) else None
            if not os.path.isfile(image) or pixels is None:
                raise LibraryError(f"Concept {name!r} is damaged: {entry['image']} or its mask is missing in {root}.")
            scratch.add_sample(fo.Sample(filepath=image, mask=fo.Segmentation(mask=(pixels > 0).astype(np.uint8))))
        concept = ", ".join(record.get("classes") or []) or name
        summary = jobs.segment_by_demonstration(
            scratch, targets, "mask", pred_field, route=settings["route"], threshold=settings["threshold"],
            concept=concept, overwrite=overwrite, resume=resume, model=model, progress=progress,
        )
    finally:
        scratch.delete()
    written = targets.match(F(f"{pred_field}.run_key") == summary["run_key"])
    written.set_values(f"{pred_field}.concept_name", [name] * len(written))
    inst = summary.get("instances_field")
    if inst:
        written.set_values(f"{inst}.concept_name", [name] * len(written))
    return {**summary, "concept_name": name}


# ---- zip export and import --------------------------------------------------------------


def export(name: str, out_zip: str) -> str:
    """Writes the concept's directory into ``out_zip`` (files at the zip's root); returns its path."""
    record = load(name)
    root = _path(name)
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
    os.makedirs(library_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=library_dir())
    try:
        for member, data in files.items():
            target = os.path.realpath(os.path.join(staging, member))
            if not target.startswith(os.path.realpath(staging) + os.sep):  # checked above; kept as a guard
                raise LibraryError(f"{member!r} would land outside the library.")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
        _install(staging, name, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record
