"""A run spread over FiftyOne delegated operations: ``queue`` (split and queue the targets),
``worker`` (a shard on a `fiftyone delegated launch` worker), ``store`` (the shards' records),
``lock`` (the run holds its field while a shard may write) and ``watch`` (find dead workers and
re-queue their shards)."""
