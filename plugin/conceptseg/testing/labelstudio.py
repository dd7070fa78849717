"""A real Label Studio for tests and benchmarks: started from .venv-labelstudio on a free loopback port.

``scripts/labelstudio_env.sh`` builds that environment (Label Studio and its Django pins stay
out of .venv). The server gets a throw-away data directory, its user and API token from the
command line (no prompt), and accepts that legacy token because of
``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN``. The data directory starts from the migrated, empty
database that the script keeps in the environment (migrating a fresh one costs ~25 s).
Readiness is a poll of ``/health`` with a deadline.

It also acts as the editor would: :func:`submit_mask` saves an annotation with a brush region,
:func:`skip_task` the editor's Skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import numpy as np

ENV_DIR = ".venv-labelstudio"
ENV_SCRIPT = "scripts/labelstudio_env.sh"
TEMPLATE_DB = os.path.join("template", "label_studio.sqlite3")  # in ENV_DIR, made by ENV_SCRIPT
START_TIMEOUT_S = 180  # 3 s on an idle machine from the template, 25 s without, more under load
USER, PASSWORD = "tests@conceptseg.invalid", "conceptseg-tests"


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def label_studio_binary(root: str | None = None) -> str | None:
    path = os.path.join(root or repo_root(), ENV_DIR, "bin", "label-studio")
    return path if os.access(path, os.X_OK) else None


def missing_reason() -> str:
    return f"no Label Studio in {ENV_DIR}: run {ENV_SCRIPT} (CI runs it from .ci/run)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    """``label-studio start`` on 127.0.0.1 with its own data dir; ``url`` and ``api_key`` reach it."""

    def __init__(self, binary: str | None = None):
        self.binary = binary or label_studio_binary()
        self.api_key = secrets.token_hex(20)
        self.process: subprocess.Popen | None = None
        self.data_dir: str | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LabelStudioServer":
        if not self.binary:
            raise RuntimeError(missing_reason())
        self.data_dir = tempfile.mkdtemp(prefix="conceptseg-labelstudio-")
        template = os.path.join(os.path.dirname(os.path.dirname(self.binary)), TEMPLATE_DB)
        if os.path.isfile(template):  # else the server migrates a fresh database itself
            shutil.copy(template, self.data_dir)
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FIFTYONE_", "DJANGO", "LABEL_STUDIO"))}
        env.update(LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LATEST_VERSION_CHECK="false",
                   LABEL_STUDIO_BASE_DATA_DIR=self.data_dir, HOME=self.data_dir)
        log = open(os.path.join(self.data_dir, "server.log"), "w")
        self.process = subprocess.Popen(
            [self.binary, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", self.data_dir, "--username", USER, "--password", PASSWORD, "--user-token", self.api_key],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.data_dir)
        log.close()
        self._wait()
        return self

    def _wait(self) -> None:
        """Polls /health until it answers 200, the server exits, or the deadline passes."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            try:  # the pause between tries doubles as a check that the server is alive
                self.process.wait(timeout=0.5)
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Label Studio did not answer within {START_TIMEOUT_S} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            with open(os.path.join(self.data_dir, "server.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminates the server and removes its data; idempotent."""
        from conceptseg.testing.db import terminate

        terminate(self.process)
        self.process = None
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _rgba_rle(mask: np.ndarray, colour=(220, 40, 40)) -> list[int]:
    """The editor's encoding of a painted region: its RGBA canvas (the label's colour, alpha 255), run-length coded."""
    from label_studio_sdk.converter import brush

    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[mask] = (*colour, 255)
    return brush.encode_rle(rgba.ravel())


def submit_mask(url: str, api_key: str, task_id: int, mask: np.ndarray, label: str, from_name: str) -> dict:
    """Saves an annotation of ``task_id`` whose one brush region is ``mask``, as the editor's Submit does."""
    import requests

    height, width = mask.shape
    region = {"id": secrets.token_urlsafe(8)[:10], "type": "brushlabels", "origin": "manual",
              "from_name": from_name, "to_name": "image", "image_rotation": 0,
              "original_width": width, "original_height": height,
              "value": {"format": "rle", "rle": _rgba_rle(mask), "brushlabels": [label]}}
    response = requests.post(f"{url}/api/tasks/{task_id}/annotations", headers={"Authorization": f"Token {api_key}"},
                             json={"result": [region], "was_cancelled": False, "ground_truth": False,
                                   "lead_time": 12.5}, timeout=60)
    response.raise_for_status()
    return response.json()


def skip_task(url: str, api_key: str, task_id: int) -> dict:
    """What the editor's Skip saves: a cancelled annotation without result."""
    import requests

    response = requests.post(f"{url}/api/tasks/{task_id}/annotations", headers={"Authorization": f"Token {api_key}"},
                             json={"result": [], "was_cancelled": True, "lead_time": 2.0}, timeout=60)
    response.raise_for_status()
    return response.json()
