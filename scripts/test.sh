#!/usr/bin/env bash
# Sets up, then runs the test suite (private database, plugin and zoo dirs: see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# One worker per core (CONCEPTSEG_TEST_WORKERS changes it), each with its own MongoDB and FiftyOne
# dirs (tests/conftest.py) and one core's share of the thread pools: with the pools so bounded the
# workers keep every core busy (measured on 2 cores: 2 workers 464 s, 3 workers 483 s, the third
# one's collection and switching costing more than it fills). A file's tests stay on one worker
# (they share fixtures). A later `-n 0` (or `-n N`) given to this script wins. The 15 slowest
# tests are printed at the end: where the suite's time goes.
exec .venv/bin/python -m pytest -n "${CONCEPTSEG_TEST_WORKERS:-$(nproc)}" --dist loadfile --durations=15 "$@"
