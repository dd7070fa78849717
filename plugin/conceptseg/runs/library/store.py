"""How the library stores one concept: immutable versions and a pointer to the current one.

::

    NAME/current            the current version's number ("2"), replaced atomically (os.replace)
    NAME/v1/concept.json    version 1: settings, rule, verification, provenance, demonstrations
    NAME/v1/demos/...       its images and masks
    NAME/v2/...             version 2 (an update, an overwrite, an import over it)

A version directory is written whole under a temporary name inside ``NAME/`` and renamed
in; it is never changed afterwards. A reader resolves the version once (reads ``current``)
and reads every file from that version's directory, so a concurrent import, overwrite or
update can never hand it the masks of one version with the images of another. Writers of one
concept take an exclusive lock (``.NAME.lock`` next to it) while they number, rename and
point, so two writers never claim the same version nor move the pointer backwards.

The layout before versions (``NAME/concept.json`` and ``NAME/demos/``) is read as version 1,
where it lies: a later version is added beside it and nothing is moved.

This module knows paths only; :mod:`conceptseg.runs.library` names concepts and reads records.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Iterator

POINTER = "current"
RECORD = "concept.json"
STAGING_PREFIX = ".staging-"
VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")


class StoreError(Exception):
    """The stored concept is damaged (an unreadable pointer); the library turns it into a sentence."""


def current(path: str) -> int | None:
    """The current version of the concept stored at ``path``; None when nothing is stored there."""
    try:
        with open(os.path.join(path, POINTER)) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 1 if os.path.isfile(os.path.join(path, RECORD)) else None
    except NotADirectoryError:
        return None
    if not text.isdigit() or int(text) < 1:
        raise StoreError(f"its version pointer {os.path.join(path, POINTER)} says {text[:20]!r}, not a version number")
    return int(text)


def version_dir(path: str, version: int) -> str | None:
    """The directory of ``version`` (the old single-directory layout is version 1); None when absent."""
    candidate = os.path.join(path, f"v{version}")
    if os.path.isfile(os.path.join(candidate, RECORD)):
        return candidate
    if version == 1 and os.path.isfile(os.path.join(path, RECORD)):
        return path
    return None


def versions(path: str) -> list[int]:
    """Every complete version stored at ``path``, oldest first."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = {int(m.group(1)) for n in names
             if (m := VERSION_DIR.match(n)) and os.path.isfile(os.path.join(path, n, RECORD))}
    if RECORD in names:
        found.add(1)
    return sorted(found)


def _lock_path(path: str) -> str:
    parent, name = os.path.split(os.path.normpath(path))
    return os.path.join(parent, f".{name}.lock")


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Holds the concept's writer lock (blocking); staging left by a writer that died is removed."""
    os.makedirs(os.path.dirname(os.path.normpath(path)), exist_ok=True)
    with open(_lock_path(path), "a+") as handle:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): renames still keep readers whole
            fcntl = None
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if os.path.isdir(path):  # nobody else writes now: any staging is a dead writer's
                for name in os.listdir(path):
                    if name.startswith(STAGING_PREFIX):
                        shutil.rmtree(os.path.join(path, name), ignore_errors=True)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def next_version(path: str) -> int:
    """The number a new version gets (call while holding :func:`writing`)."""
    taken = versions(path)
    try:
        taken += [int(m.group(1)) for n in os.listdir(path) if (m := VERSION_DIR.match(n))]
    except FileNotFoundError:
        pass
    pointer = current(path) if os.path.isdir(path) else None
    return max(taken + [pointer or 0]) + 1


def staging(path: str) -> str:
    """A fresh temporary directory inside the concept's directory (same filesystem: renamed in whole)."""
    os.makedirs(path, exist_ok=True)
    return tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=path)


def install(path: str, staged: str, version: int) -> str:
    """Renames a complete staged version into ``v<version>`` and points ``current`` at it (hold :func:`writing`)."""
    final = os.path.join(path, f"v{version}")
    os.rename(staged, final)  # fails, rather than merging, if the name were taken
    _fsync_dir(path)
    point(path, version)
    return final


def point(path: str, version: int) -> None:
    """Makes ``version`` the current one: a new pointer file replaces the old in one rename."""
    fd, tmp = tempfile.mkstemp(prefix=".current-", dir=path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{version}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, POINTER))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path)


def remove(path: str) -> None:
    """Removes every version of the concept (hold :func:`writing`): renamed away first, then deleted."""
    parent, name = os.path.split(os.path.normpath(path))
    gone = tempfile.mkdtemp(prefix=f".deleted-{name}-", dir=parent)
    os.rename(path, os.path.join(gone, name))
    shutil.rmtree(gone, ignore_errors=True)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
