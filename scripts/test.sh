#!/usr/bin/env bash
# Sets up, then runs the test suite (private database, plugin and zoo dirs: see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
