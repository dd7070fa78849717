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
  rm -rf "$env/template"
  echo "$want" >"$stamp"
fi
# A migrated, empty database that every test server starts from (conceptseg.testing.labelstudio):
# migrating a fresh one takes about 25 s of CPU, starting on a copy 3 s. Made in a scratch dir (its
# HOME too, so nothing lands in ~/.local/share) and moved in whole; removed above when the pin changes.
template=$env/template
if [ ! -f "$template/label_studio.sqlite3" ]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  env -i PATH="$PATH" HOME="$scratch" LABEL_STUDIO_BASE_DATA_DIR="$scratch" LATEST_VERSION_CHECK=false \
    "$env/bin/python" -c "from label_studio.server import _setup_env, _apply_database_migrations
_setup_env(); _apply_database_migrations()" >"$env/migrate.log" 2>&1 || { tail -n 40 "$env/migrate.log" >&2; exit 1; }
  mkdir -p "$template.new" && mv "$scratch/label_studio.sqlite3" "$template.new/" && rm -rf "$template" && mv "$template.new" "$template"
fi
