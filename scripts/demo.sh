#!/usr/bin/env bash
# Sets up, then segments nuclei by demonstration on the bundled real images and prints the scores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FIFTYONE_DO_NOT_TRACK=${FIFTYONE_DO_NOT_TRACK:-true}
# mongod 6.0 is supported; FiftyOne only warns that it is the oldest supported version.
export FIFTYONE_DATABASE_VALIDATION=${FIFTYONE_DATABASE_VALIDATION:-false}
exec .venv/bin/conceptseg demo "$@"
