"""Operator: one shard of a run spread over workers (queued by `segment --shards N`, run by `fiftyone delegated launch`)."""

import fiftyone.operators as foo

from ._forms import progress_callback


class SegmentShard(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="segment_shard",
            label="Segment by demonstration: one shard",
            description="Segments one shard of a sharded run; queued by the run, executed by any delegated worker",
            unlisted=True,  # never started from the App's list: its params come from the run that queued it
            allow_immediate_execution=False,
            allow_delegated_execution=True,
        )

    def execute(self, ctx):
        from conceptseg.runs.shards.worker import run_shard

        op_id = ctx.request_params.get("run_doc")
        return run_shard(ctx.dataset, dict(ctx.params), op_id=str(op_id) if op_id else None,
                         progress=progress_callback(ctx))
