"""Recorded runs and the installation: `runs`, `delete-run`, `install-plugin`, `setup-db`."""

from __future__ import annotations

from conceptseg.cli.common import emit_json, load_dataset


def cmd_runs(args) -> int:
    from conceptseg.runs.records import list_runs

    runs = list_runs(load_dataset(args.dataset))
    if args.json:
        return emit_json(runs)
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
    from conceptseg.runs.delete import delete_run

    report = delete_run(load_dataset(args.dataset), args.pred_field)
    if args.json:
        return emit_json(report)
    labels = report.get("labels", {}).get(args.pred_field, 0)  # its instances field holds as many
    what = (f"deleted run(s) {', '.join(report['run_keys'])}" if report["run_keys"]
            else f"removed labels a deleted run left in {args.pred_field!r}")
    kept = "".join(f"; kept {f!r} ({n} label(s) the run did not write)" for f, n in report.get("kept", {}).items())
    print(f"{what}: {labels} label(s), fields {', '.join(report['fields']) or 'none'}, "
          f"{report['files']} mask file(s){kept}")
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


def add_run_commands(sub) -> None:
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


def add_setup_commands(sub) -> None:
    """`install-plugin` and `setup-db`."""
    p = sub.add_parser("install-plugin", help="link the plugin and zoo source into FiftyOne's directories")
    p.add_argument("--plugins-dir", help="default: FiftyOne's plugins_dir")
    p.add_argument("--zoo-dir", help="default: FiftyOne's model_zoo_dir")
    p.set_defaults(func=cmd_install_plugin)

    p = sub.add_parser("setup-db", help="make sure FiftyOne has a MongoDB it can start")
    p.set_defaults(func=cmd_setup_db)
