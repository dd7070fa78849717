#!/usr/bin/env bash
# Sets up, then segments nuclei by demonstration on the bundled real images and prints the scores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FIFTYONE_DO_NOT_TRACK=${FIFTYONE_DO_NOT_TRACK:-true}
exec .venv/bin/conceptseg demo "$@"
