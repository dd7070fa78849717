"""Scratch folders for benchmark scripts, removed when the process exits.

A benchmark builds a tiny bundle (about 200 MB) or a tiny SAM 3 (25 MB) to measure on; left in
the temporary directory, a few runs a day fill a small disk.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile


def scratch_dir(prefix: str) -> str:
    """A new folder under the temporary directory, deleted (with what is in it) at exit."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path
