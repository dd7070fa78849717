"""The ``conceptseg`` command: the same engine functions the operators call."""

from __future__ import annotations

import argparse
import json
import sys

from conceptseg.errors import ConceptSegError


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
    scope = dataset.load_saved_view(args.view) if args.view else dataset
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
    )
    return _report(summary, args.json)


def _report(summary: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(summary))
        return 0
    v = summary["verification"]
    print(f"route {summary['route']}, verification {'unavailable' if v is None else f'{v:.3f}'}"
          f"{'' if summary['verified'] else ' (UNVERIFIED)'}")
    if summary.get("rule"):
        print(f"rule: {summary['rule']}")
    print(f"segmented {summary['segmented']}, skipped {summary['skipped']}, failed {len(summary['failures'])}")
    for f in summary["failures"]:
        print(f"  failed {f['sample_id']} ({f['filepath']}): {f['error']}")
    return 0


def cmd_query(args) -> int:
    from conceptseg.jobs import segment_by_query

    dataset = _load(args.dataset)
    targets = dataset.load_saved_view(args.view) if args.view else dataset
    summary = segment_by_query(
        targets,
        args.text,
        args.pred_field,
        args.model,
        overwrite=args.overwrite,
        resume=args.resume,
        instances=not args.no_instances,
        progress=None if args.json else _progress,
    )
    return _report(summary, args.json)


def cmd_tiny_bundle(args) -> int:
    from conceptseg.testing import build_tiny_bundle

    print(build_tiny_bundle(args.out_dir, seed=args.seed))
    return 0


def cmd_evaluate(args) -> int:
    from conceptseg.evaluation import evaluate

    dataset = _load(args.dataset)
    scope = dataset.load_saved_view(args.view) if args.view else dataset
    report = evaluate(scope, args.pred_field, args.gt_field, eval_key=args.eval_key, size=args.size)
    if args.json:
        print(json.dumps({"metrics": report["metrics"], "samples": report["samples"]}))
        return 0
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
        print(json.dumps(report.to_dict()))
        return 0
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
        print(json.dumps(results))
        return 0
    print(results["markdown"])
    c = results["counts"]
    print(f"\nscored {c['scored_now']} now and {c['scored_before']} before; skipped: no train sample of the "
          f"concept {c['no_train']}, text query without model {c['needs_model']}, no ground truth "
          f"{c['no_ground_truth']}, no concept or query {c['no_concept']}; failed {c['failed']}")
    for f in results["failures"]:
        print(f"  failed {f['sample_id']} ({f['filepath']}): {f['error']}")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests can read its contract)."""
    parser = argparse.ArgumentParser(prog="conceptseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="segment nuclei by demonstration on the bundled real images")
    p.add_argument("--dataset", default="conceptseg-demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="segment a concept shown by tagged demonstrations")
    p.add_argument("--dataset", required=True)
    p.add_argument("--demo-tag", required=True, help="tag of the demonstration samples")
    p.add_argument("--mask-field", required=True, help="field with the demonstrations' masks")
    p.add_argument("--pred-field", required=True, help="Segmentation field to write")
    p.add_argument("--view", help="saved view of targets (default: every sample not tagged --demo-tag)")
    p.add_argument("--route", default="auto", choices=["auto", "appearance", "prototype", "reasoning"])
    p.add_argument("--model", help="bundle directory or Hugging Face id (enables the reasoning route)")
    p.add_argument("--threshold", type=float, default=0.5, help="held-out IoU a route must reach")
    p.add_argument("--concept", default="concept", help="label of the predicted masks")
    p.add_argument("--no-instances", action="store_true", help="skip the <pred-field>_instances Detections")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing labels in the output fields")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted run")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("query", help="reasoning segmentation of a text query (no demonstrations)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--text", required=True, help="what to segment, e.g. 'the animal that hides'")
    p.add_argument("--pred-field", required=True)
    p.add_argument("--model", required=True, help="bundle directory or Hugging Face id")
    p.add_argument("--view", help="saved view of targets (default: the whole dataset)")
    p.add_argument("--no-instances", action="store_true")
    p.add_argument("--json", action="store_true")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true")
    mode.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("tiny-bundle", help="build a tiny random bundle offline (tests, trying without a GPU)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_bundle)

    p = sub.add_parser("evaluate", help="score predictions against ground truth")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True)
    p.add_argument("--gt-field", required=True)
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
    p.add_argument("--route", default="auto", choices=["auto", "appearance", "prototype", "reasoning"])
    p.add_argument("--model", help="bundle directory or Hugging Face id (reasoning route, text queries)")
    p.add_argument("--seed", type=int, default=0, help="seed of the demonstration draw")
    p.add_argument("--demonstrations", type=int, default=3, help="demonstrations drawn per concept")
    p.add_argument("--run-key", default="benchmark", help="run key and field prefix")
    p.add_argument("--restart", action="store_true", help="score every sample again instead of resuming")
    p.add_argument("--json", action="store_true",
                   help='print {"levels": ..., "concepts": ..., "samples": ...} as JSON')
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("install-plugin", help="link the plugin and zoo source into FiftyOne's directories")
    p.add_argument("--plugins-dir", help="default: FiftyOne's plugins_dir")
    p.add_argument("--zoo-dir", help="default: FiftyOne's model_zoo_dir")
    p.set_defaults(func=cmd_install_plugin)

    p = sub.add_parser("setup-db", help="make sure FiftyOne has a MongoDB it can start")
    p.set_defaults(func=cmd_setup_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConceptSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
