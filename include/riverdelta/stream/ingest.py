"""The streaming ingest: Kafka -> bronze / silver / quarantine / gold, exactly once.

This module runs the query: the Kafka source (``source``), one ``foreachBatch``
per micro-batch (``batch.process_batch``, writing every layer through the
idempotent writes of ``delta_sink``), the gold refresher beside it, and the end
of a bounded replay. The job itself (mode, tables, checkpoint) is ``job``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from riverdelta.stream import batch
from riverdelta.stream.job import IngestJob, IngestMode
from riverdelta.stream.source import kafka_reader

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery


def await_gold(job: IngestJob, timeout: float = 600.0) -> None:
    """Block until gold reflects every batch this driver committed (replays, shutdown, tests)."""
    if job.state.gold is not None:
        job.state.gold.flush(timeout)


def gold_failure(job: IngestJob) -> str | None:
    """The gold refresher's (or its Kafka sink's) error as one line, None while it is fine.

    The ingest's next batch re-raises it too, but an idle stream has no next batch:
    the driver polls this so a sink that cannot reach Kafka stops the query.
    """
    gold = job.state.gold
    error = getattr(gold, "error", None)
    return None if error is None else f"gold refresh failed: {error}"


def stop_gold(job: IngestJob, timeout: float = 600.0) -> None:
    if job.state.gold is not None:
        job.state.gold.close(timeout)
        job.state.gold = None


def passed_until(job: IngestJob) -> bool:
    """True once the last committed batch ended at or beyond ``until`` on every partition.

    Read from the checkpoint (the source of truth health uses too), not from the
    progress events, whose offset format differs between Spark versions.
    """
    from riverdelta.ops.health import read_checkpoint

    if job.until is None:
        return False
    state = read_checkpoint(job.checkpoint)
    if state is None or state.last_committed_batch is None:
        return False
    return all(state.end_offsets.get(tp, -1) >= u for tp, u in job.until.items())


def start_query(
    spark: SparkSession,
    job: IngestJob,
    *,
    starting: str | None = None,
    max_offsets_per_trigger: int | None = None,
    trigger: str | None = None,
) -> StreamingQuery:
    reader = kafka_reader(
        spark, job, starting=starting, max_offsets_per_trigger=max_offsets_per_trigger
    )
    batch.gold_refresher(spark, job)
    writer = (
        reader.load()
        .writeStream.queryName(f"riverdelta-{job.spec.name}-{job.mode}")
        .option("checkpointLocation", job.checkpoint)
        # Looked up at call time: the benchmark's profiler wraps batch.process_batch.
        .foreachBatch(lambda df, batch_id: batch.process_batch(job, df, batch_id))
    )
    if job.mode == IngestMode.REPLAY:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=trigger or job.spec.trigger)
    return writer.start()
