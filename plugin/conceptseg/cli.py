"""The ``conceptseg`` command: the same engine functions the operators call.

Segment by demonstration or by text query, evaluate against ground truth, import benchmark
layouts, run the paper's protocol, and train a bundle on a dataset's own concepts
(``train --stage 1`` aligns the translator, ``train --stage 2`` is Meta-GRPO).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys

from conceptseg.constants import VERIFY_THRESHOLD
from conceptseg.errors import ConceptSegError

# Where --json documents go: the real stdout, while everything else a command prints
# (FiftyOne's database notices included) is sent to stderr (see main).
_json_out = sys.stdout

# What to do after Ctrl-C, per command.
_AFTER_INTERRUPT = {
    "segment": "run the same command with --resume",
    "query": "run the same command with --resume",
    "benchmark": "run the same command again to resume where it stopped",
    "train": "run the same command again to resume from the newest checkpoint",
    "import": "nothing was imported, and an existing dataset of that name is unchanged",
}


def _emit_json(value) -> int:
    """Prints the one JSON document a --json command outputs."""
    print(json.dumps(value), file=_json_out, flush=True)
    return 0


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {done}/{total} targets", file=sys.stderr, flush=True)


def _load(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise ConceptSegError(
            f"No dataset named {name!r}. Datasets here: {', '.join(fo.list_datasets()) or 'none'}."
        )
    return fo.load_dataset(name)


def _saved_view(dataset, name: str | None):
    """The saved view ``name`` of ``dataset`` (the dataset itself when None), or a clear error."""
    if not name:
        return dataset
    if name not in dataset.list_saved_views():
        raise ConceptSegError(f"{dataset.name!r} has no saved view {name!r}; saved views: "
                              f"{', '.join(dataset.list_saved_views()) or 'none'}.")
    return dataset.load_saved_view(name)


def cmd_demo(args) -> int:
    from conceptseg import demo

    print("Building the demo dataset from the stardist and imgaug wheels ...", flush=True)
    out = demo.run(args.dataset)
    seg, ev = out["segment"], out["evaluate"]
    print(f"\nDataset {out['dataset']!r}: {seg['demonstrations']} demonstrations, {seg['targets']} targets")
    print(f"Route: {seg['route']} ({seg['reason']})")
    print(f"Rule: {seg['rule']}\n")
    print(f"{'target':<24}{'IoU':>8}{'Fω':>8}{'Sα':>8}{'Dice':>8}")
    for sample_id, s in ev["samples"].items():
        print(f"{out['names'][sample_id]:<24}{s['iou']:>8.3f}{s['wfm']:>8.3f}{s['sm']:>8.3f}{s['dice']:>8.3f}")
    m = ev["metrics"]
    print(f"\nmean IoU {m['iou']:.3f}   gIoU {m['giou']:.3f}   cIoU {m['ciou']:.3f}   "
          f"Fω {m['wfm']:.3f}   Sα {m['sm']:.3f}   MAE {m['mae']:.4f}")
    print(f"\nOpen it in the App: fiftyone app launch {out['dataset']}")
    return 0


def cmd_segment(args) -> int:
    from conceptseg.jobs import segment_by_demonstration

    dataset = _load(args.dataset)
    scope = _saved_view(dataset, args.view)
    if args.demo_tag not in dataset.distinct("tags"):
        raise ConceptSegError(f"No sample of {args.dataset!r} has the tag {args.demo_tag!r}; tag the demonstrations first.")
    demonstrations = dataset.match_tags(args.demo_tag)
    targets = scope if args.view else dataset.match_tags(args.demo_tag, bool=False)
    summary = segment_by_demonstration(
        demonstrations=demonstrations,
        targets=targets,
        mask_field=args.mask_field,
        pred_field=args.pred_field,
        route=args.route,
        threshold=args.threshold,
        concept=args.concept,
        overwrite=args.overwrite,
        resume=args.resume,
        instances=not args.no_instances,
        model=args.model,
        progress=None if args.json else _progress,
        classes=args.classes,
        resize_masks=args.resize_masks,
        prompt_template=args.prompt_template,
        shards=args.shards,
        batch_size=args.batch_size,
        prefix_reuse=not args.no_prefix_reuse,
    )
    _warn(summary)
    if summary.get("queued"):
        from conceptseg.shards_cli import report_queued

        return report_queued(summary, args.json)
    return _report(summary, args.json)


def _warn(summary: dict) -> None:
    """The run's warnings (also in its run record) on stderr, so --json keeps stdout a document."""
    for warning in summary.get("warnings") or []:
        print(f"warning: {' '.join(str(warning).split())}", file=sys.stderr)


def route_line(summary: dict) -> str:
    """"route R, verification V" as a run summary says it, UNVERIFIED when it failed."""
    v = summary["verification"]
    return (f"route {summary['route']}, verification {'unavailable' if v is None else f'{v:.3f}'}"
            f"{'' if summary['verified'] else ' (UNVERIFIED)'}")


def _report(summary: dict, as_json: bool) -> int:
    if as_json:
        return _emit_json(summary)
    print(route_line(summary))
    if summary.get("rule"):
        print(f"rule: {summary['rule']}")
    if summary.get("classes"):
        negatives = summary.get("negative_demonstrations") or 0
        print(f"concept: {', '.join(summary['classes'])}"
              + (f" ({negatives} negative demonstration(s) teach background)" if negatives else ""))
    from conceptseg.execution import lines

    for line in lines(summary.get("execution")):  # batch size used, fallbacks, prefix reuse: what really ran
        print(line)
    print(f"segmented {summary['segmented']}, skipped {summary['skipped']}, failed {len(summary['failures'])}")
    for f in summary["failures"]:
        print(f"  failed {f['sample_id']} ({f['filepath']}): {f['error']}")
    return 0


def cmd_query(args) -> int:
    from conceptseg.jobs import segment_by_query

    dataset = _load(args.dataset)
    targets = _saved_view(dataset, args.view)
    summary = segment_by_query(
        targets,
        args.text,
        args.pred_field,
        args.model,
        overwrite=args.overwrite,
        resume=args.resume,
        instances=not args.no_instances,
        progress=None if args.json else _progress,
        prompt_template=args.prompt_template,
        batch_size=args.batch_size,
        prefix_reuse=not args.no_prefix_reuse,
    )
    return _report(summary, args.json)


def cmd_tiny_bundle(args) -> int:
    from conceptseg.outputs import empty_or_overwrite
    from conceptseg.testing import build_tiny_bundle

    print(build_tiny_bundle(empty_or_overwrite(args.out_dir, args.overwrite, "bundle directory"), seed=args.seed))
    return 0


def cmd_evaluate(args) -> int:
    from conceptseg.evaluation import evaluate

    dataset = _load(args.dataset)
    scope = _saved_view(dataset, args.view)
    report = evaluate(scope, args.pred_field, args.gt_field, eval_key=args.eval_key, size=args.size,
                      classes=args.classes)
    for notice in report["notices"]:  # on stderr, so --json prints the documented document only
        print(f"note: {notice}", file=sys.stderr)
    if args.json:
        return _emit_json({"metrics": report["metrics"], "samples": report["samples"]})
    for name, value in report["metrics"].items():
        print(f"{name:<6} {value:.4f}")
    print(f"scored {len(report['samples'])}, missing ground truth {len(report['missing_gt'])}, "
          f"missing predictions {len(report['missing_pred'])}")
    return 0


def cmd_import(args) -> int:
    from conceptseg.datasets import import_dataset

    options = {}
    if args.image_root:
        options["image_root"] = args.image_root
    if args.concepts_csv:
        options["concepts_csv"] = args.concepts_csv
    if args.split:
        options["split"] = args.split
    report = import_dataset(args.format, args.path, args.dataset, overwrite=args.overwrite,
                            resize_masks=args.resize_masks, **options)
    if args.json:
        return _emit_json(report.to_dict())
    print(report.summary())
    for kind in ("missing", "unreadable", "duplicates", "invalid"):
        for item in getattr(report, kind)[:20]:
            print(f"  {kind}: {item}")
        if len(getattr(report, kind)) > 20:
            print(f"  ... and {len(getattr(report, kind)) - 20} more {kind}")
    return 0


def cmd_benchmark(args) -> int:
    from conceptseg.protocol import run_benchmark

    results = run_benchmark(
        _load(args.dataset),
        route=args.route,
        model=args.model,
        seed=args.seed,
        num_demonstrations=args.demonstrations,
        run_key=args.run_key,
        resume=not args.restart,
        progress=None if args.json else _progress,
    )
    if args.json:
        return _emit_json(results)
    print(results["markdown"])
    c = results["counts"]
    print(f"\nscored {c['scored_now']} now and {c['scored_before']} before; skipped: no train sample of the "
          f"concept {c['no_train']}, text query without model {c['needs_model']}, no ground truth "
          f"{c['no_ground_truth']}, no concept or query {c['no_concept']}; failed {c['failed']}")
    for f in results["failures"]:
        print(f"  failed {f['sample_id']} ({f['filepath']}): {f['error']}")
    return 0


def _train_progress(step: int, total: int, metrics: dict) -> None:
    """About ten lines per run: the step and its loss, reward and mask loss where the stage has them."""
    if step == total or step == 1 or step % max(1, total // 10) == 0:
        shown = "  ".join(f"{k} {_number(metrics.get(k))}" for k in ("loss", "reward", "mask_loss", "mask_iou")
                          if k in metrics)
        print(f"  step {step}/{total}  {shown}", file=sys.stderr, flush=True)


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def cmd_train(args) -> int:
    from conceptseg.episode import MAX_REFERENCES
    from conceptseg.jobs import train_concept_policy
    from conceptseg.outputs import creatable_dir
    from conceptseg.training.loop import TrainConfig

    if not 1 <= args.demonstrations <= MAX_REFERENCES:
        raise ConceptSegError(
            f"--demonstrations must be 1 to {MAX_REFERENCES} (the mosaic's tiles), got {args.demonstrations}.")
    dataset = _load(args.dataset)
    view = _saved_view(dataset, args.view)
    config = TrainConfig(
        stage=args.stage, steps=args.steps, batch_size=args.batch_size, group_size=args.group_size,
        learning_rate=args.lr, lora=args.lora, max_new_tokens=args.max_new_tokens,
        gradient_checkpointing=args.gradient_checkpointing, save_every=args.save_every, seed=args.seed,
        mixed_precision=args.mixed_precision, cpu=args.cpu, reward=args.reward,
        translator_learning_rate=args.translator_lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
    )
    creatable_dir(args.out, "output directory")  # created by the run, after the data was checked
    summary = train_concept_policy(
        view, args.concept_field, args.mask_field, args.model, args.out, config=config,
        test_tag=args.test_tag, num_demonstrations=args.demonstrations,
        progress=None if args.json else _train_progress,
    )
    if args.json:
        return _emit_json(summary)
    resumed = f", resumed from step {summary['resumed_from']}" if summary["resumed_from"] else ""
    print(f"stage {summary['stage']}: {summary['steps']} steps{resumed}; bundle {summary['bundle']} "
          "(self-contained: policy, translator and segmenter inside; move or copy it as one directory)")
    last = summary["last"]
    if last:
        keys = ("loss", "reward", "reward_box", "reward_mask_iou", "mask_loss", "mask_iou")
        print("last step: " + ", ".join(f"{k} {_number(last[k])}" for k in keys if k in last))
    e, out = summary["episodes"], summary["left_out"]
    print(f"episodes {e.get('episodes', 0)} from {e.get('concepts', 0)} concepts; left out: "
          f"{e.get('skipped_concepts', 0)} concepts with fewer than two samples, "
          f"{out.get('without_concept', 0)} samples without a concept, {out.get('without_mask', 0)} without a mask, "
          f"{e.get('unreadable', 0)} unreadable")
    print(f"metrics per step: {summary['metrics_file']}; run recorded on {args.dataset!r} as {summary['run_key']}")
    return 0


def cmd_install_plugin(args) -> int:
    from conceptseg.install import install_plugin

    for line in install_plugin(args.plugins_dir, args.zoo_dir):
        print(line)
    return 0


def cmd_setup_db(args) -> int:
    from conceptseg.install import setup_database

    print(setup_database())
    return 0


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows each option's default, except where there is none worth showing or the help says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or action.required or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


def cmd_runs(args) -> int:
    from conceptseg.runs import list_runs

    runs = list_runs(_load(args.dataset))
    if args.json:
        return _emit_json(runs)
    if not runs:
        print(f"No conceptseg segmentation run on {args.dataset!r}.")
        return 0
    print(f"{'pred field':<20}{'run key':<28}{'route':<12}{'verification':>13}{'targets':>9}{'failures':>9}"
          f"{'seconds':>9}  started")
    for r in runs:
        v = "n/a" if r["verification"] is None else f"{r['verification']:.3f}" + ("" if r["verified"] else "*")
        seconds = "unfinished" if not r["finished"] else ("" if r["seconds"] is None else f"{r['seconds']:.1f}")
        if r.get("shards"):
            seconds += f" ({r['shards']['completed']}/{r['shards']['shards']} shards)"
        print(f"{r['pred_field']:<20}{r['run_key']:<28}{r['route'] or '':<12}{v:>13}{r['targets']:>9}"
              f"{r['failures']:>9}{seconds:>9}  {r['started']}")
    if any(r["verified"] is False for r in runs):
        print("* UNVERIFIED: the route did not reach the threshold on held-out demonstrations")
    return 0


def cmd_delete_run(args) -> int:
    from conceptseg.runs import delete_run

    report = delete_run(_load(args.dataset), args.pred_field)
    if args.json:
        return _emit_json(report)
    labels = report.get("labels", {}).get(args.pred_field, 0)  # its instances field holds as many
    what = (f"deleted run(s) {', '.join(report['run_keys'])}" if report["run_keys"]
            else f"removed labels a deleted run left in {args.pred_field!r}")
    kept = "".join(f"; kept {f!r} ({n} label(s) the run did not write)" for f, n in report.get("kept", {}).items())
    print(f"{what}: {labels} label(s), fields {', '.join(report['fields']) or 'none'}, "
          f"{report['files']} mask file(s){kept}")
    return 0


def _add_run_commands(sub) -> None:
    """Subcommands that manage recorded runs."""
    p = sub.add_parser("runs", help="list the dataset's segmentation runs (route, verification, targets, time)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--json", action="store_true", help="print the runs as one JSON list")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("delete-run",
                       help="delete a segmentation run: its record, the labels it wrote and their mask files")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True, help="the run's prediction field")
    p.add_argument("--json", action="store_true", help="print what was deleted as JSON")
    p.set_defaults(func=cmd_delete_run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests can read its contract)."""
    from conceptseg.zoo import ZOO

    parser = argparse.ArgumentParser(prog="conceptseg", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    # Every command's --help shows the defaults.
    sub = argparse.Namespace(add_parser=functools.partial(
        subparsers.add_parser, formatter_class=_DefaultsFormatter))
    zoo = ", ".join(ZOO)

    p = sub.add_parser("demo", help="segment nuclei by demonstration on the bundled real images")
    p.add_argument("--dataset", default="conceptseg-demo", help="name of the dataset to (re)build")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="segment a concept shown by tagged demonstrations")
    p.add_argument("--dataset", required=True)
    p.add_argument("--demo-tag", required=True, help="tag of the demonstration samples")
    p.add_argument("--mask-field", required=True, help="field with the demonstrations' masks")
    p.add_argument("--classes", help="class(es) of --mask-field that are the concept, by name or mask value "
                   "(A[,B]); needed when the demonstrations show several classes")
    p.add_argument("--resize-masks", action="store_true",
                   help="stretch demonstration masks of another size than their image (nearest) instead of stopping")
    p.add_argument("--pred-field", required=True, help="Segmentation field to write")
    p.add_argument("--view", help="saved view of targets (default: every sample not tagged --demo-tag)")
    p.add_argument("--route", default="auto", choices=["auto", "appearance", "object", "prototype", "reasoning-fast", "reasoning"],
                   help="auto: the cheapest route that passes verification")
    p.add_argument("--model", help=f"bundle directory, Hugging Face id or zoo name ({zoo}); enables the reasoning route")
    p.add_argument("--threshold", type=float, default=VERIFY_THRESHOLD,
                   help="held-out IoU a route must reach (router.DEFAULT_THRESHOLD)")
    p.add_argument("--concept", default="concept", help="label of the predicted masks")
    p.add_argument("--prompt-template", metavar="FILE", help="the policy prompt's wording, with {placeholders}")
    p.add_argument("--no-instances", action="store_true", help="skip the <pred-field>_instances Detections")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing labels in the output fields")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted run")
    p.add_argument("--batch-size", type=int, default=1, help="targets per policy call on the reasoning routes "
                   "(same labels as 1; halved by itself on GPU out-of-memory)")
    p.add_argument("--shards", type=int, help="queue the targets as N delegated operations for "
                   "`fiftyone delegated launch` workers instead of segmenting here")
    p.add_argument("--no-prefix-reuse", action="store_true", help="reasoning routes: encode every prompt whole "
                   "instead of reusing the demonstrations' canvas once per run (same labels, slower)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("query", help="reasoning segmentation of a text query (no demonstrations)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--text", required=True, help="what to segment, e.g. 'the animal that hides'")
    p.add_argument("--pred-field", required=True)
    p.add_argument("--model", required=True, help=f"bundle directory, Hugging Face id or zoo name ({zoo})")
    p.add_argument("--view", help="saved view of targets (default: the whole dataset)")
    p.add_argument("--prompt-template", metavar="FILE", help="the policy prompt's wording, with {placeholders}")
    p.add_argument("--batch-size", type=int, default=1, help="targets per policy call (same labels as 1)")
    p.add_argument("--no-prefix-reuse", action="store_true", help="encode every prompt whole (a text query's "
                   "prompt has no image before the target, so it shares no prefix either way; the report says so)")
    p.add_argument("--no-instances", action="store_true", help="skip the <pred-field>_instances Detections")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing labels in the output fields")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted run")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("tiny-bundle", help="build a tiny random bundle offline (tests, trying without a GPU)")
    p.add_argument("out_dir", help="a new or empty directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--overwrite", action="store_true", help="write into a directory that holds files already")
    p.set_defaults(func=cmd_tiny_bundle)

    p = sub.add_parser("evaluate", help="score predictions against ground truth")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True)
    p.add_argument("--gt-field", required=True)
    p.add_argument("--classes", help="class(es) of --gt-field that are the concept (A[,B]; default: every label)")
    p.add_argument("--view", help="saved view to evaluate (default: the whole dataset)")
    p.add_argument("--eval-key", help="run key and field prefix (default eval_<pred-field>)")
    p.add_argument("--size", type=int, help="resize masks to SIZE x SIZE first (600: the paper's protocol)")
    p.add_argument("--json", action="store_true", help='print {"metrics": ..., "samples": ...}')
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("import", help="import a benchmark layout as a FiftyOne dataset")
    p.add_argument("--format", required=True, choices=["conceptseg-benchmark", "reasonseg", "folder"])
    p.add_argument("path", help="the dataset's root folder (conceptseg-benchmark: or its all_meta.json)")
    p.add_argument("--dataset", required=True, help="name of the FiftyOne dataset to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--resize-masks", action="store_true",
                   help="resize masks of another size than their image (nearest) instead of stopping")
    p.add_argument("--image-root", help="conceptseg-benchmark: folder the manifest's paths are relative to")
    p.add_argument("--concepts-csv", help="folder: CSV of name,concept[,split,level] (default PATH/concepts.csv)")
    p.add_argument("--split", help="folder: split tag for samples the CSV gives none")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("benchmark", help="the paper's protocol: segment and score every test sample")
    p.add_argument("--dataset", required=True)
    p.add_argument("--route", default="auto", choices=["auto", "appearance", "object", "prototype", "reasoning-fast", "reasoning"],
                   help="auto: the cheapest route that passes verification")
    p.add_argument("--model", help=f"bundle directory, Hugging Face id or zoo name ({zoo}): reasoning route, text queries")
    p.add_argument("--seed", type=int, default=0, help="seed of the demonstration draw")
    p.add_argument("--demonstrations", type=int, default=3, help="demonstrations drawn per concept")
    p.add_argument("--run-key", default="benchmark", help="run key and field prefix")
    p.add_argument("--restart", action="store_true", help="score every sample again instead of resuming")
    p.add_argument("--json", action="store_true",
                   help='print {"levels": ..., "concepts": ..., "samples": ...} as JSON')
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser(
        "train", help="train a bundle on a dataset's concepts (1: translator alignment, 2: Meta-GRPO)",
        description="Episodes pair each train sample (not tagged --test-tag) with other train samples of its "
                    "concept as demonstrations. OUT receives a bundle (loadable by --model), metrics.jsonl "
                    "(one line per step) and checkpoints/; running again with the same OUT resumes.",
    )
    p.add_argument("--stage", type=int, choices=[1, 2], required=True,
                   help="1 aligns the translator (policy and segmenter frozen); 2 is Meta-GRPO on the policy")
    p.add_argument("--dataset", required=True)
    p.add_argument("--concept-field", required=True, help="string field naming each sample's concept")
    p.add_argument("--mask-field", required=True, help="Segmentation or Detections field with the masks")
    p.add_argument("--model", required=True, help=f"bundle to start from: directory, Hugging Face id or zoo name ({zoo})")
    p.add_argument("--out", required=True, help="output directory (the trained bundle; resumed if it has checkpoints)")
    p.add_argument("--view", help="saved view to train on (default: the whole dataset)")
    p.add_argument("--test-tag", default="test", help="samples with this tag are left out of training")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps in total, counting resumed ones")
    p.add_argument("--batch-size", type=int, default=1, help="episodes per step")
    p.add_argument("--group-size", type=int, default=8, help="stage 2: rollouts per episode (G, at least 2)")
    p.add_argument("--demonstrations", type=int, default=4, help="demonstrations per episode, 1 to 4")
    p.add_argument("--lr", type=float, help="learning rate (default: 3e-5 stage 1, 1e-5 LoRA, 1e-6 full)")
    p.add_argument("--translator-lr", type=float, help="the translator's learning rate (default: --lr's)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (official: 0)")
    p.add_argument("--lr-schedule", default="linear", choices=["linear", "constant"],
                   help="linear decay to 0 over --steps, no warm-up (official), or constant")
    p.add_argument("--reward", default="official", choices=["official", "strict"],
                   help="official: the official rewards' semantics; strict: every reward needs a parsable completion")
    p.add_argument("--save-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--max-new-tokens", type=int, help="longest rollout (default: the bundle's)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="stage 2: less memory, slower steps")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="accelerate's mixed precision")
    p.add_argument("--seed", type=int, default=0, help="drives the episode order, draws and rollouts")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON (no progress lines)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--lora", dest="lora", action="store_true", help="stage 2: train LoRA adapters (default)")
    weights.add_argument("--full", dest="lora", action="store_false", help="stage 2: fine-tune every policy weight")
    p.set_defaults(func=cmd_train, lora=True)

    p = sub.add_parser("install-plugin", help="link the plugin and zoo source into FiftyOne's directories")
    p.add_argument("--plugins-dir", help="default: FiftyOne's plugins_dir")
    p.add_argument("--zoo-dir", help="default: FiftyOne's model_zoo_dir")
    p.set_defaults(func=cmd_install_plugin)

    p = sub.add_parser("setup-db", help="make sure FiftyOne has a MongoDB it can start")
    p.set_defaults(func=cmd_setup_db)

    _add_run_commands(sub)
    from conceptseg.cli_review import add_concept_commands, add_review_commands

    add_review_commands(sub)
    add_concept_commands(sub)
    from conceptseg.shards_cli import add_shards_command

    add_shards_command(sub)
    return parser


def _run(args) -> int:
    """Runs the command; with --json only the JSON document reaches stdout."""
    global _json_out
    if not getattr(args, "json", False):
        return args.func(args)
    # FiftyOne prints a MongoDB version notice to stdout unless validation is off; anything
    # else printed on the way (progress, notices) goes to stderr too.
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    _json_out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return args.func(args)
    finally:
        _json_out = sys.stdout


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


if __name__ == "__main__":
    sys.exit(main())
