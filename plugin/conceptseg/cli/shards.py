"""The CLI side of sharded runs: what `segment --shards` prints, `conceptseg shards` and `conceptseg worker`."""

from __future__ import annotations

def report_queued(summary: dict, as_json: bool) -> int:
    """Prints a queued sharded run: its route, its shards, and how to run them."""
    from conceptseg.cli.common import emit_json, route_line

    if as_json:
        return emit_json(summary)
    print(route_line(summary))
    if summary.get("note"):
        print(f"note: {summary['note']}")
    todo = summary["targets"] - summary["skipped"]
    print(f"queued {summary['shards']} shard(s) of {todo} target(s) as run {summary['run_key']} "
          f"({summary['skipped']} already done)")
    print("run them with `fiftyone delegated launch` (one worker per GPU, on any machine with the same "
          f"FIFTYONE_DATABASE_URI, media and output directory); watch with `conceptseg shards --dataset ... "
          f"--pred-field {summary['pred_field']}`")
    return 0


def cmd_shards(args) -> int:
    from conceptseg.cli.common import load_dataset
    from conceptseg.runs.shards.store import STALE_AFTER
    from conceptseg.runs.shards.watch import requeue_dead, shard_status

    dataset = load_dataset(args.dataset)
    args.stale_after = STALE_AFTER if args.stale_after is None else args.stale_after
    requeued = requeue_dead(dataset, args.pred_field, args.stale_after) if args.requeue_dead else []
    status = shard_status(dataset, args.pred_field, args.stale_after)
    if args.json:
        from conceptseg.cli.common import emit_json

        return emit_json(dict(status, requeued=requeued))
    print(f"run {status['run_key']}: {len(status['shards'])} shard(s)")
    print(f"{'shard':>6}{'state':>11}{'operation':>11}{'attempt':>9}{'done':>12}  worker")
    for r in status["shards"]:
        worker = f"{r['host']}:{r['pid']}" if r["pid"] else ""
        if r["heartbeat_age"] is not None and r["state"] == "running":
            worker += f" (heartbeat {r['heartbeat_age']:.0f} s ago)"
        if r["dead"]:
            worker += f"  DEAD: {r['dead']}"
        print(f"{r['index'] + 1:>6}{r['state'] or '':>11}{r['op_state'] or 'deleted':>11}{r['attempt']:>9}"
              f"{str(r['done']) + '/' + str(r['targets']):>12}  {worker}")
    for r in requeued:
        print(f"re-queued shard {r['index'] + 1} ({r['reason']}) as operation {r['op_id']}")
    if not args.requeue_dead and any(r["dead"] for r in status["shards"]):
        print("dead shard(s): re-queue them with --requeue-dead (they resume: finished targets are skipped)")
    return 0


def cmd_worker(args) -> int:
    """A delegated worker that takes only conceptseg shards (of one dataset, if given), one at a time."""
    import time

    from fiftyone.operators.delegated import DelegatedOperationService

    from conceptseg.runs.shards.queue import operator_uri

    import math

    from conceptseg.errors import ConceptSegError

    if not math.isfinite(args.poll) or args.poll < 0:
        raise ConceptSegError(f"--poll must be a finite number of seconds, 0 or more; got {args.poll:g}.")
    service, uri = DelegatedOperationService(), operator_uri()
    if args.threads is not None:
        import os

        from conceptseg.threads import ENV

        if args.threads < 1:
            raise ConceptSegError(f"--threads must be at least 1, got {args.threads}.")
        os.environ[ENV] = str(args.threads)  # every shard of this worker uses that many
    print(f"worker: running queued {uri} operations"
          + (f" of dataset {args.dataset!r}" if args.dataset else "") + "; stop with Ctrl-C", flush=True)
    try:
        while True:
            ran = service.execute_queued_operations(operator=uri, dataset_name=args.dataset, limit=1, log=True)
            if not ran:
                if args.exit_when_idle:
                    return 0
                time.sleep(args.poll)  # the queue is empty: look again later, like `fiftyone delegated launch`
    except KeyboardInterrupt:
        return 0


def add_shards_command(sub) -> None:
    """`conceptseg shards`: the shards of a sharded run, and re-queueing the dead ones."""
    p = sub.add_parser("shards", help="the shards of a run spread over workers; --requeue-dead re-queues dead ones")
    p.add_argument("--dataset", required=True)
    p.add_argument("--pred-field", required=True, help="the run's prediction field")
    p.add_argument("--requeue-dead", action="store_true",
                   help="re-queue shards whose worker died (they resume without redoing finished targets)")
    p.add_argument("--stale-after", type=float,
                   help="seconds without a heartbeat after which a running shard's worker counts as dead (default 60)")
    p.add_argument("--json", action="store_true", help="print the shards as JSON")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("worker", help="a delegated worker for conceptseg shards only (`fiftyone delegated launch` "
                       "runs every queued operation)")
    p.add_argument("--dataset", help="take only the shards of this dataset")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between looks at an empty queue")
    p.add_argument("--exit-when-idle", action="store_true", help="stop once no shard is queued")
    p.add_argument("--threads", type=int, help="CPU threads per shard (default: the cores divided among this "
                   "run's shards running on this machine; CONCEPTSEG_THREADS for `fiftyone delegated launch`)")
    p.set_defaults(func=cmd_worker)
