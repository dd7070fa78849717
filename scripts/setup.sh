#!/usr/bin/env bash
# Sets up everything in .venv (idempotent): packages, sam2, MongoDB, plugin links.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed; install it or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || {
    echo "error: could not create .venv; on Debian/Ubuntu run: sudo apt install python3-venv" >&2
    exit 1
  }
fi

# Reinstall only when the dependency list, the tested versions or this script changed.
# pyproject.toml holds ranges; constraints.txt the exact versions tested (the recipe).
stamp=.venv/.conceptseg-setup
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  # The `sam2` package builds from source: without build isolation and with its CUDA
  # extension off, it neither pulls a second torch into a build env nor needs nvcc
  # (the extension only speeds up hole filling on GPU).
  SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --no-build-isolation --no-deps -c constraints.txt sam2
  echo "$want" > "$stamp"
fi

# Video datasets need ffmpeg and ffprobe (FiftyOne reads video metadata and frames with them).
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg >/dev/null 2>&1 || {
      $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg >/dev/null; }
  else
    echo "note: video datasets need ffmpeg; install it (sudo apt install ffmpeg) to segment videos" >&2
  fi
fi

.venv/bin/conceptseg setup-db
.venv/bin/conceptseg install-plugin
