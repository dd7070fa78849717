"""Where the test suite's time goes: each test file's wall and CPU seconds, against the 8-minute goal.

Run: ``CI=true .venv/bin/python benchmarks/suite_time.py [--workers N] [--top 25] [-- PYTEST ARGS]``
on an otherwise quiet machine, after ``./scripts/test.sh`` and ``scripts/labelstudio_env.sh``
have set the project up (CI=true, as CI runs: a test without Label Studio or chromium then
fails instead of skipping). Prints one table.

It runs pytest as ``scripts/test.sh`` does (``-n`` workers, ``--dist loadfile``) with this
file as a plugin: every worker writes, per test (setup, call and teardown together), its wall
seconds and the CPU seconds of its own process and of the subprocesses it waited for (a
server a session fixture starts counts at the teardown that stops it). The machine's CPU
seconds over the whole run come from /proc/stat, so what no test owns shows too: MongoDB, the
App and Label Studio servers, the browser, pytest's start-up.

Read the CPU, not only the wall: on 2 cores both workers are busy almost all the time, so the
wall time is about the machine's CPU seconds / 2 plus the start-up, and this machine's speed
moves it by about ±10 % from one run to the next (the same code measured 467-540 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

GOAL_S = 480  # issue 24: the suite under 8 minutes on the project's 2-core machine
LOG_VAR = "CONCEPTSEG_SUITE_TIME_LOG"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the pytest plugin (loaded in every worker as ``-p suite_time``) ------------------------

_started: dict[str, tuple] = {}
_records = False  # in a worker, or in the one pytest process of a run without workers (not xdist's controller)


def pytest_configure(config):
    global _records
    _records = "PYTEST_XDIST_WORKER" in os.environ or not getattr(config.option, "numprocesses", None)


def _cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def pytest_runtest_logstart(nodeid, location):
    _started[nodeid] = (time.time(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN))


def pytest_runtest_logfinish(nodeid, location):
    folder = os.environ.get(LOG_VAR)
    if not folder or not _records or nodeid not in _started:
        return
    start, own, children = _started.pop(nodeid)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    row = dict(test=nodeid, worker=worker, start=start, end=time.time(),
               own=_cpu(resource.RUSAGE_SELF) - own, children=_cpu(resource.RUSAGE_CHILDREN) - children)
    with open(os.path.join(folder, f"{worker}.jsonl"), "a") as f:  # one file per worker: no interleaving
        f.write(json.dumps(row) + "\n")


# ---- the run and its table ------------------------------------------------------------------

def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def reference_cpu_s() -> float:
    """CPU seconds of a fixed piece of the suite's kind of work: a Python loop and a small forest.

    The machine's speed in one number, taken before and after the run. The suite's time follows
    it (the same code took 926 and 1548 machine CPU seconds on two days), and it moves within an
    hour too (0.81 s, then 0.58 s): two readings far apart say the run's own speed changed.
    """
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    start = time.process_time()
    total = 0
    for i in range(3_000_000):
        total += i
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8000, 20)).astype(np.float32)
    y = x[:, 0] + 0.5 * rng.normal(size=8000) > 0
    RandomForestClassifier(n_estimators=16, max_depth=12, n_jobs=1, random_state=0).fit(x, y).predict_proba(x)
    return time.process_time() - start


def read_rows(folder: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def by_file(rows: list[dict]) -> list[dict]:
    """Per test file: wall, own and children CPU seconds, tests, worker; longest wall first."""
    files = defaultdict(lambda: dict(wall=0.0, own=0.0, children=0.0, tests=0, workers=set()))
    for r in rows:
        f = files[r["test"].split("::")[0]]
        f["wall"] += r["end"] - r["start"]
        f["own"] += r["own"]
        f["children"] += r["children"]
        f["tests"] += 1
        f["workers"].add(r["worker"])
    out = [dict(v, file=name, workers=",".join(sorted(v["workers"]))) for name, v in files.items()]
    return sorted(out, key=lambda f: -f["wall"])


def report(rows: list[dict], wall: float, machine_cpu: float, started: float, top: int, returncode: int,
           reference: tuple[float, float] | None = None) -> str:
    lines = [f"suite: {len(rows)} tests (run or skipped) in {wall:.1f} s wall (goal {GOAL_S} s: "
             f"{'met' if wall < GOAL_S else 'missed'}), pytest exit {returncode}; "
             f"machine CPU {machine_cpu:.0f} s on {os.cpu_count()} CPUs"]
    if reference is not None:
        lines.append(f"machine speed: the reference work took {reference[0]:.2f} CPU s before the run and "
                     f"{reference[1]:.2f} s after (less is faster)")
    if not rows:
        return "\n".join(lines)
    own, children = sum(r["own"] for r in rows), sum(r["children"] for r in rows)
    lines.append(f"CPU the tests own: {own:.0f} s in the test processes + {children:.0f} s in subprocesses they "
                 f"waited for; the rest, {machine_cpu - own - children:.0f} s, is servers, browser and start-up")
    for worker in sorted({r["worker"] for r in rows}):
        mine = [r for r in rows if r["worker"] == worker]
        first, last = min(r["start"] for r in mine), max(r["end"] for r in mine)
        busy = sum(r["end"] - r["start"] for r in mine)
        lines.append(f"  {worker}: first test at {first - started:.1f} s, last done at {last - started:.1f} s, "
                     f"{len(mine)} tests, {busy:.1f} s in tests")
    lines += ["", f"{'file':<44}{'wall s':>8}{'own cpu':>9}{'sub cpu':>9}{'tests':>7}  worker"]
    for f in by_file(rows)[:top]:
        lines.append(f"{f['file']:<44}{f['wall']:>8.1f}{f['own']:>9.1f}{f['children']:>9.1f}{f['tests']:>7}  "
                     f"{f['workers']}")
    lines += ["", "slowest tests (wall s, own cpu s, sub cpu s):"]
    for r in sorted(rows, key=lambda r: r["end"] - r["start"], reverse=True)[:top]:
        lines.append(f"  {r['end'] - r['start']:7.1f} {r['own']:7.1f} {r['children']:7.1f}  {r['test']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("CONCEPTSEG_TEST_WORKERS", os.cpu_count())))
    parser.add_argument("--top", type=int, default=25, help="files and tests shown")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (test paths, -k ...)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="suite-time-") as folder:
        env = dict(os.environ, **{LOG_VAR: folder})
        here = os.path.dirname(os.path.abspath(__file__))  # so that the workers find ``-p suite_time``
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "pytest", "-p", "suite_time", "-q", "-n", str(args.workers),
                   "--dist", "loadfile", *args.pytest_args]
        before = reference_cpu_s()
        cpu, started = machine_cpu_s(), time.time()
        returncode = subprocess.run(command, cwd=ROOT, env=env).returncode
        wall, cpu = time.time() - started, machine_cpu_s() - cpu
        reference = (before, reference_cpu_s())
        print("\n" + report(read_rows(folder), wall, cpu, started, args.top, returncode, reference))
    sys.exit(returncode)


if __name__ == "__main__":
    main()
