"""The Kafka source of an ingest query: where it starts, what it subscribes to, readStream.

A new checkpoint over tables that already hold data starts after what they hold
(the tables are the ledger); a checkpoint that knows its place resumes there.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from riverdelta.config.registry import StreamSpec
from riverdelta.config.settings import settings
from riverdelta.ops.health import TP, flatten, nest
from riverdelta.storage import roots as storage
from riverdelta.stream.delta_sink import table_exists
from riverdelta.stream.job import IngestJob, IngestMode

if TYPE_CHECKING:
    from pyspark.sql.streaming import DataStreamReader

# The ingest's logger name for every module of the query: drivers' logs are read by it.
log = logging.getLogger("riverdelta.stream.ingest")


def kafka_starting_options(starting: str | None) -> dict[str, str]:
    """``earliest`` | ``latest`` | ISO timestamp | per-partition offsets JSON."""
    if starting in (None, "", "earliest"):
        return {"startingOffsets": "earliest"}
    if starting == "latest":
        return {"startingOffsets": "latest"}
    if starting.lstrip().startswith("{"):
        try:
            json.loads(starting)
        except ValueError as exc:
            raise ValueError(f"--from is not valid offsets JSON: {exc}") from exc
        return {"startingOffsets": starting}
    from datetime import datetime

    try:
        ts = datetime.fromisoformat(starting.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"--from {starting!r}: expected earliest, latest, an ISO timestamp or offsets JSON"
        ) from exc
    return {"startingTimestamp": str(int(ts.timestamp() * 1000))}


def subscription(spec: StreamSpec) -> dict[str, str]:
    """The Kafka source's subscribe options: named topics, or a pattern Spark re-lists."""
    if spec.topic_pattern is not None:
        # Spark lists the cluster's topics at every trigger: a matching topic created
        # later is read from its earliest offset (as a new partition is).
        return {"subscribePattern": spec.topic_pattern}
    return {"subscribe": ",".join(spec.topics)}


def held_offsets(spark: SparkSession, job: IngestJob) -> dict[TP, int]:
    """(topic, partition) -> next offset after what these tables' bronze already holds.

    The tables are the ledger (as kafka-delta-ingest's per-partition txn versions
    are): a writer on a new checkpoint must start after them, or it writes every
    held record a second time. One aggregation over two integer columns, at start.
    """
    if not table_exists(spark, job.tables["bronze"]):
        return {}
    rows = (
        spark.read.format("delta")
        .load(job.tables["bronze"])
        .groupBy("topic", "partition")
        .agg(F.max("offset").alias("hi"))
        .collect()
    )
    return {(r["topic"], int(r["partition"])): int(r["hi"]) + 1 for r in rows}


def _checkpoint_is_new(checkpoint: str) -> bool:
    fs, path = storage.filesystem(checkpoint)
    offsets = f"{path}/offsets"
    return not (fs.exists(offsets) and fs.ls(offsets, detail=False))


def resume_options(
    asked: dict[str, str], held: dict[TP, int], partitions: list[TP]
) -> dict[str, str]:
    """Kafka start options for a new checkpoint over tables that hold ``held``.

    ``asked`` is ``kafka_starting_options`` with a timestamp already resolved to
    offsets. ``earliest`` and per-partition offsets are moved up to the held
    positions; partitions the tables have never seen keep what was asked (or
    their earliest, -2). ``latest`` is after anything held.
    """
    if not held or asked.get("startingOffsets", "latest") == "latest":
        return asked
    wanted: dict[TP, int] = dict.fromkeys(partitions, -2)
    if asked["startingOffsets"] != "earliest":
        wanted.update(flatten(json.loads(asked["startingOffsets"])))
    start = {}
    for tp, o in sorted(wanted.items()):
        h = held.get(tp)
        # -2 (earliest) and -1 (latest) are markers, not positions: held wins over earliest.
        start[tp] = h if h is not None and (o == -2 or 0 <= o < h) else o
    return {"startingOffsets": json.dumps(nest(start))}


def _initial_offsets(spark: SparkSession, job: IngestJob, starting: str | None) -> dict[str, str]:
    """Where a query starts: as asked, but never before what its tables already hold."""
    start = kafka_starting_options(starting)
    if job.skip_present or not _checkpoint_is_new(job.checkpoint):
        return start  # a range skips what is present itself; a checkpoint knows its place
    held = held_offsets(spark, job)
    if not held:
        return start
    from riverdelta.ops.health import watermarks

    bootstrap = settings().kafka_bootstrap
    marks = watermarks(bootstrap, job.spec.source)
    if "startingTimestamp" in start:
        from riverdelta.ops.health import offsets_for_time

        at = int(start["startingTimestamp"]) / 1000
        found = offsets_for_time(bootstrap, at, {tp: hi for tp, (_, hi) in marks.items()})
        start = {"startingOffsets": json.dumps(nest(found))}
    resumed = resume_options(start, held, sorted(marks))
    log.info("new checkpoint over tables that hold data up to %s: starting at %s", held, resumed)
    return resumed


def kafka_reader(
    spark: SparkSession,
    job: IngestJob,
    *,
    starting: str | None,
    max_offsets_per_trigger: int | None,
) -> DataStreamReader:
    """The job's Kafka source, ready to ``load()``: the client's security, subscription, start."""
    from riverdelta.kafka import client as kafka_client

    start = _initial_offsets(spark, job, starting)
    reader = (
        spark.readStream.format("kafka")
        .options(**kafka_client.client_config().spark_options())
        .options(**subscription(job.spec))
        .options(**start)
    )
    # Bounded batches: a backlog is worked through in batches the health check's batch
    # age allows, never as one huge batch. Replays take the CLI's bound only.
    limit = max_offsets_per_trigger or (
        job.spec.max_offsets_per_trigger if job.mode == IngestMode.LIVE else None
    )
    if limit:
        reader = reader.option("maxOffsetsPerTrigger", str(limit))
    return reader
