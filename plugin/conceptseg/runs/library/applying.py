"""Applying a saved concept to a view, and updating it with what was accepted there.

The concept's demonstrations become samples of a scratch dataset for the run (removed after it),
so the run's record names them by their stable keys rather than sample ids.
"""

from __future__ import annotations

import datetime
import os
import shutil
import uuid

import cv2
import numpy as np

from conceptseg.runs.library.concepts import LibraryError, MAX_FILES, Snapshot, new_version, check_name, resolve
from conceptseg.runs.library.saving import check_model, write_demos, write_record


SCRATCH_PREFIX = "conceptseg-scratch-"  # the datasets an apply holds its demonstrations in, while it runs


_SCRATCH_INFO = "conceptseg_scratch"  # dataset.info key: the applying process (as a field lock's holder)


class ApplyInterrupted(KeyboardInterrupt):
    """Ctrl-C during an apply; its message says what was written and how to finish (the CLI prints it)."""


def remove_stale_scratch() -> list[str]:
    """Deletes the scratch datasets of applies killed outright (their process is gone); returns their names.

    A scratch dataset names its process in ``info`` as a field lock does (:mod:`conceptseg.runs.locks`):
    one of another host is kept, as its process cannot be checked from here.
    """
    import fiftyone as fo

    from conceptseg.runs.locks import is_stale

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

    from conceptseg.runs.locks import this_process

    remove_stale_scratch()
    scratch = fo.Dataset(f"{SCRATCH_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
    scratch.info = {_SCRATCH_INFO: this_process()}
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

    from conceptseg.runs.records import keys_for_field

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

    Runs :func:`conceptseg.runs.jobs.segment_by_demonstration` with the stored images and masks
    (through a scratch dataset, deleted after; one left by a killed apply is deleted by the
    next), so the masks are those of a run on ``targets``' dataset with the same
    demonstrations. The version is resolved once and every file is read from it. Labels
    carry ``concept_name`` and ``concept_version``; the run records them (its
    ``concept_source``), so its targets can be reviewed and accepted there, and a resume
    checks that it is the same version. Ctrl-C raises :class:`ApplyInterrupted`, saying how
    many targets were labelled.
    """
    from conceptseg.runs import jobs

    snapshot = resolve(name)
    record = snapshot.record
    model = check_model(record)
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


def update(name: str, dataset, pred_field: str) -> dict:
    """Adds what the review of a `concepts apply` run taught to the saved concept, as a new version.

    The run's accepted samples (their images, and the concept's pixels in the mask field the
    accepts wrote into) and the samples rejected as absent (negatives) join the current
    version's demonstrations; the route is chosen and verified again on all of them. Samples
    the concept holds already are not added twice. Earlier versions stay applicable as
    ``NAME@N``. Returns the new record with ``added`` (sample ids) and ``previous_version``.
    """
    from conceptseg.runs import review
    from conceptseg.runs.plan import load_model
    from conceptseg.routes.router import make_router

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
    router = make_router(settings["route"], settings["threshold"], bundle=load_model(check_model(record)),
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
        grown["demonstrations"] = write_demos(directory, record["demonstrations"], new)
        grown["version"] = version
        added = {"version": version, "from_version": base.version, "dataset": dataset.name,
                 "pred_field": pred_field, "applied_version": source.get("version"),
                 "sample_ids": [sample_id for _, sample_id, *_ in new],
                 "negatives": sum(1 for d, *_ in new if not d.mask.any()), "date": date}
        grown["provenance"] = {**record.get("provenance", {}),
                               "updates": list(record.get("provenance", {}).get("updates", [])) + [added]}
        write_record(directory, grown)

    new_version(name, fill, base=base.version)
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
