#!/usr/bin/env bash
# Sets up, then runs the test suite (private database, plugin and zoo dirs: see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Three workers, each with its own MongoDB and FiftyOne dirs (tests/conftest.py), keep two cores busy
# while tests wait on subprocesses, the database and the browser; a file's tests stay on one worker
# (they share fixtures). A later `-n 0` (or `-n N`) given to this script wins. The 15 slowest
# tests are printed at the end: where the suite's time goes.
exec .venv/bin/python -m pytest -n "${CONCEPTSEG_TEST_WORKERS:-3}" --dist loadfile --durations=15 "$@"
