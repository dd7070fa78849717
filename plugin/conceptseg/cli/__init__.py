"""The ``conceptseg`` command: the same engine functions the operators call.

Segment by demonstration or by text query, evaluate against ground truth, import benchmark
layouts, run the paper's protocol, and train a bundle on a dataset's own concepts
(``train --stage 1`` aligns the translator, ``train --stage 2`` is Meta-GRPO).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

from conceptseg.cli import common
from conceptseg.errors import ConceptSegError

# What to do after Ctrl-C, per command.
_AFTER_INTERRUPT = {
    "segment": "run the same command with --resume",
    "query": "run the same command with --resume",
    "benchmark": "run the same command again to resume where it stopped",
    "train": "run the same command again to resume from the newest checkpoint",
    "import": "nothing was imported, and an existing dataset of that name is unchanged",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests can read its contract)."""
    from conceptseg.cli.annotate import add_annotate_command
    from conceptseg.cli.review import add_concept_commands, add_review_commands
    from conceptseg.cli.runs import add_run_commands, add_setup_commands
    from conceptseg.cli.segment import add_data_commands, add_segment_commands
    from conceptseg.cli.shards import add_shards_command
    from conceptseg.cli.train import add_train_command

    parser = argparse.ArgumentParser(prog="conceptseg", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    # Every command's --help shows the defaults.
    sub = argparse.Namespace(add_parser=functools.partial(
        subparsers.add_parser, formatter_class=common.DefaultsFormatter))
    for add in (add_segment_commands, add_data_commands, add_train_command, add_setup_commands, add_run_commands,
                add_review_commands, add_annotate_command, add_concept_commands, add_shards_command):
        add(sub)
    return parser


def _run(args) -> int:
    """Runs the command; with --json only the JSON document reaches stdout."""
    if not getattr(args, "json", False):
        return args.func(args)
    # FiftyOne prints a MongoDB version notice to stdout unless validation is off; anything
    # else printed on the way (progress, notices) goes to stderr too.
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    common.json_out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return args.func(args)
    finally:
        common.json_out = sys.stdout


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: a user's error is one line on stderr and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ConceptSegError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message holds
        return 2
    except KeyboardInterrupt as e:  # one that carries a message (a concept apply's) says what was written
        said = str(e) or _AFTER_INTERRUPT.get(args.command, "nothing more was written")
        print(f"interrupted: {said}", file=sys.stderr)
        return 130

