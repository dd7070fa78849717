#!/usr/bin/env bash
# The FiftyOne install route, end to end and offline (CI runs it after the tests):
#   git archive of HEAD -> served on a loopback port -> a fresh virtual environment with only
#   FiftyOne -> `fiftyone plugins download URL` -> `fiftyone plugins requirements --install`
#   -> the operators and panels register, and operators run against a private mongod, with the
#   engine imported from the downloaded plugin directory (it is never pip-installed).
# Prints what it checked; exits non-zero on the first failure. Everything lives in one temp
# directory, removed at the end with the HTTP server and mongod it started.
# Only what is committed is checked (CI runs on a clean clone, where HEAD is main).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
PLUGIN=@conceptseg/conceptseg-r1
start=$SECONDS

work=$(mktemp -d "${TMPDIR:-/tmp}/conceptseg-install-check-XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '[%4ds] %s\n' $((SECONDS - start)) "$*"; }
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for_port() {  # polls until something listens on 127.0.0.1:$1 (at most $2 seconds)
  "$PYTHON" - "$1" "$2" <<'EOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"nothing listens on 127.0.0.1:{port} after {sys.argv[2]} s")
EOF
}

# 1. The archive FiftyOne downloads, served on loopback.
mkdir -p "$work/serve"
git archive --format=zip --prefix=conceptseg-r1/ -o "$work/serve/conceptseg-r1.zip" HEAD
port=$(free_port)
"$PYTHON" -m http.server "$port" --bind 127.0.0.1 --directory "$work/serve" >"$work/http.log" 2>&1 &
pids+=($!)
wait_for_port "$port" 30
url="http://127.0.0.1:$port/conceptseg-r1.zip"
step "serving git archive HEAD ($(git rev-parse --short HEAD)) at $url"

# The caller's FiftyOne settings (a database URI, a plugins dir) must not leak into the check.
for var in $(compgen -e | grep '^FIFTYONE_' || true); do unset "$var"; done

# 2. A fresh environment with FiftyOne only, pinned as pyproject.toml pins it. The caller's
# PYTHONPATH and virtual environment are dropped so nothing else can provide conceptseg.
unset PYTHONPATH VIRTUAL_ENV
"$PYTHON" -m venv "$work/venv"
venv="$work/venv/bin"
pins=$("$PYTHON" - <<'EOF'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if d.split("==")[0] in ("fiftyone", "voxel51-eta")))
EOF
)
# shellcheck disable=SC2086  # two pins, split on purpose
"$venv/python" -m pip install -q $pins
step "fresh venv with $pins"
if "$venv/python" -c 'import conceptseg' 2>/dev/null; then
  echo "FAIL: conceptseg is importable in the fresh venv before the plugin is installed" >&2
  exit 1
fi
step "conceptseg is not importable in the fresh venv"

export FIFTYONE_PLUGINS_DIR="$work/fo/plugins" FIFTYONE_MODEL_ZOO_DIR="$work/fo/zoo"
export FIFTYONE_DEFAULT_DATASET_DIR="$work/fo/datasets" FIFTYONE_DO_NOT_TRACK=true
export FIFTYONE_DATABASE_VALIDATION=false FIFTYONE_SHOW_PROGRESS_BARS=false HF_HUB_OFFLINE=1

# 3. The route a user takes.
"$venv/fiftyone" plugins download "$url"
plugin_dir=$("$venv/python" -c "import fiftyone.plugins as fop; print(fop.find_plugin('$PLUGIN'))")
step "fiftyone plugins download -> $plugin_dir"
"$venv/fiftyone" plugins requirements "$PLUGIN" --install
"$venv/fiftyone" plugins requirements "$PLUGIN" --ensure
step "fiftyone plugins requirements $PLUGIN --install, then --ensure"

# 4. The database as the README tells users to set it up (the engine's setup-db, run from the
# plugin directory), then a private mongod from it: FiftyOne's embedded one would attach to
# any other FiftyOne database service running on this machine.
PYTHONPATH="$plugin_dir/plugin" "$venv/python" -m conceptseg.cli setup-db
mongod=$(echo "$work"/venv/lib/python3*/site-packages/fiftyone/db/bin/mongod)
db_port=$(free_port)
mkdir -p "$work/db"
"$mongod" --dbpath "$work/db" --port "$db_port" --bind_ip 127.0.0.1 --nounixsocket \
  --logpath "$work/db/mongod.log" >/dev/null 2>&1 &
pids+=($!)
wait_for_port "$db_port" 60
export FIFTYONE_DATABASE_URI="mongodb://127.0.0.1:$db_port"
step "private mongod at $FIFTYONE_DATABASE_URI"

"$venv/fiftyone" operators list | grep "$PLUGIN" || true
"$venv/python" "$ROOT/scripts/check_plugin_install.py" "$plugin_dir"
step "all checks passed in $((SECONDS - start)) s"
