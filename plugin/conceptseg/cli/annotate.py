"""``conceptseg annotate``: the most doubtful targets go to an annotation tool (Label Studio); --load brings them home."""

from __future__ import annotations

from conceptseg.cli.common import emit_json, load_dataset


def cmd_annotate(args) -> int:
    from conceptseg.runs.review import annotate

    dataset = load_dataset(args.dataset)
    if args.load:
        out = annotate.load(dataset, args.pred_field, url=args.url, cleanup=args.cleanup, replace=args.replace,
                            mask_field=args.mask_field)
        return emit_json(out) if args.json else _print_loaded(out)
    if args.cleanup:
        out = annotate.drop(dataset, args.pred_field, url=args.url)
        if args.json:
            return emit_json(out)
        print(f"cleaned up annotation run {out['anno_key']!r}: Label Studio project {out['project_id']} "
              + ("deleted" if out["project_deleted"] else "was gone already")
              + ("" if out["loaded"] else "; its corrections were not loaded and are gone"))
        return 0
    out = annotate.send(dataset, args.pred_field, top=args.top, backend=args.backend, url=args.url,
                        mask_field=args.mask_field)
    if args.json:
        return emit_json(out)
    print(f"sent the {len(out['ids'])} most doubtful targets of {args.pred_field!r} to Label Studio as "
          f"annotation run {out['anno_key']!r}, pre-annotated with their predictions as {out['class']!r}: "
          f"{out['url']}")
    print(f"correct the masks there (Submit, or Skip to leave a prediction as it is), then: conceptseg annotate "
          f"--dataset {args.dataset} --pred-field {args.pred_field} --load")
    return 0


def _print_loaded(out: dict) -> int:
    print(f"loaded annotation run {out['anno_key']!r} into {out['field']!r}: promoted {len(out['promoted'])} "
          f"corrected mask(s) into {out['mask_field']!r} as {out['class']!r}; `conceptseg rerun` learns from them")
    if out["replaced"]:
        print(f"  replaced the earlier ground truth of {out['class']!r} on {', '.join(out['replaced'])}")
    for sample_id, why in out["skipped"].items():
        print(f"  not promoted: {sample_id} {why}")
    if out["cleaned"]:
        print(f"  the Label Studio project {out['cleaned']['project_id']} was deleted")
    return 0


def add_annotate_command(sub) -> None:
    """Adds ``annotate`` to the ``conceptseg`` parser."""
    from conceptseg.cli.review import REPLACE_HELP, mask_field_option
    from conceptseg.constants import ANNOTATE_TOP as DEFAULT_TOP, ANNOTATION_BACKENDS as BACKENDS

    p = sub.add_parser("annotate", help="correct the most doubtful targets in Label Studio; --load brings the "
                                        "corrections home as demonstrations")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True)
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help="how many of the most doubtful targets to send")
    p.add_argument("--backend", choices=BACKENDS, default="labelstudio",
                   help="the annotation tool (cvat: not supported yet, see docs/labeling-loop.md)")
    p.add_argument("--url", help="the tool's address (default: FIFTYONE_LABELSTUDIO_URL, else FiftyOne's "
                                 "annotation config); the API key comes from FIFTYONE_LABELSTUDIO_API_KEY")
    p.add_argument("--load", action="store_true",
                   help="bring the submitted corrections home: they are promoted as demonstrations")
    p.add_argument("--cleanup", action="store_true",
                   help="delete the annotation run on the tool (with --load: after loading; alone: drop it)")
    p.add_argument("--replace", action="store_true", help=f"with --load: {REPLACE_HELP}")
    mask_field_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_annotate)
