"""Issue 15: a run spread over workers, against the same run without shards; and a worker killed mid-shard.

Run: ``python benchmarks/shards.py [--targets 400] [--shards 2] [--repeats 3] [--threads 1]``.
Prints one plain-text table; with repeats, 1 and 2 workers alternate and the median run
(by span) of each is shown, since the CPUs are shared and their load moves.

Setup: a private MongoDB (the bundled ``mongod`` on a free port, reached through
``FIFTYONE_DATABASE_URI`` exactly as workers on other machines would) and private plugin
and dataset directories, so real ``fiftyone delegated launch`` workers take only this
script's operations. Targets: the demo's 13 nuclei tiles (128², real images), added
over and over up to ``--targets`` samples; the demo's 3 tagged tiles are the
demonstrations; the appearance route.

Rows:
- in-process: ``segment_by_demonstration`` without shards: the reference labels and the
  baseline every speed-up is taken against (sharding has to beat *this*, not 1 worker);
- 1 worker / 2 workers: ``--shards`` operations queued, run by that many
  ``fiftyone delegated launch`` processes started just before (their imports count);
- ceiling (printed below the table): the same route on the same tiles in 1 process, then
  in 2 processes at once (each half the targets, cores ÷ processes threads, no FiftyOne, no
  database), started together after their imports and fit, alternating with the worker runs:
  what the shared CPUs give two processes at that moment. 2 workers cannot beat it;
- 2 workers, one killed: one worker gets SIGKILL once its shard has written a quarter of
  its targets; ``requeue_dead`` re-queues the shard, the survivor finishes it.

Threads: by default each shard limits its numeric pools (forest, scikit-image, OpenCV,
BLAS/OpenMP) to the cores divided among the run's shards running on this machine
(:mod:`conceptseg.threads`); ``--threads N`` fixes N per process (``CONCEPTSEG_THREADS``).

Columns: wall s (from queueing, after the route is chosen, to the run's aggregated record;
the in-process row: the segmentation after the fit); targets/s; × in-process (the in-process
row's time over this row's: above 1 is faster than not sharding at all);
labels (targets holding this run's label); equal (labels whose mask equals the in-process
run's); redone (targets segmented twice: shard segmented + resumed - shard targets).
"span" columns time the shards themselves, first shard start to last shard end (what a
long-lived worker pool sees: no worker start-up, no imports of FiftyOne); fit s: the shards'
re-fits of the chosen route, summed (each shard re-fits it on the saved demonstrations);
cpu s: the shards' process CPU time, summed, and targets per CPU second (equal for 1 and 2
workers when running shards side by side costs no extra work: then any shortfall of the
speed-up is CPU time the shared machine gave to others); load: the 1-minute load average
when the run ended (it counts our own workers). The load average is printed before and after.

Below the table it says what sharding buys on this machine and where it buys more: how 2
workers compare with the in-process run (on one machine they share its cores, which the
in-process run already uses), how the workers scale from 1 to 2 (the worker overhead, not a
gain over not sharding), and what a worker per machine would add.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import math
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _private_fiftyone(root: str):
    """Starts a private mongod; returns (process, environment for every process of the benchmark)."""
    import importlib.util

    fo_dir = os.path.dirname(importlib.util.find_spec("fiftyone").origin)
    mongod, port = os.path.join(fo_dir, "db", "bin", "mongod"), _free_port()
    os.makedirs(os.path.join(root, "db"))
    proc = subprocess.Popen([mongod, "--dbpath", os.path.join(root, "db"), "--port", str(port), "--bind_ip",
                             "127.0.0.1", "--nounixsocket", "--logpath", os.path.join(root, "mongod.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}",
               FIFTYONE_PLUGINS_DIR=os.path.join(root, "plugins"), FIFTYONE_MODEL_ZOO_DIR=os.path.join(root, "zoo"),
               FIFTYONE_DEFAULT_DATASET_DIR=os.path.join(root, "datasets"), FIFTYONE_DO_NOT_TRACK="true",
               FIFTYONE_SHOW_PROGRESS_BARS="false", FIFTYONE_DATABASE_VALIDATION="false")
    return proc, env


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # polling interval
    raise TimeoutError(f"timed out waiting for {what}")


def _workers(n: int, log_dir: str, tag: str):
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    return [subprocess.Popen([exe, "delegated", "launch"], stdout=open(os.path.join(log_dir, f"{tag}{i}.log"), "w"),
                             stderr=subprocess.STDOUT) for i in range(n)]


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def compute(args) -> None:
    """One process of the ceiling: fit the route, wait for the common start, segment its part, print times."""
    import json

    from conceptseg import threads
    from conceptseg.imaging import load_rgb
    from conceptseg.routes.appearance import AppearanceRoute
    from conceptseg.runs.shards.worker import load_demonstrations

    threads.set_threads(threads.cores() // args.procs)
    route = AppearanceRoute()
    route.fit(load_demonstrations(args.demo_file))
    with open(args.paths_file) as f:
        paths = json.load(f)[args.part::args.procs]
    time.sleep(max(0.0, args.start_at - time.time()))  # every process starts together, imports done
    start, cpu = time.time(), time.process_time()
    for path in paths:
        route.segment(load_rgb(path))
    print(json.dumps(dict(start=start, end=time.time(), cpu=time.process_time() - cpu)))


def _ceiling(procs: int, demo_file: str, paths_file: str) -> dict:
    """Span and CPU seconds of the route alone over every target, split over ``procs`` processes."""
    import json

    start_at = time.time() + 12.0  # enough for the imports and the fit on a loaded machine
    runs = [subprocess.Popen([sys.executable, __file__, "--compute", "--demo-file", demo_file, "--paths-file",
                              paths_file, "--part", str(i), "--procs", str(procs), "--start-at", str(start_at)],
                             stdout=subprocess.PIPE, text=True) for i in range(procs)]
    out = [json.loads(r.communicate()[0].strip().splitlines()[-1]) for r in runs]
    return dict(span=max(o["end"] for o in out) - min(o["start"] for o in out), cpu=sum(o["cpu"] for o in out))


def child(args) -> None:
    import fiftyone as fo
    import numpy as np
    from fiftyone import ViewField as F

    from conceptseg import demo
    from conceptseg.runs.shards import queue as sh
    from conceptseg.runs.shards import store as shard_store
    from conceptseg.runs.shards import watch as sw
    from conceptseg.install import install_plugin
    from conceptseg.runs.jobs import segment_by_demonstration

    install_plugin()
    root = os.environ["FIFTYONE_DEFAULT_DATASET_DIR"]
    dataset = demo.build_dataset("shards-bench", media_dir=os.path.join(root, "media"))
    dataset.persistent = True
    nuclei = dataset.load_saved_view("nuclei")
    tiles = nuclei.match_tags("demo", bool=False).values("filepath")
    dataset.delete_samples(dataset.match_tags("demo", bool=False))  # the quokka and the 13 tiles go
    dataset.add_samples([fo.Sample(filepath=tiles[i % len(tiles)]) for i in range(args.targets)])
    demos, targets = dataset.match_tags("demo"), dataset.match_tags("demo", bool=False)
    assert len(targets) == args.targets
    import json

    from conceptseg.runs.fiftyone_io import read_demonstrations

    demo_file, paths_file = os.path.join(root, "ceiling-demos.npz"), os.path.join(root, "ceiling-paths.json")
    sh.save_demonstrations(read_demonstrations(demos, "ground_truth")[0], demo_file)
    with open(paths_file, "w") as f:
        json.dump(targets.values("filepath"), f)
    ceilings: dict[int, list[dict]] = {1: [], 2: []}

    load_before = os.getloadavg()[0]
    t, cpu = time.perf_counter(), time.process_time()
    plain = segment_by_demonstration(demos, targets, "ground_truth", "plain", route="appearance")
    wall = time.perf_counter() - t - plain["fit_seconds"]
    rows = [dict(name="in-process (no shards)", wall=wall, span=wall, fit=0.0, labels=plain["segmented"],
                 equal=plain["segmented"], redone=0, cpu=time.process_time() - cpu, load=os.getloadavg()[0])]
    reference = {s.id: s.plain.get_mask() for s in targets.select_fields("plain")}

    def check(field: str, run_id: str) -> dict:
        dataset.reload()  # the workers added the field
        own = targets.match(F(f"{field}.run_id") == run_id)
        equal = sum(np.array_equal(reference[s.id], s[field].get_mask()) for s in own.select_fields(field))
        records = shard_store.shard_records(dataset, run_id)
        redone = sum(r.get("segmented", 0) + r.get("resumed", 0) - r["targets"] for r in records)
        span = max(r["finished"] for r in records) - min(r["started"] for r in records)
        return dict(labels=len(own), equal=equal, redone=redone, span=span,
                    fit=sum(r.get("fit_seconds", 0.0) for r in records), load=os.getloadavg()[0],
                    cpu=sum(r.get("cpu_seconds", 0.0) for r in records), threads=[r.get("threads") for r in records],
                    attempts=sum(r.get("attempt", 1) for r in records))

    def finished(run_id: str) -> bool:
        doc = shard_store.run_doc(dataset, run_id)
        return bool(doc and doc.get("results"))

    logs = tempfile.mkdtemp(prefix="shards-bench-logs-")
    order = [n for rep in range(args.repeats) for n in ((1, 2) if rep % 2 == 0 else (2, 1))]
    by_workers: dict[int, list[dict]] = {1: [], 2: []}
    for rep, n_workers in enumerate(order):
        field = f"w{n_workers}_{rep}"
        workers = _workers(n_workers, logs, field)
        try:
            t = time.perf_counter()
            queued = segment_by_demonstration(demos, targets, "ground_truth", field, route="appearance",
                                              shards=args.shards)
            t_queued = time.perf_counter()
            _wait(lambda: finished(queued["run_id"]), 1800, f"{field} to finish")
            wall = time.perf_counter() - t_queued
        finally:
            _stop(workers)
        by_workers[n_workers].append(dict(wall=wall, queue=t_queued - t, **check(field, queued["run_id"])))
        ceilings[n_workers].append(_ceiling(n_workers, demo_file, paths_file))
    for n_workers, runs in by_workers.items():
        runs.sort(key=lambda r: r["span"])
        median = runs[len(runs) // 2]  # the median run by span (odd counts; the upper one otherwise)
        rows.append(dict(name=f"{n_workers} worker{'s' if n_workers > 1 else ''}, {args.shards} shards", **median,
                         spans=[round(r["span"], 1) for r in runs]))

    workers = _workers(2, logs, "kill")
    try:
        queued = segment_by_demonstration(demos, targets, "ground_truth", "killed", route="appearance", shards=2)
        t_queued = time.perf_counter()
        rows_ = _wait(lambda: (r := sw.shard_status(dataset, "killed")["shards"]) and all(x["pid"] for x in r) and r,
                      600, "both shards running")
        victim = next(w for w in workers if w.pid == rows_[0]["pid"])
        quarter = rows_[0]["targets"] // 4
        _wait(lambda: sw.shard_status(dataset, "killed")["shards"][0]["done"] >= quarter or
              len(targets.match(F("killed.run_id") == queued["run_id"])) >= quarter, 600, "a quarter written")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        _wait(lambda: any(r["dead"] for r in sw.shard_status(dataset, "killed")["shards"]), 120, "the dead shard")
        requeued = sw.requeue_dead(dataset, "killed")
        _wait(lambda: finished(queued["run_id"]), 1800, "the killed run to finish")
        wall = time.perf_counter() - t_queued
    finally:
        _stop(workers)
    rows.append(dict(name="2 workers, one killed + re-queue", wall=wall, **check("killed", queued["run_id"])))
    load_after = os.getloadavg()[0]

    base, base_span = rows[0]["wall"], rows[0]["span"]  # the baseline: the same run without shards
    threads = os.environ.get("CONCEPTSEG_THREADS") or "auto (cores ÷ shards running here)"
    print(f"\nshards benchmark: {args.targets} targets (128² nuclei tiles), appearance route, "
          f"{os.cpu_count()} CPUs, threads per process: {threads}; "
          f"load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"{'run':<36}{'wall s':>8}{'targets/s':>10}{'×in-proc':>10}{'span s':>8}{'targets/s':>10}{'×in-proc':>10}"
          f"{'fit s':>7}{'cpu s':>7}{'t/cpu-s':>8}{'load':>6}{'labels':>8}{'equal':>7}{'redone':>8}")
    for r in rows:
        print(f"{r['name']:<36}{r['wall']:>8.1f}{args.targets / r['wall']:>10.1f}{base / r['wall']:>10.2f}"
              f"{r['span']:>8.1f}{args.targets / r['span']:>10.1f}{base_span / r['span']:>10.2f}{r['fit']:>7.1f}"
              f"{r['cpu']:>7.1f}{args.targets / r['cpu']:>8.1f}{r['load']:>6.1f}{r['labels']:>8}{r['equal']:>7}"
              f"{r['redone']:>8}")
    for r in rows[1:3]:
        print(f"  {r['name']}: spans of the {len(r['spans'])} run(s) {r['spans']} s; threads per shard "
              f"at the end {r['threads']}")
    one, two = rows[1], rows[2]
    print(f"\nbaseline: the in-process run (no shards), {base:.1f} s, {args.targets / base:.1f} targets/s.")
    print(f"on this machine ({os.cpu_count()} CPUs): 2 workers {base / two['wall']:.2f}× the in-process run from "
          f"queueing, {base_span / two['span']:.2f}× over the shards' span; 1 worker {base / one['wall']:.2f}×. "
          "Workers on one machine share the cores the in-process run already uses (its threads), so sharding "
          "here buys no speed; near 1× means it costs little.")
    print(f"workers scale {one['wall'] / two['wall']:.2f}× from 1 to 2 (from queueing; "
          f"{one['span'] / two['span']:.2f}× over the span): a gain over 1 worker (which runs the shards one "
          "after the other, each with its re-fit, on top of a worker's imports and polling), not over running "
          "without shards.")
    machines = math.floor(one["wall"] / base) + 1  # the fewest whose summed 1-worker rates pass the in-process rate
    print(f"where sharding buys speed: one worker per machine (or per GPU) adds that machine's cores; each ran at "
          f"{args.targets / one['wall']:.1f} targets/s alone here, so N such machines would give about N × that "
          f"(estimate, not measured: beyond the in-process rate from {machines} machines, the database and the "
          "shared media permitting). It also buys a run that survives its workers: "
          f"killed run {len(requeued)} shard re-queued, {rows[3]['labels']}/{args.targets} labels, "
          f"{rows[3]['redone']} redone; queueing (fit + verify + queue) took {one['queue']:.1f} s.")
    ceiling = {n: sorted(c["span"] for c in runs)[len(runs) // 2] for n, runs in ceilings.items()}
    ceiling_cpu = {n: sorted(c["cpu"] for c in runs)[len(runs) // 2] for n, runs in ceilings.items()}
    print(f"ceiling, the route alone (no FiftyOne): 1 process {ceiling[1]:.1f} s ({ceiling_cpu[1]:.1f} cpu s), "
          f"2 processes {ceiling[2]:.1f} s ({ceiling_cpu[2]:.1f} cpu s): {ceiling[1] / ceiling[2]:.2f}× "
          f"(median spans; all: 1 process {[round(c['span'], 1) for c in ceilings[1]]}, "
          f"2 processes {[round(c['span'], 1) for c in ceilings[2]]}): what two processes of one machine can "
          "share at best, whatever splits the work")
    fo.delete_dataset(dataset.name)
    shutil.rmtree(logs, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=400)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count, alternating 1 and 2 "
                        "workers (the median by span is shown)")
    parser.add_argument("--threads", type=int, help="threads per process (CONCEPTSEG_THREADS); default: each "
                        "shard takes the cores divided among the shards running here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compute", action="store_true", help=argparse.SUPPRESS)
    for name in ("--demo-file", "--paths-file"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--part", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compute:
        return compute(args)
    if args.child:
        return child(args)
    root = tempfile.mkdtemp(prefix="shards-bench-")
    mongod, env = _private_fiftyone(root)
    if args.threads:
        env.update(CONCEPTSEG_THREADS=str(args.threads))
    try:
        subprocess.run([sys.executable, __file__, "--child", "--targets", str(args.targets), "--shards",
                        str(args.shards), "--repeats", str(args.repeats)], env=env, check=True)
    finally:
        mongod.terminate()
        mongod.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
