"""Every code block of README.md and of each docs/*.md page runs, in order, as a newcomer would run them.

The rule (also stated in docs/install.md's installation notes): each page's blocks run top to
bottom in one fresh working directory, against the session's private database holding the
demo dataset (as after ``./scripts/demo.sh``), with the plugin installed. Every ``python``
block runs, each in a namespace of its own (as if pasted into a new ``python``); every
``bash`` block runs except those that start the App (``fiftyone app launch``: the browser test
covers the App), the set-up scripts (``./scripts/``: CI runs them itself) and those of
"Install the FiftyOne way" (docs/install.md; CI's scripts/check_plugin_install.sh runs them).
``text`` blocks are command synopses or diagrams and are not run.

Pages are independent: README.md and every docs page get their own fresh directory, demo
dataset (rebuilt, so no page sees what another wrote) and concept library
(``CONCEPTSEG_LIBRARY_DIR``), so a page needs nothing from the README's blocks or from another
page; a page that needs predictions or a trained bundle makes them itself. What each page's
blocks promise (predictions, the zoo's labels, the trained bundle's) is checked after them.
Before each ``python`` block the datasets are reloaded, as a new process would load them after
a ``bash`` block's command changed them.

The README is the front door: at most 250 lines, the two set-up commands first, a link to
every docs page; relative links of every page point at files and headings that exist, and
Python blocks use only the package's public names (``conceptseg.<name>``), never its modules.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import fiftyone as fo
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = "README.md"
DOCS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README, *DOCS]
README_MAX_LINES = 250
SKIPPED_BASH = ("fiftyone app launch", "./scripts/")
SKIPPED_SECTIONS = ("## Install the FiftyOne way",)  # scripts/check_plugin_install.sh runs these in CI


def page_text(page: str) -> str:
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def page_blocks(page: str) -> list[tuple[str, str, int, str]]:
    """(language, code, line number, section heading) of every fenced block of a page.

    A fence may be indented (a block inside a list item); its code is dedented.
    """
    text = page_text(page)
    out = []
    for match in re.finditer(r"^( {0,3})```(\w*)\n(.*?)^\1```$", text, re.S | re.M):
        before = text[: match.start()]
        heading = ([line for line in before.splitlines() if line.startswith("## ")] or [""])[-1]
        out.append((match.group(2), textwrap.dedent(match.group(3)), before.count("\n") + 1, heading))
    return out


def runnable(blocks):
    """The blocks the rule runs."""
    return [b for b in blocks if b[0] == "python" or (
        b[0] == "bash" and b[3] not in SKIPPED_SECTIONS and not any(s in b[1] for s in SKIPPED_BASH))]


def relative_links(page: str, anchors: bool = False) -> list[str]:
    """Targets of the page's Markdown links into this repository (no URL), without their anchors unless asked."""
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", page_text(page)) if not re.match(r"[a-z]+:", link)]
    return links if anchors else [link.split("#")[0] for link in links if not link.startswith("#")]


def heading_anchors(path: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    with open(path) as f:
        text = re.sub(r"^```.*?^```$", "", f.read(), flags=re.S | re.M)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_docs_exist():
    assert len(DOCS) >= 10, DOCS


@pytest.mark.parametrize("page", PAGES)
def test_every_block_has_a_language_the_rule_knows(page):
    blocks = page_blocks(page)
    assert {b[0] for b in blocks} <= {"python", "bash", "text"}, [(b[0], b[2]) for b in blocks]
    # An unfenced, indented command would escape the rule: synopses are ``text`` blocks.
    indented = [i + 1 for i, line in enumerate(page_text(page).splitlines()) if line.startswith("    conceptseg ")]
    assert not indented or all(any(b[2] < i < b[2] + b[1].count("\n") + 1 for b in blocks) for i in indented), indented


def test_the_pages_show_python_and_shell_that_run():
    readme = runnable(page_blocks(README))
    assert sum(b[0] == "python" for b in readme) >= 1 and sum(b[0] == "bash" for b in readme) >= 1
    every = [b for page in PAGES for b in runnable(page_blocks(page))]
    assert sum(b[0] == "python" for b in every) >= 4 and sum(b[0] == "bash" for b in every) >= 2


def test_the_readme_is_a_front_door_that_links_every_page():
    lines = page_text(README).splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    assert lines[2:6] == ["```bash", "./scripts/demo.sh", "./scripts/test.sh", "```"], lines[:6]
    assert set(DOCS) <= set(relative_links(README)), set(DOCS) - set(relative_links(README))


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_point_at_files_and_headings(page):
    base = os.path.dirname(os.path.join(ROOT, page))
    missing = [link for link in relative_links(page) if not os.path.exists(os.path.join(base, link))]
    assert not missing, missing
    for link in relative_links(page, anchors=True):
        path, _, anchor = link.partition("#")
        target = os.path.join(base, path) if path else os.path.join(ROOT, page)
        if anchor and target.endswith(".md"):
            assert anchor in heading_anchors(target), f"{page}: {link}"


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_use_only_the_public_api(page):
    """Module paths inside the package are not for scripts: ``import conceptseg``, then ``conceptseg.<name>``."""
    import conceptseg

    for language, code, line, _ in page_blocks(page):
        if language != "python":
            continue
        assert not re.search(r"^\s*(from|import)\s+conceptseg\.", code, re.M), f"{page}:{line}"
        assert not re.search(r"^\s*from\s+conceptseg\s+import", code, re.M), f"{page}:{line}"
        for name in re.findall(r"\bconceptseg\.(\w+)", code):
            assert name in conceptseg.__all__, f"{page}:{line}: conceptseg.{name} is not public"


@pytest.fixture
def newcomer_dir(tmp_path, plugin_installed, monkeypatch):
    """A working directory with .venv (this interpreter's environment), the demo dataset built, a fresh library."""
    from conceptseg import demo

    os.symlink(sys.prefix, tmp_path / ".venv")
    monkeypatch.setenv("CONCEPTSEG_LIBRARY_DIR", str(tmp_path / "library"))
    before = set(fo.list_datasets())
    demo.build_dataset(demo.DATASET_NAME)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)
        for name in set(fo.list_datasets()) - before:
            fo.delete_dataset(name)


def _predictions_on_the_demo(where):
    assert fo.load_dataset("conceptseg-demo").exists("predictions").count() == 13


def _cli_run_scored_then_deleted(where):
    with open(where / "scores.json") as f:
        assert 0.5 < json.load(f)["metrics"]["iou"] <= 1
    with open(where / "run.json") as f:
        assert json.load(f)["route"]
    assert not fo.load_dataset("conceptseg-demo").has_sample_field("cli_predictions")


def _zoo_labels(where):
    assert fo.load_dataset("conceptseg-demo").exists("zoo").count() >= 13


def _trained_bundle_segmented(where):
    concepts = fo.load_dataset("concepts")
    circles = concepts.load_saved_view("circles")
    assert circles.exists("trained").count() == len(circles) - 3


def _review_round_and_library(where):
    import conceptseg

    dataset = fo.load_dataset("conceptseg-demo")
    assert conceptseg.review(dataset, "loop")["round"] == 2
    assert dataset.exists("from_library").count() == 13
    assert os.path.isfile(where / "nucleus.zip")


# What each page's blocks leave behind, checked after they ran.
PROMISES = {
    README: _predictions_on_the_demo,
    "docs/cli.md": _cli_run_scored_then_deleted,
    "docs/labeling-loop.md": _review_round_and_library,
    "docs/models.md": _zoo_labels,
    "docs/python.md": _predictions_on_the_demo,
    "docs/training.md": _trained_bundle_segmented,
}


def test_every_promise_is_a_page():
    assert set(PROMISES) <= set(PAGES)


def _as_a_new_process_sees_them():
    """Datasets as a new ``python`` would load them: this process's cached ones reloaded.

    A ``bash`` block's command changes datasets in another process; without a reload, this
    process's dataset objects keep their old schema and fail to load samples with new fields.
    """
    for name in fo.list_datasets():
        fo.load_dataset(name).reload()


@pytest.mark.parametrize("page", PAGES)
def test_blocks_run_in_order(page, request):
    blocks = runnable(page_blocks(page))
    if not blocks:
        pytest.skip(f"{page} has no block the rule runs")
    newcomer_dir = request.getfixturevalue("newcomer_dir")  # only for a page with blocks to run
    for language, code, line, _ in blocks:
        if language == "python":
            _as_a_new_process_sees_them()
            exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__readme__"})
        else:
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=newcomer_dir, env=os.environ,
                                 capture_output=True, text=True, timeout=1200)
            assert run.returncode == 0, f"{page}:{line} exited {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    if page in PROMISES:
        _as_a_new_process_sees_them()
        PROMISES[page](newcomer_dir)
