#!/usr/bin/env bash
# Builds .venv-labelstudio: Label Studio's own environment, for the tests that send targets to a
# real Label Studio (tests/test_annotate.py) and benchmarks/annotate.py. Idempotent.
#
# Label Studio (about 1 GB, Django and its pins) lives apart from .venv, whose packages it must
# not change: the plugin talks to it only over HTTP, through label-studio-sdk (installed into
# .venv with the test extra by scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

LABEL_STUDIO_VERSION=1.23.2
env=.venv-labelstudio
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x "$env/bin/python" ] || "$PYTHON" -m venv "$env"
stamp=$env/.conceptseg-labelstudio
want=$(cat scripts/labelstudio_env.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! "$env/bin/python" -m pip install -q --disable-pip-version-check "label-studio==$LABEL_STUDIO_VERSION" \
    >"$env/pip.log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$env/pip.log" | tail -n 40 >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi
# Imported, not run: `label-studio --version` would migrate a database in ~/.local/share.
"$env/bin/python" -c "import label_studio" 
