"""Output directories: where conceptseg writes mask files, checked before a run writes anything.

Mask files the plugin writes by default live under FiftyOne's dataset directory, one folder
per dataset, kind and field::

    <default_dataset_dir>/conceptseg/<dataset>/predicted-masks/<field>/<sample id>.png   segment
    <default_dataset_dir>/conceptseg/<dataset>/reviewed-masks/<field>/<sample id>.png    accept, promote

The kind is part of the path, so predictions and ground truth never share a folder, and a
field name is one path component (escaped, see :func:`path_component`), so no field name
reaches another field's or another kind's folder. The kind names hold a ``-``, which no
field name of the layout used before (``<dataset>/<field>`` for predictions,
``<dataset>/<field>_reviewed`` for accepted masks, ``<dataset>/ground_truth`` for imports)
can: files written there stay where they are and are never reached by the new layout.
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse

from conceptseg.errors import ConceptSegError


class OutputDirError(ConceptSegError):
    """An output directory cannot be created or written."""


PREDICTIONS = "predicted-masks"  # masks a segmentation run predicted
REVIEWED = "reviewed-masks"  # ground truth written by accept and promote
KINDS = (PREDICTIONS, REVIEWED)


def path_component(name: str) -> str:
    """``name`` as one directory name: unchanged when plain, else %-escaped (never '/', '.' or '..').

    The escape is reversible (``urllib.parse.unquote``), so two names never share a folder.
    """
    escaped = urllib.parse.quote(str(name), safe="")
    if escaped.strip(".") == "":  # '', '.', '..': nothing a path may hold as a name
        escaped = escaped.replace(".", "%2E") or "%00"
    return escaped


def conceptseg_root() -> str:
    """The folder under FiftyOne's dataset directory that holds the plugin's files."""
    import fiftyone as fo

    return os.path.join(fo.config.default_dataset_dir, "conceptseg")


def mask_dir(dataset_name: str, kind: str, field: str) -> str:
    """Where masks of ``kind`` (PREDICTIONS or REVIEWED) for ``field`` of the dataset go by default."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of mask folder {kind!r}; one of {', '.join(KINDS)}")
    return os.path.join(conceptseg_root(), path_component(dataset_name), kind, path_component(field))


def legacy_prediction_dir(dataset_name: str, field: str) -> str:
    """Where predictions went by default before the kind was part of the path (left where they are)."""
    return os.path.join(conceptseg_root(), dataset_name, field)


def writable_dir(path: str, what: str = "output directory") -> str:
    """Creates ``path`` if needed and proves it writable by writing a file there; returns it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"The {what} {path} is a file, not a directory: choose a directory.")
    try:
        os.makedirs(path, exist_ok=True)
        # os.access says yes to root even on a read-only file system: a real write tells.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OutputDirError(
            f"The {what} {path} cannot be written ({e.strerror or e}): choose a directory you can write to."
        ) from e
    return path


def empty_or_overwrite(path: str, overwrite: bool, what: str = "output directory") -> str:
    """Refuses a directory that holds files unless ``overwrite``: a typo must not destroy a bundle."""
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise OutputDirError(
            f"The {what} {path} is not empty: choose an empty or new directory, or pass --overwrite to "
            "replace the files in it."
        )
    return writable_dir(path, what)


def creatable_dir(path: str, what: str = "output directory") -> str:
    """Checks that ``path`` is or can become a writable directory, creating nothing."""
    if os.path.isdir(path):
        return writable_dir(path, what)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or (os.path.exists(path) and not os.path.isdir(path)):
        raise OutputDirError(f"The {what} {path} cannot be created: {parent if not os.path.isdir(parent) else path} "
                             "is a file. Choose a directory.")
    writable_dir(parent, what)
    return path
