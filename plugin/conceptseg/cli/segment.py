"""Segmenting and scoring: `demo`, `segment`, `query`, `tiny-bundle`, `evaluate`, `import`, `benchmark`."""

from __future__ import annotations

import sys

from conceptseg.cli.common import emit_json, load_dataset, progress, report_run, saved_view, warn, zoo_names
from conceptseg.constants import ROUTE_NAMES, VERIFY_THRESHOLD
from conceptseg.errors import ConceptSegError

ROUTES = list(ROUTE_NAMES)


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
    from conceptseg.runs.jobs import segment_by_demonstration

    dataset = load_dataset(args.dataset)
    scope = saved_view(dataset, args.view)
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
        progress=None if args.json else progress,
        classes=args.classes,
        resize_masks=args.resize_masks,
        prompt_template=args.prompt_template,
        shards=args.shards,
        batch_size=args.batch_size,
        prefix_reuse=not args.no_prefix_reuse,
    )
    warn(summary)
    if summary.get("queued"):
        from conceptseg.cli.shards import report_queued

        return report_queued(summary, args.json)
    return report_run(summary, args.json)


def cmd_query(args) -> int:
    from conceptseg.runs.jobs import segment_by_query

    dataset = load_dataset(args.dataset)
    targets = saved_view(dataset, args.view)
    summary = segment_by_query(
        targets,
        args.text,
        args.pred_field,
        args.model,
        overwrite=args.overwrite,
        resume=args.resume,
        instances=not args.no_instances,
        progress=None if args.json else progress,
        prompt_template=args.prompt_template,
        batch_size=args.batch_size,
        prefix_reuse=not args.no_prefix_reuse,
    )
    return report_run(summary, args.json)


def cmd_tiny_bundle(args) -> int:
    from conceptseg.runs.outputs import empty_or_overwrite
    from conceptseg.testing import build_tiny_bundle

    out_dir = empty_or_overwrite(args.out_dir, args.overwrite, "bundle directory")
    print(build_tiny_bundle(out_dir, seed=args.seed, segmenter=args.segmenter))
    return 0


def cmd_evaluate(args) -> int:
    from conceptseg.runs.evaluation import evaluate

    dataset = load_dataset(args.dataset)
    scope = saved_view(dataset, args.view)
    report = evaluate(scope, args.pred_field, args.gt_field, eval_key=args.eval_key, size=args.size,
                      classes=args.classes)
    for notice in report["notices"]:  # on stderr, so --json prints the documented document only
        print(f"note: {notice}", file=sys.stderr)
    if args.json:
        return emit_json({"metrics": report["metrics"], "samples": report["samples"]})
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
        return emit_json(report.to_dict())
    print(report.summary())
    for kind in ("missing", "unreadable", "duplicates", "invalid"):
        for item in getattr(report, kind)[:20]:
            print(f"  {kind}: {item}")
        if len(getattr(report, kind)) > 20:
            print(f"  ... and {len(getattr(report, kind)) - 20} more {kind}")
    return 0


def cmd_benchmark(args) -> int:
    from conceptseg.runs.protocol import run_benchmark

    results = run_benchmark(
        load_dataset(args.dataset),
        route=args.route,
        model=args.model,
        seed=args.seed,
        num_demonstrations=args.demonstrations,
        run_key=args.run_key,
        resume=not args.restart,
        progress=None if args.json else progress,
    )
    if args.json:
        return emit_json(results)
    print(results["markdown"])
    c = results["counts"]
    print(f"\nscored {c['scored_now']} now and {c['scored_before']} before; skipped: no train sample of the "
          f"concept {c['no_train']}, text query without model {c['needs_model']}, no ground truth "
          f"{c['no_ground_truth']}, no concept or query {c['no_concept']}; failed {c['failed']}")
    for f in results["failures"]:
        print(f"  failed {f['sample_id']} ({f['filepath']}): {f['error']}")
    return 0


def add_segment_commands(sub) -> None:
    """`demo`, `segment` and `query`."""
    zoo = zoo_names()

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
    p.add_argument("--route", default="auto", choices=ROUTES,
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


def add_data_commands(sub) -> None:
    """`tiny-bundle`, `evaluate`, `import` and `benchmark`."""
    zoo = zoo_names()

    p = sub.add_parser("tiny-bundle", help="build a tiny random bundle offline (tests, trying without a GPU)")
    p.add_argument("out_dir", help="a new or empty directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--segmenter", choices=["sam2", "sam3"], default="sam2",
                   help="sam2: SAM 2 hiera-t at 256 px (the prototype route); sam3: a tiny SAM 3 (the exemplar route, "
                        "the released model's backbone)")
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
    p.add_argument("--route", default="auto", choices=ROUTES,
                   help="auto: the cheapest route that passes verification")
    p.add_argument("--model", help=f"bundle directory, Hugging Face id or zoo name ({zoo}): reasoning route, text queries")
    p.add_argument("--seed", type=int, default=0, help="seed of the demonstration draw")
    p.add_argument("--demonstrations", type=int, default=3, help="demonstrations drawn per concept")
    p.add_argument("--run-key", default="benchmark", help="run key and field prefix")
    p.add_argument("--restart", action="store_true", help="score every sample again instead of resuming")
    p.add_argument("--json", action="store_true",
                   help='print {"levels": ..., "concepts": ..., "samples": ...} as JSON')
    p.set_defaults(func=cmd_benchmark)
