"""What a run really did, next to what it was asked: batch sizes, fallbacks, prefix reuse.

Batching and prefix reuse change how targets go through the model, never the labels, and
both fall back by themselves: a batch that runs out of GPU memory is halved, a batch that
raises is retried one target at a time, rows that share no prompt prefix are encoded
whole. None of that may happen without a word: each route keeps an :class:`ExecutionLog`,
the run record stores :func:`report`'s dict (a sharded run sums its shards' with
:func:`combine`), and the CLI prints :func:`lines`.
"""

from __future__ import annotations


class ExecutionLog:
    """A route's fallbacks, in order: what was done instead, why, and for how many targets."""

    def __init__(self):
        self.fallbacks: list[dict] = []

    def fallback(self, what: str, reason: str, targets: int) -> None:
        self.fallbacks.append({"what": what, "reason": " ".join(str(reason).split())[:500], "targets": int(targets)})


def log_of(route) -> ExecutionLog:
    """The route's log, created on first use (routes need not call a base ``__init__``)."""
    log = getattr(route, "_execution_log", None)
    if log is None:
        log = ExecutionLog()
        route._execution_log = log
    return log


def report(route, batch_size: int) -> dict:
    """The run record's account of how ``route`` ran: batch size asked and used, fallbacks, prefix store.

    ``batch_size_used`` is the batch the route ended with: the asked size, less after an
    out-of-memory halving, 1 for a route that segments one target at a time. ``prefix`` is
    None for routes without a policy, else whether reuse was on and the store's hits
    (calls served from the cached prefix), misses (prefixes computed) and unshared calls
    by reason.
    """
    batches = getattr(route, "batch_size_used", None)
    used = batches(batch_size) if batches is not None else 1
    fallbacks = list(log_of(route).fallbacks)
    if batches is None and batch_size > 1:
        fallbacks.insert(0, {"what": "targets segmented one at a time",
                             "reason": f"the {route.name} route does not batch (batch size applies to the "
                                       "reasoning routes)", "targets": 0})
    stats = getattr(route, "prefix_stats", None)
    prefix = stats() if stats is not None else None
    return {"batch_size": batch_size, "batch_size_used": used, "fallbacks": fallbacks, "prefix": prefix}


def combine(reports: list[dict]) -> dict | None:
    """One account for a sharded run: the smallest batch used, every fallback (with its shard), summed counts."""
    reports = [r for r in reports if r]
    if not reports:
        return None
    prefixes = [r["prefix"] for r in reports if r.get("prefix") is not None]
    prefix = None
    if prefixes:
        unshared: dict[str, int] = {}
        for p in prefixes:
            for reason, calls in (p.get("unshared") or {}).items():
                unshared[reason] = unshared.get(reason, 0) + calls
        prefix = {"reuse": all(p.get("reuse", True) for p in prefixes), "hits": sum(p.get("hits", 0) for p in prefixes),
                  "misses": sum(p.get("misses", 0) for p in prefixes), "unshared": unshared}
    return {"batch_size": reports[0]["batch_size"], "batch_size_used": min(r["batch_size_used"] for r in reports),
            "fallbacks": [f for r in reports for f in r.get("fallbacks", [])], "prefix": prefix}


def lines(execution: dict | None) -> list[str]:
    """What the CLI prints about it: the batch size when it is not plain 1, each fallback, the prefix store."""
    if not execution:
        return []
    out = []
    asked, used = execution["batch_size"], execution["batch_size_used"]
    if asked != 1 or used != 1:
        out.append(f"batch size {used}" + (f" (asked {asked})" if used != asked else ""))
    for f in execution.get("fallbacks") or []:
        shard = f" [shard {f['shard'] + 1}]" if f.get("shard") is not None else ""
        out.append(f"fallback{shard}: {f['what']} because {f['reason']}")
    prefix = execution.get("prefix")
    if prefix is not None:
        if not prefix.get("reuse", True):
            out.append("prefix reuse: off (every call encoded its whole prompt)")
        else:
            unshared = prefix.get("unshared") or {}
            text = (f"prefix reuse: {prefix['misses']} prefix(es) encoded, {prefix['hits']} call(s) reused one"
                    if prefix["misses"] or prefix["hits"] or not unshared else "prefix reuse: none")
            if unshared:
                text += "; " + "; ".join(f"{calls} call(s) encoded everything because {reason}"
                                         for reason, calls in unshared.items())
            out.append(text)
    return out
