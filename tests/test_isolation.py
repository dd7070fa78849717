"""A full test run never touches a FiftyOne database the user has running.

FiftyOne's embedded database service attaches to any FiftyOne ``mongod`` already running
for the user. Here a "user" process starts FiftyOne's own embedded database (as the App
does) and creates a dataset; then a pytest run in a subprocess, with that user's
environment, creates, overwrites (``conceptseg demo`` on the same dataset name) and deletes
datasets; afterwards the user's dataset is exactly as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_env(db_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIFTYONE_DATABASE")}
    env.update(FIFTYONE_DATABASE_DIR=db_dir, FIFTYONE_DATABASE_VALIDATION="false")
    return env


CHECK = """
import json, sys
import fiftyone as fo
name = sys.argv[1]
ds = fo.load_dataset(name) if fo.dataset_exists(name) else None
out = None if ds is None else dict(count=len(ds), owner=ds.values("owner"), fields=sorted(ds.get_field_schema()))
if len(sys.argv) > 2 and ds is not None:
    fo.delete_dataset(name)
print(json.dumps(out))
"""


def test_users_running_database_is_untouched(tmp_path):
    name = f"users-{uuid.uuid4().hex[:8]}"
    env = _user_env(str(tmp_path / "userdb"))
    user = subprocess.Popen(
        [sys.executable, "-c", "import sys, fiftyone as fo\n"
         f"ds = fo.Dataset({name!r}, persistent=True)\n"
         "ds.add_sample(fo.Sample(filepath='/data/mine.png', owner='user'))\n"
         "print('ready', flush=True)\nsys.stdin.read()"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in user.stdout:  # FiftyOne may first print notices about other database services
            lines.append(line)
            if line.strip() == "ready":
                break
        assert lines and lines[-1].strip() == "ready", "".join(lines)
        check = lambda *extra: json.loads(subprocess.run(
            [sys.executable, "-c", CHECK, name, *extra], env=env, capture_output=True, text=True,
            check=True).stdout.strip().splitlines()[-1])
        before = check()
        assert before["count"] == 1
        # The user's own environment (their database dir, their running service): the test run
        # must start its own mongod anyway.
        run_env = dict(env, CONCEPTSEG_TEST_DEMO_NAME=name)
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-c", os.path.join(ROOT, "pyproject.toml"), "--rootdir",
             os.path.join(ROOT, "tests"), "-q", os.path.join(ROOT, "tests", "test_hostile.py"),
             "-k", "demo_rebuilds or failed_overwrite or second_run"],
            cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "4 passed" in run.stdout or "3 passed" in run.stdout, run.stdout[-2000:]
        assert check("delete") == before  # same samples, same fields; then removed
    finally:
        user.stdin.close()
        user.wait(timeout=120)
