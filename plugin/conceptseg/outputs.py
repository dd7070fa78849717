"""Output directories checked before a run writes anything: one sentence instead of a traceback."""

from __future__ import annotations

import os
import tempfile

from conceptseg.errors import ConceptSegError


class OutputDirError(ConceptSegError):
    """An output directory cannot be created or written."""


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
