"""What every command group shares: the dataset by name, progress lines, the run report, --json output."""

from __future__ import annotations

import argparse
import json
import sys

from conceptseg.errors import ConceptSegError

# Where --json documents go: the real stdout, while everything else a command prints
# (FiftyOne's database notices included) is sent to stderr (see conceptseg.cli.main).
json_out = sys.stdout


def zoo_names() -> str:
    """The zoo models, as the --model help lists them."""
    from conceptseg.model.zoo import ZOO

    return ", ".join(ZOO)


def emit_json(value) -> int:
    """Prints the one JSON document a --json command outputs."""
    print(json.dumps(value), file=json_out, flush=True)
    return 0


def progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {done}/{total} targets", file=sys.stderr, flush=True)


def load_dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise ConceptSegError(
            f"No dataset named {name!r}. Datasets here: {', '.join(fo.list_datasets()) or 'none'}."
        )
    return fo.load_dataset(name)


def saved_view(dataset, name: str | None):
    """The saved view ``name`` of ``dataset`` (the dataset itself when None), or a clear error."""
    if not name:
        return dataset
    if name not in dataset.list_saved_views():
        raise ConceptSegError(f"{dataset.name!r} has no saved view {name!r}; saved views: "
                              f"{', '.join(dataset.list_saved_views()) or 'none'}.")
    return dataset.load_saved_view(name)


def warn(summary: dict) -> None:
    """The run's warnings (also in its run record) on stderr, so --json keeps stdout a document."""
    for warning in summary.get("warnings") or []:
        print(f"warning: {' '.join(str(warning).split())}", file=sys.stderr)


def route_line(summary: dict) -> str:
    """"route R, verification V" as a run summary says it, UNVERIFIED when it failed."""
    v = summary["verification"]
    return (f"route {summary['route']}, verification {'unavailable' if v is None else f'{v:.3f}'}"
            f"{'' if summary['verified'] else ' (UNVERIFIED)'}")


def report_run(summary: dict, as_json: bool) -> int:
    if as_json:
        return emit_json(summary)
    print(route_line(summary))
    if summary.get("rule"):
        print(f"rule: {summary['rule']}")
    if summary.get("classes"):
        negatives = summary.get("negative_demonstrations") or 0
        print(f"concept: {', '.join(summary['classes'])}"
              + (f" ({negatives} negative demonstration(s) teach background)" if negatives else ""))
    from conceptseg.runs.execution import lines

    for line in lines(summary.get("execution")):  # batch size used, fallbacks, prefix reuse: what really ran
        print(line)
    print(f"segmented {summary['segmented']}, skipped {summary['skipped']}, failed {len(summary['failures'])}")
    for f in summary["failures"]:
        print(f"  failed {f['sample_id']} ({f['filepath']}): {f['error']}")
    return 0


class DefaultsFormatter(argparse.HelpFormatter):
    """Shows each option's default, except where there is none worth showing or the help says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or action.required or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()
