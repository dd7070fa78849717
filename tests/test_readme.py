"""Every code block of README.md runs, in order, as a newcomer would run them.

The rule (also stated in the README's installation notes): the blocks run top to bottom in
one working directory, against the session's private database holding the demo dataset
(as after ``./scripts/demo.sh``), with the plugin installed. Every ``python`` block runs;
every ``bash`` block runs except those that start the App (``fiftyone app launch``: the
browser test covers the App), the set-up scripts (``./scripts/``: CI runs them itself) and
those of "Install the FiftyOne way" (CI's scripts/check_plugin_install.sh runs them).
``text`` blocks are command synopses with placeholders and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import fiftyone as fo
import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SKIPPED_BASH = ("fiftyone app launch", "./scripts/")
SKIPPED_SECTIONS = ("## Install the FiftyOne way",)  # scripts/check_plugin_install.sh runs these in CI


def readme_blocks() -> list[tuple[str, str, int, str]]:
    """(language, code, line number, section heading) of every fenced block of the README."""
    with open(README) as f:
        text = f.read()
    out = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M):
        before = text[: match.start()]
        heading = ([line for line in before.splitlines() if line.startswith("## ")] or [""])[-1]
        out.append((match.group(1), match.group(2), before.count("\n") + 1, heading))
    return out


def runnable(blocks):
    """The blocks the rule runs."""
    return [b for b in blocks if b[0] == "python" or (
        b[0] == "bash" and b[3] not in SKIPPED_SECTIONS and not any(s in b[1] for s in SKIPPED_BASH))]


def test_every_block_has_a_language_the_rule_knows():
    blocks = readme_blocks()
    assert blocks and {b[0] for b in blocks} <= {"python", "bash", "text"}, [(b[0], b[2]) for b in blocks]
    assert sum(b[0] == "python" for b in runnable(blocks)) >= 4 and sum(b[0] == "bash" for b in runnable(blocks)) >= 2


@pytest.fixture
def newcomer_dir(tmp_path, plugin_installed):
    """A working directory with .venv (this interpreter's environment), and the demo dataset built."""
    from conceptseg import demo

    os.symlink(sys.prefix, tmp_path / ".venv")
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


def test_readme_blocks_run_in_order(newcomer_dir):
    for language, code, line, _ in runnable(readme_blocks()):
        if language == "python":
            exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
        else:
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=newcomer_dir, env=os.environ,
                                 capture_output=True, text=True, timeout=1200)
            assert run.returncode == 0, f"README.md:{line} exited {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    # What the blocks promise: predictions from Python, the zoo and the trained bundle.
    demo = fo.load_dataset("conceptseg-demo")
    assert demo.exists("predictions").count() == 13 and demo.exists("zoo").count() >= 13
    concepts = fo.load_dataset("concepts")
    assert concepts.load_saved_view("circles").exists("trained").count() == len(concepts.load_saved_view("circles")) - 3
