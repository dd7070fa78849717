"""benchmarks/suite_time.py: its plugin writes each test's wall and CPU seconds, and its table reads them.

The plugin runs here inside an inner pytest (pytester, in this process: no second FiftyOne to start);
the full run it was written for is the benchmark itself, not a test.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import pytest

pytest_plugins = ["pytester"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("suite_time", os.path.join(_ROOT, "benchmarks", "suite_time.py"))
suite_time = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite_time)

INNER_TESTS = f"""
import subprocess, sys, time

def test_spins():
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass

def test_waits_for_a_child():
    subprocess.run([{sys.executable!r}, "-c", "import time; end = time.process_time() + 0.2\\nwhile time.process_time() < end: pass"], check=True)

def test_fails():
    assert False
"""


@pytest.fixture
def rows(pytester, tmp_path, monkeypatch):
    """The rows the plugin wrote for three inner tests (one spins, one waits for a spinning child, one fails)."""
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv(suite_time.LOG_VAR, str(log))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # the inner run has no workers of its own
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # nor the installed plugins (xdist, playwright ...)
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", plugins=[suite_time])
    result.assert_outcomes(passed=2, failed=1)
    return {r["test"].split("::")[-1]: r for r in suite_time.read_rows(str(log))}


def test_each_test_has_its_wall_and_its_own_and_its_childrens_cpu(rows):
    assert set(rows) == {"test_spins", "test_waits_for_a_child", "test_fails"}  # a failed test counts too
    spins, waits = rows["test_spins"], rows["test_waits_for_a_child"]
    assert spins["own"] >= 0.15 and spins["children"] < 0.05
    assert waits["children"] >= 0.15 and waits["own"] < waits["children"]
    for row in rows.values():
        assert row["end"] >= row["start"] and row["worker"] == "main"


def test_the_table_sums_by_file_and_says_whether_the_goal_is_met(rows):
    listed = list(rows.values())
    (inner,) = suite_time.by_file(listed)
    assert inner["tests"] == 3 and inner["file"] == "test_inner.py"
    assert inner["own"] == pytest.approx(sum(r["own"] for r in listed))
    assert inner["children"] == pytest.approx(sum(r["children"] for r in listed))
    started = min(r["start"] for r in listed)
    table = suite_time.report(listed, wall=500.0, machine_cpu=3.0, started=started, top=5, returncode=1)
    assert table.startswith("suite: 3 tests (run or skipped) in 500.0 s wall (goal 480 s: missed), pytest exit 1")
    assert "test_inner.py" in table and "test_inner.py::test_spins" in table
    assert "goal 480 s: met" in suite_time.report(listed, 479.0, 3.0, started, 5, 0)


def test_machine_cpu_counts_up():
    before = suite_time.machine_cpu_s()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert suite_time.machine_cpu_s() - before >= 0.15


def test_the_machine_speed_is_measured_and_reported(rows):
    reference = suite_time.reference_cpu_s()
    assert 0.05 < reference < 60
    started = min(r["start"] for r in rows.values())
    table = suite_time.report(list(rows.values()), 500.0, 3.0, started, 5, 0, (reference, 2.5))
    assert table.splitlines()[1] == (f"machine speed: the reference work took {reference:.2f} CPU s before the run "
                                     "and 2.50 s after (less is faster)")
