"""CLI subcommands of the labeling loop (review, accept, reject, promote, rerun) and the concept library."""

from __future__ import annotations

import json
import sys

from conceptseg.constants import ROUTE_NAMES
from conceptseg.cli.common import emit_json, load_dataset, progress, report_run


def cmd_review(args) -> int:
    from conceptseg.runs.review import review

    out = review(load_dataset(args.dataset), args.pred_field)
    if args.json:
        return emit_json(out)
    print(f"{out['pred_field']}: round {out['round']}, {out['accepted']} accepted, {out['rejected']} rejected, "
          f"{out['negatives']} negatives; {len(out['targets'])} targets to review, most doubtful first")
    for t in out["targets"]:
        print(f"  {t['id']}  doubt {t['doubt']:.3f}{'  (rejected)' if t['rejected'] else ''}  {t['filepath']}")
    return 0


def cmd_accept(args) -> int:
    from conceptseg.runs.review import accept

    out = accept(load_dataset(args.dataset), args.pred_field, args.ids, replace=args.replace, mask_field=args.mask_field)
    if args.json:
        return emit_json(out)
    print(f"accepted {len(out['accepted'])} into {out['mask_field']!r} as {out['class']!r} "
          f"({out['total_accepted']} accepted in all); `conceptseg rerun` learns from them")
    if out["replaced"]:
        print(f"  replaced the earlier ground truth of {out['class']!r} on {', '.join(out['replaced'])}")
    return 0


def cmd_reject(args) -> int:
    from conceptseg.runs.review import reject

    out = reject(load_dataset(args.dataset), args.pred_field, args.ids, absent=args.absent, mask_field=args.mask_field)
    if args.json:
        return emit_json(out)
    print(f"rejected {len(out['rejected'])}" + (f"; {len(out['negatives'])} join the demonstrations as negatives"
                                                if out["negatives"] else ""))
    return 0


def cmd_promote(args) -> int:
    from conceptseg.runs.review import promote

    out = promote(load_dataset(args.dataset), args.pred_field, args.from_field, args.ids, replace=args.replace,
                  mask_field=args.mask_field)
    if args.json:
        return emit_json(out)
    print(f"promoted {len(out['promoted'])} from {args.from_field!r} into {out['mask_field']!r} as {out['class']!r}")
    if out["replaced"]:
        print(f"  replaced the earlier ground truth of {out['class']!r} on {', '.join(out['replaced'])}")
    for sample_id, why in out["missing"].items():
        print(f"  not promoted: {sample_id} {why}")
    return 0


def cmd_rerun(args) -> int:
    from conceptseg.runs.review import rerun

    out = rerun(load_dataset(args.dataset), args.pred_field, progress=None if args.json else progress)
    if args.json:
        return emit_json(out)
    print(f"round {out['round']}: {out['demonstrations']} demonstrations")
    return report_run(out, False)


REPLACE_HELP = ("replace ground truth of the concept's class already on these samples "
                "(without it such samples are refused)")


def add_review_commands(sub) -> None:
    """Adds review, accept, reject, promote and rerun to the ``conceptseg`` parser."""
    p = sub.add_parser("review", help="a run's targets, most doubtful first")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True)
    p.add_argument("--json", action="store_true", help='print {"targets": [{"id", "doubt", ...}], ...}')
    p.set_defaults(func=cmd_review)
    for name, func, text in (("accept", cmd_accept, "predictions become ground truth and demonstrations"),
                             ("reject", cmd_reject, "tag predictions as wrong (--absent: concept not there)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dataset", required=True)
        p.add_argument("--pred-field", required=True)
        p.add_argument("--ids", required=True, help="sample ids, comma-separated")
        if name == "reject":
            p.add_argument("--absent", action="store_true",
                           help="the concept is not in these images: they become negative demonstrations")
        else:
            p.add_argument("--replace", action="store_true", help=REPLACE_HELP)
        mask_field_option(p)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("promote", help="corrected masks from a field become ground truth and demonstrations")
    p.add_argument("--dataset", required=True)
    p.add_argument("--from-field", required=True, help="field holding the corrected masks")
    p.add_argument("--ids", required=True, help="sample ids, comma-separated")
    p.add_argument("--pred-field", required=True)
    p.add_argument("--replace", action="store_true", help=REPLACE_HELP)
    mask_field_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rerun", help="segment the targets not yet accepted with the enlarged demonstrations")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rerun)


OVERWRITE_HELP = "replace a saved concept of that name (as its new version; earlier ones stay applicable as NAME@N)"


def mask_field_option(p) -> None:
    p.add_argument("--mask-field", help="on a run made by `concepts apply`: the field accepted masks go into (needed "
                   "when the concept's own field is not on this dataset; created as the concept's label type)")


def cmd_concepts(args) -> int:
    from conceptseg.runs import library

    action = args.concepts_command
    if action == "save":
        dataset = load_dataset(args.dataset)
        warnings = []
        if args.ids:
            demos, warnings = library.select_demonstrations(dataset, args.ids)
        else:
            if args.demo_tag not in dataset.distinct("tags"):
                raise library.LibraryError(f"No sample of {args.dataset!r} has the tag {args.demo_tag!r}.")
            demos = dataset.match_tags(args.demo_tag)
        for warning in warnings:  # also kept in the concept's record
            print(f"warning: {warning}", file=sys.stderr)
        record = library.save(args.name, demos, args.mask_field, classes=args.classes, route=args.route,
                              model=args.model, threshold=args.threshold, overwrite=args.overwrite,
                              warnings=warnings)
        v = record["verification"]
        print(f"saved {record['name']!r}: {len(record['demonstrations'])} demonstrations, route {record['route']}, "
              f"verification {'unavailable' if v is None else f'{v:.3f}'} -> {library.library_dir()}")
    elif action == "list":
        broken = {}
        concepts = library.list_concepts(broken)
        for name, why in broken.items():  # named, never hiding the others
            print(f"broken: {name}: {' '.join(why.split())} (`conceptseg concepts delete {name}` removes it)",
                  file=sys.stderr)
        if args.json:
            emit_json({"concepts": concepts, "broken": broken})
        else:
            for c in concepts:
                v = c["verification"]
                print(f"{c['name']:<24}{c['route'] or '':<12}{'n/a' if v is None else f'{v:.3f}':>7}  "
                      f"{c['demonstrations']} demos  {', '.join(c['classes'] or [])}  {c['date']}")
            if not concepts and not broken:
                print(f"no saved concepts in {library.library_dir()}")
    elif action == "show":
        print(json.dumps(library.load(args.name), indent=1))
    elif action == "apply":
        dataset = load_dataset(args.dataset)
        if args.view and args.view not in dataset.list_saved_views():
            raise library.LibraryError(f"{args.dataset!r} has no saved view {args.view!r}.")
        targets = dataset.load_saved_view(args.view) if args.view else dataset
    
        summary = library.apply(args.name, targets, args.pred_field, overwrite=args.overwrite, resume=args.resume,
                                progress=None if args.json else progress)
        if not args.json:
            print(f"concept {summary['concept_name']!r} version {summary['concept_version']}")
        return report_run(summary, args.json)
    elif action == "update":
        record = library.update(args.name, load_dataset(args.dataset), args.pred_field)
        if args.json:
            return emit_json(record)
        v = record["verification"]
        print(f"updated {record['name']!r} to version {record['version']}: {len(record['added'])} sample(s) of "
              f"{args.pred_field!r} added, {len(record['demonstrations'])} demonstrations, route {record['route']}, "
              f"verification {'unavailable' if v is None else f'{v:.3f}'}; version {record['previous_version']} "
              f"stays applicable as {record['name']}@{record['previous_version']}")
    elif action == "delete":
        library.delete(args.name)
        print(f"deleted {args.name!r}")
    elif action == "export":
        print(library.export(args.name, args.out, overwrite=args.overwrite))
    elif action == "import":
        record = library.import_zip(args.zip, overwrite=args.overwrite)
        print(f"imported {record['name']!r} into {library.library_dir()}")
    return 0


def add_concept_commands(sub) -> None:
    """Adds ``concepts save|list|show|apply|update|delete|export|import`` to the ``conceptseg`` parser."""
    p = sub.add_parser("concepts", help="the library of saved concepts")
    p.set_defaults(func=cmd_concepts)
    verbs = p.add_subparsers(dest="concepts_command", required=True)
    s = verbs.add_parser("save", help="save the concept that demonstrations show")
    s.add_argument("name")
    s.add_argument("--dataset", required=True)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--demo-tag", help="tag of the demonstration samples")
    which.add_argument("--ids", help="demonstration sample ids, comma-separated")
    s.add_argument("--mask-field", required=True)
    s.add_argument("--classes", help="class(es) of --mask-field that are the concept (A[,B])")
    s.add_argument("--route", default="auto",
                   choices=list(ROUTE_NAMES),
                   help="auto: the cheapest route that passes verification (as segment)")
    s.add_argument("--model", help="bundle directory, zoo name or Hugging Face id")
    s.add_argument("--threshold", type=float, help="held-out IoU the route must reach (default: segment's, "
                   "router.DEFAULT_THRESHOLD)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s = verbs.add_parser("list", help="the saved concepts")
    s.add_argument("--json", action="store_true", help='print {"concepts": [...]}')
    verbs.add_parser("show", help="a saved concept's record").add_argument(
        "name", help="NAME (its current version) or NAME@N (version N)")
    verbs.add_parser("delete", help="remove a saved concept, every version of it").add_argument("name")
    s = verbs.add_parser("apply", help="segment a dataset with a saved concept")
    s.add_argument("name", help="NAME (its current version) or NAME@N (version N)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--view", help="saved view of targets (default: the whole dataset)")
    s.add_argument("--pred-field", required=True)
    s.add_argument("--json", action="store_true")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true")
    mode.add_argument("--resume", action="store_true")
    s = verbs.add_parser("update", help="add the samples accepted on a `concepts apply` run to the concept "
                                        "(as its new version)")
    s.add_argument("name")
    s.add_argument("--dataset", required=True)
    s.add_argument("--pred-field", required=True, help="the prediction field of the run made by `concepts apply`")
    s.add_argument("--json", action="store_true")
    s = verbs.add_parser("export", help="write a saved concept into a zip")
    s.add_argument("name", help="NAME (its current version) or NAME@N (version N)")
    s.add_argument("out", metavar="OUT.zip")
    s.add_argument("--overwrite", action="store_true", help="replace an existing file")
    s = verbs.add_parser("import", help="validate a concept zip and add it to the library")
    s.add_argument("zip", metavar="ZIP")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
