"""The streaming ingest: Kafka -> bronze / silver / quarantine / gold, exactly once.

One ``foreachBatch`` per micro-batch writes every layer. Each write carries the
Delta idempotency pair (``txnAppId`` = the checkpoint's id, ``txnVersion`` = the
batch id), so a batch replayed after a crash is skipped table by table; the
silver de-duplication and the counts ignore rows this very batch wrote in an
earlier attempt, so a replayed batch computes the same numbers.

A ``range`` backfill runs the same batch function into the live tables with
``skip_present``: records already in bronze (same topic, partition, offset) are not
written again, and those of them still quarantined that now pass the contract are
re-ingested and marked resolved in quarantine. ``until`` bounds a replay to an
offset range. Concurrent Delta commits (the live stream and a backfill writing the
same tables) are retried: every write is idempotent, so a retry cannot double it.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from riverdelta import storage
from riverdelta import transforms as T
from riverdelta.lake import TableSet, checkpoint_path, live_checkpoint, ops_path
from riverdelta.registry import StreamSpec, parse_duration
from riverdelta.settings import settings

if TYPE_CHECKING:
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("riverdelta.ingest")

BATCHES_TABLE = "ingest_batches"
MARKER = "_riverdelta.json"


R = TypeVar("R")


class CheckpointMismatchError(ValueError):
    pass


@dataclass(frozen=True)
class IngestJob:
    spec: StreamSpec
    mode: str  # live | replay
    tables: TableSet
    checkpoint: str
    app_id: str
    batches_path: str
    until: dict[int, int] | None = None  # exclusive end offset per partition (range backfills)
    skip_present: bool = False  # range backfill into live tables

    @property
    def watermark(self) -> timedelta:
        return parse_duration(self.spec.watermark)


# --------------------------------------------------------------------------- checkpoint


def checkpoint_marker(checkpoint: str) -> dict | None:
    """The checkpoint's Riverdelta marker (stream, topic, mode, app id), None if unclaimed."""
    fs, path = storage.filesystem(checkpoint)
    marker = f"{path}/{MARKER}"
    if not fs.exists(marker):
        return None
    return json.loads(fs.cat_file(marker))


def claim_checkpoint(checkpoint: str, spec: StreamSpec, mode: str) -> str:
    """Return the checkpoint's app id, creating its marker; refuse another stream's checkpoint.

    The app id is new for every new checkpoint: batch ids restart at 0 with a new
    checkpoint, and reusing an old txnAppId would make Delta skip them as done. The
    marker is one object written once, so this works on object stores as on disks.
    """
    data = checkpoint_marker(checkpoint)
    if data is not None:
        if data.get("stream") != spec.name or data.get("topic") != spec.topic:
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint} belongs to stream {data.get('stream')!r} (topic "
                f"{data.get('topic')!r}), not to {spec.name!r} (topic {spec.topic!r}). "
                "Point --checkpoint at this stream's own checkpoint."
            )
        return data["app_id"]
    fs, path = storage.filesystem(checkpoint)
    if fs.exists(path) and fs.ls(path, detail=False):
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint} exists but was not made by Riverdelta (no {MARKER}); "
            "refusing to guess which stream it belongs to."
        )
    fs.makedirs(path, exist_ok=True)
    app_id = f"riverdelta-{spec.name}-{mode}-{uuid.uuid4().hex[:12]}"
    marker = {"stream": spec.name, "topic": spec.topic, "mode": mode, "app_id": app_id}
    fs.pipe_file(f"{path}/{MARKER}", json.dumps(marker).encode())
    return app_id


# --------------------------------------------------------------------------- writes


def _table_exists(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def _is_conflict(exc: Exception) -> bool:
    from delta.exceptions import DeltaConcurrentModificationException

    if isinstance(exc, DeltaConcurrentModificationException):
        return True
    # Some paths surface the JVM exception un-converted: match its class name.
    return (
        "io.delta.exceptions.Concurrent" in str(exc)[:2000]
        or "MetadataChangedException" in str(exc)[:2000]
    )


def retry_conflicts(fn: Callable[[], R], what: str, attempts: int = 8) -> R:
    """Run ``fn`` again after a concurrent-commit conflict, with jittered back-off."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not _is_conflict(exc):
                raise
            wait = min(20.0, 0.5 * 2**attempt) * (0.5 + random.random())
            log.warning(
                "%s: concurrent Delta commit (%s); retry %d in %.1fs",
                what,
                type(exc).__name__,
                attempt + 1,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


class _txn_guard:
    """Session confs that make a DML command (MERGE) idempotent like ``txnAppId`` writes."""

    def __init__(self, spark: SparkSession, app_id: str, version: int) -> None:
        self.spark, self.app_id, self.version = spark, app_id, version

    def __enter__(self) -> None:
        self.spark.conf.set("spark.databricks.delta.write.txnAppId", self.app_id)
        self.spark.conf.set("spark.databricks.delta.write.txnVersion", str(self.version))

    def __exit__(self, *exc: object) -> None:
        self.spark.conf.unset("spark.databricks.delta.write.txnAppId")
        self.spark.conf.unset("spark.databricks.delta.write.txnVersion")


def write_idempotent(
    df: DataFrame, path: str, job: IngestJob, batch_id: int, app_id: str | None = None
) -> None:
    def write() -> None:
        (
            df.write.format("delta")
            .mode("append")
            .option("txnAppId", app_id or job.app_id)
            .option("txnVersion", batch_id)
            .option("mergeSchema", "true")
            .save(path)
        )

    retry_conflicts(write, f"append to {path}")


def merge_idempotent(
    spark: SparkSession,
    updates: DataFrame,
    path: str,
    keys: list[str],
    job: IngestJob,
    batch_id: int,
) -> None:
    """Upsert ``updates`` on ``keys``, guarded by the txn session confs (no retry here)."""
    from delta.tables import DeltaTable

    if not _table_exists(spark, path):
        write_idempotent(updates, path, job, batch_id)
        return
    with _txn_guard(spark, job.app_id, batch_id):
        cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(updates.alias("s"), cond)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )


# --------------------------------------------------------------------------- the batch


def to_bronze(raw: DataFrame, batch_id: int, app_id: str) -> DataFrame:
    return raw.select(
        "key",
        "value",
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.lit(batch_id).cast("long").alias("batch_id"),
        F.current_timestamp().alias("ingested_at"),
        F.lit(app_id).alias("app_id"),  # which writer: a retried batch knows its own rows
    )


def _previous_max_event_time(spark: SparkSession, job: IngestJob, batch_id: int):
    if not _table_exists(spark, job.batches_path):
        return None
    row = (
        spark.read.format("delta")
        .load(job.batches_path)
        .where((F.col("app_id") == job.app_id) & (F.col("batch_id") < batch_id))
        .agg(F.max("max_event_time"))
        .first()
    )
    return row[0] if row else None


def new_silver_rows(
    spark: SparkSession, deduped: DataFrame, job: IngestJob, batch_id: int
) -> DataFrame:
    """Rows of this batch whose id is not yet in silver within the watermark horizon."""
    spec = job.spec
    et, idc = spec.event_time_column, spec.id_column
    tagged = deduped.withColumn("_app_id", F.lit(job.app_id)).withColumn(
        "_batch_id", F.lit(batch_id).cast("long")
    )
    if not _table_exists(spark, job.tables["silver"]):
        return tagged
    lo, hi = deduped.agg(F.min(et), F.max(et)).first()
    if lo is None:
        return tagged
    wm = job.watermark
    existing = (
        spark.read.format("delta")
        .load(job.tables["silver"])
        .where(F.col(et).between(lo - wm, hi + wm))
        # Rows this batch wrote in an earlier, crashed attempt are not duplicates.
        .where(~((F.col("_app_id") == job.app_id) & (F.col("_batch_id") == batch_id)))
        .select(idc)
    )
    return tagged.join(existing, on=idc, how="left_anti")


def refresh_gold(
    spark: SparkSession, new_rows: DataFrame, bounds: tuple, job: IngestJob, batch_id: int
) -> None:
    """Recompute, from silver, every gold window this batch touched, and upsert it.

    Recomputing from silver keeps gold exact (distinct counts included) and makes
    late records land in their window instead of being dropped. ``bounds`` is the
    (min, max) event time of ``new_rows``.
    """
    spec = job.spec
    et = spec.event_time_column
    if bounds[0] is None:
        return
    for gold in spec.gold:
        size = parse_duration(gold.window)
        keys = ["window_start", *gold.group_by]
        touched = T.aggregate_gold(new_rows, spec, gold).select(*keys)

        def upsert(gold=gold, size=size, keys=keys, touched=touched) -> None:
            # Read silver afresh on every attempt: after a conflict the other writer's
            # rows must be in the recomputed windows.
            silver = spark.read.format("delta").load(job.tables["silver"])
            window = silver.where(F.col(et).between(bounds[0] - size, bounds[1] + size))
            updates = (
                T.aggregate_gold(window, spec, gold)
                .join(touched, on=keys, how="inner")
                .withColumn("updated_at", F.current_timestamp())
            )
            merge_idempotent(spark, updates, job.tables[f"gold_{gold.name}"], keys, job, batch_id)

        retry_conflicts(upsert, f"gold {gold.name} batch {batch_id}")


def _within(bounds: dict[int, tuple[int, int]]):
    """Rows whose (partition, offset) fall in the per-partition [lo, hi] bounds."""
    cond = None
    for p, (lo, hi) in bounds.items():
        c = (F.col("partition") == p) & F.col("offset").between(lo, hi)
        cond = c if cond is None else cond | c
    return cond if cond is not None else F.lit(False)


def _before(until: dict[int, int]):
    cond = None
    for p, end in until.items():
        c = (F.col("partition") == p) & (F.col("offset") < end)
        cond = c if cond is None else cond | c
    return cond if cond is not None else F.lit(False)


COORDS = ["topic", "partition", "offset"]


def split_present(
    spark: SparkSession,
    raw: DataFrame,
    bounds: dict[int, tuple[int, int]],
    job: IngestJob,
    batch_id: int,
) -> tuple[DataFrame, DataFrame]:
    """(records not yet in bronze, records already there), by (topic, partition, offset)."""
    if not _table_exists(spark, job.tables["bronze"]):
        return raw, raw.limit(0)
    existing = (
        spark.read.format("delta")
        .load(job.tables["bronze"])
        .where(_within(bounds))
        # This very batch's rows from an earlier, crashed attempt are not "present".
        .where(~(F.col("app_id").eqNullSafe(job.app_id) & (F.col("batch_id") == batch_id)))
        .select(*COORDS)
        .distinct()
    )
    return (
        raw.join(existing, on=COORDS, how="left_anti"),
        raw.join(existing, on=COORDS, how="left_semi"),
    )


def resolve_quarantined(
    spark: SparkSession,
    present: DataFrame,
    bounds: dict[int, tuple[int, int]],
    job: IngestJob,
    batch_id: int,
) -> DataFrame:
    """Silver rows of quarantined records that pass the contract now, marked resolved.

    Resolved rows stay in quarantine (``resolved``, ``resolved_at``, ``resolved_by``)
    for the audit trail. A retried batch finds its own resolutions by ``resolved_by``.
    """
    from delta.tables import DeltaTable

    path = job.tables["quarantine"]
    if not _table_exists(spark, path):
        return T.to_silver(T.split(T.validate(present.limit(0), job.spec))[0], job.spec)
    token = f"{job.app_id}:{batch_id}"
    quarantined = (
        spark.read.format("delta")
        .load(path)
        .where(_within(bounds))
        .where(~F.coalesce(F.col("resolved"), F.lit(False)) | (F.col("resolved_by") == token))
        .select(*COORDS)
        .distinct()
    )
    candidates = present.join(quarantined, on=COORDS, how="left_semi")
    fixed = T.to_silver(T.split(T.validate(candidates, job.spec))[0], job.spec).persist()
    if fixed.isEmpty():
        return fixed

    def mark() -> None:
        # Its own txn app id: the quarantine append of this batch already used (app_id, batch_id).
        with _txn_guard(spark, f"{job.app_id}-resolve", batch_id):
            (
                DeltaTable.forPath(spark, path)
                .alias("t")
                .merge(
                    fixed.select(*COORDS).alias("s"),
                    " AND ".join(f"t.`{c}` = s.`{c}`" for c in COORDS),
                )
                .whenMatchedUpdate(
                    condition="NOT coalesce(t.resolved, false)",
                    set={
                        "resolved": F.lit(True),
                        "resolved_at": F.current_timestamp(),
                        "resolved_by": F.lit(token),
                    },
                )
                .execute()
            )

    retry_conflicts(mark, f"resolve quarantine batch {batch_id}")
    return fixed


def process_batch(job: IngestJob, raw_df: DataFrame, batch_id: int) -> dict:
    spark = raw_df.sparkSession
    spec = job.spec
    if job.until is not None:
        raw_df = raw_df.where(_before(job.until))  # a range backfill stops at its end offsets
    raw = raw_df.persist()
    present = fixed = fresh = None
    try:
        bounds = {
            r["partition"]: (r["lo"], r["hi"])
            for r in raw.groupBy("partition")
            .agg(F.min("offset").alias("lo"), F.max("offset").alias("hi"))
            .collect()
        }
        if not bounds:
            return {"batch_id": batch_id, "records_in": 0}
        n_present = n_resolved = 0
        fresh = raw
        if job.skip_present:
            fresh, present = split_present(spark, raw, bounds, job, batch_id)
            present = present.persist()
            n_present = present.count()
            if n_present:
                fixed = resolve_quarantined(spark, present, bounds, job, batch_id)
                n_resolved = fixed.count()
            fresh = fresh.persist()
        n_in = fresh.count() if job.skip_present else raw.count()
        write_idempotent(
            to_bronze(fresh, batch_id, job.app_id), job.tables["bronze"], job, batch_id
        )

        validated = T.validate(fresh, spec).persist()
        valid, invalid = T.split(validated)
        quarantine = T.to_quarantine(invalid).withColumn("batch_id", F.lit(batch_id).cast("long"))
        write_idempotent(quarantine, job.tables["quarantine"], job, batch_id)

        silver_in = T.to_silver(valid, spec)
        if fixed is not None:
            silver_in = silver_in.unionByName(fixed)
        n_valid = silver_in.count()
        new_rows = new_silver_rows(spark, T.dedupe_batch(silver_in, spec), job, batch_id).persist()
        et = spec.event_time_column
        # One job for the count and the event-time bounds that gold and lateness both need.
        n_new, batch_min, batch_max = new_rows.agg(F.count("*"), F.min(et), F.max(et)).first()
        write_idempotent(new_rows, job.tables["silver"], job, batch_id)
        refresh_gold(spark, new_rows, (batch_min, batch_max), job, batch_id)

        # The event-time high-water mark includes this batch, so whether a record
        # counts as late does not depend on how the topic was cut into batches.
        prev_max = _previous_max_event_time(spark, job, batch_id)
        hwm = max((t for t in (prev_max, batch_max) if t is not None), default=None)
        stats = new_rows.agg(
            F.sum(F.when(F.col("_extra").isNotNull(), 1).otherwise(0)).alias("drift"),
            (
                F.sum(F.when(F.col(et) < F.lit(hwm - job.watermark), 1).otherwise(0))
                if hwm is not None
                else F.lit(0)
            ).alias("late"),
        ).first()
        reasons = {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}
        offsets = {str(p): [lo, hi] for p, (lo, hi) in bounds.items()}
        counts = {
            "stream": spec.name,
            "mode": job.mode,
            "app_id": job.app_id,
            "batch_id": batch_id,
            "records_in": n_in,
            "bronze": n_in,
            "silver": n_new,
            "duplicates": n_valid - n_new,
            "quarantined": sum(reasons.values()),
            "quarantine_by_reason": reasons,
            "late": int(stats["late"] or 0),
            "schema_drift": int(stats["drift"] or 0),
            "max_event_time": hwm,
            "offsets": json.dumps(offsets, sort_keys=True),
            "already_present": n_present,
            "resolved": n_resolved,
        }
        write_idempotent(batch_counts_df(spark, counts), job.batches_path, job, batch_id)
        validated.unpersist()
        new_rows.unpersist()
        log.info("batch %s: %s", batch_id, counts)
        return counts
    finally:
        raw.unpersist()
        for df in (present, fixed, fresh if job.skip_present else None):
            if df is not None:
                df.unpersist()


def batch_counts_df(spark: SparkSession, counts: dict) -> DataFrame:
    schema = (
        "stream string, mode string, app_id string, batch_id long, records_in long, bronze long, "
        "silver long, duplicates long, quarantined long, quarantine_by_reason map<string,long>, "
        "late long, schema_drift long, max_event_time timestamp, offsets string, "
        "already_present long, resolved long"
    )
    cols = [c.split()[0] for c in schema.split(", ")]
    defaults = {"already_present": 0, "resolved": 0}  # only range backfills set them
    return spark.createDataFrame(
        [tuple(counts.get(c, defaults.get(c)) for c in cols)], schema
    ).withColumn("committed_at", F.current_timestamp())


# --------------------------------------------------------------------------- the query


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


def make_job(
    spec: StreamSpec,
    mode: str,
    *,
    checkpoint: str | None = None,
    tables_root: str | None = None,
    ops_root: str | None = None,
    until: dict[int, int] | None = None,
    skip_present: bool = False,
) -> IngestJob:
    if mode not in ("live", "replay"):
        raise ValueError(f"mode {mode!r}: expected live or replay")
    if (until is not None or skip_present) and mode != "replay":
        raise ValueError("--until and --skip-present belong to replays (backfills), not live mode")
    if checkpoint is None:
        checkpoint = (
            live_checkpoint(spec.name) if mode == "live" else checkpoint_path(spec.name, mode)
        )
    cp = checkpoint
    app_id = claim_checkpoint(cp, spec, mode)
    return IngestJob(
        spec=spec,
        mode=mode,
        tables=TableSet.for_stream(spec, tables_root),
        checkpoint=cp,
        app_id=app_id,
        batches_path=ops_path(BATCHES_TABLE, ops_root),
        until=until,
        skip_present=skip_present,
    )


def passed_until(job: IngestJob) -> bool:
    """True once the last committed batch ended at or beyond ``until`` on every partition.

    Read from the checkpoint (the source of truth health uses too), not from the
    progress events, whose offset format differs between Spark versions.
    """
    from riverdelta.health import read_checkpoint

    if job.until is None:
        return False
    state = read_checkpoint(job.checkpoint, job.spec.topic)
    if state is None or state.last_committed_batch is None:
        return False
    return all(state.end_offsets.get(p, -1) >= u for p, u in job.until.items())


def start_query(
    spark: SparkSession,
    job: IngestJob,
    *,
    starting: str | None = None,
    max_offsets_per_trigger: int | None = None,
    trigger: str | None = None,
) -> StreamingQuery:
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings().kafka_bootstrap)
        .option("subscribe", job.spec.topic)
        .options(**kafka_starting_options(starting))
    )
    if max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(max_offsets_per_trigger))
    writer = (
        reader.load()
        .writeStream.queryName(f"riverdelta-{job.spec.name}-{job.mode}")
        .option("checkpointLocation", job.checkpoint)
        .foreachBatch(lambda df, batch_id: process_batch(job, df, batch_id))
    )
    if job.mode == "replay":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=trigger or job.spec.trigger)
    return writer.start()
