"""CLI subcommands of the labeling loop (review, accept, reject, promote, rerun) and the concept library."""

from __future__ import annotations

import json
import sys


def _load(name: str):
    from conceptseg.cli import _load as load

    return load(name)


def _progress(done: int, total: int) -> None:
    from conceptseg.cli import _progress as progress

    progress(done, total)


def cmd_review(args) -> int:
    from conceptseg.review import review

    out = review(_load(args.dataset), args.pred_field)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['pred_field']}: round {out['round']}, {out['accepted']} accepted, {out['rejected']} rejected, "
          f"{out['negatives']} negatives; {len(out['targets'])} targets to review, most doubtful first")
    for t in out["targets"]:
        print(f"  {t['id']}  doubt {t['doubt']:.3f}{'  (rejected)' if t['rejected'] else ''}  {t['filepath']}")
    return 0


def cmd_accept(args) -> int:
    from conceptseg.review import accept

    out = accept(_load(args.dataset), args.pred_field, args.ids)
    print(json.dumps(out) if args.json else
          f"accepted {len(out['accepted'])} into {out['mask_field']!r} as {out['class']!r} "
          f"({out['total_accepted']} accepted in all); `conceptseg rerun` learns from them")
    return 0


def cmd_reject(args) -> int:
    from conceptseg.review import reject

    out = reject(_load(args.dataset), args.pred_field, args.ids, absent=args.absent)
    print(json.dumps(out) if args.json else
          f"rejected {len(out['rejected'])}" + (f"; {len(out['negatives'])} join the demonstrations as negatives"
                                                if out["negatives"] else ""))
    return 0


def cmd_promote(args) -> int:
    from conceptseg.review import promote

    out = promote(_load(args.dataset), args.pred_field, args.from_field, args.ids)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"promoted {len(out['promoted'])} from {args.from_field!r} into {out['mask_field']!r}")
    for sample_id, why in out["missing"].items():
        print(f"  not promoted: {sample_id} {why}")
    return 0


def cmd_rerun(args) -> int:
    from conceptseg.cli import _report
    from conceptseg.review import rerun

    out = rerun(_load(args.dataset), args.pred_field, progress=None if args.json else _progress)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"round {out['round']}: {out['demonstrations']} demonstrations")
    return _report(out, False)


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
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("promote", help="corrected masks from a field become ground truth and demonstrations")
    p.add_argument("--dataset", required=True)
    p.add_argument("--from-field", required=True, help="field holding the corrected masks")
    p.add_argument("--ids", required=True, help="sample ids, comma-separated")
    p.add_argument("--pred-field", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rerun", help="segment the targets not yet accepted with the enlarged demonstrations")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rerun)
