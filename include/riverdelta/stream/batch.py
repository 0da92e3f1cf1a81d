"""One micro-batch of the ingest: bronze, quarantine, silver and the batch's counts.

The silver de-duplication and the counts ignore rows this very batch wrote in an
earlier attempt, so a replayed batch computes the same numbers (every write is
idempotent, see ``delta_sink``).

A ``range`` backfill runs the same batch function into the live tables with
``skip_present``: records already in bronze (same topic, partition, offset) are not
written again, and those of them still quarantined that now pass the contract are
re-ingested and marked resolved in quarantine. ``until`` bounds a replay to an
offset range.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from riverdelta.config.registry import parse_duration
from riverdelta.ops.health import TP, nest
from riverdelta.stream import transforms as T
from riverdelta.stream.delta_sink import (
    COORDS,
    TXN_LOCK,
    mark_resolved,
    record_batch,
    retry_conflicts,
    table_exists,
    write_idempotent,
)
from riverdelta.stream.job import IngestJob, IngestMode

# The ingest's logger name for every module of the batch: drivers' logs are read by it.
log = logging.getLogger("riverdelta.stream.ingest")


def to_bronze(raw: DataFrame, batch_id: int, txn_app_id: str) -> DataFrame:
    return raw.select(
        "key",
        "value",
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.lit(batch_id).cast("long").alias("batch_id"),
        F.current_timestamp().alias("ingested_at"),
        F.lit(txn_app_id).alias("app_id"),  # which writer: a retried batch knows its own rows
    )


def _known_table(spark: SparkSession, job: IngestJob, layer: str) -> bool:
    """Whether the layer's table exists; asked of Delta once per driver, then remembered."""
    if layer not in job.state.tables_seen and table_exists(spark, job.tables[layer]):
        job.state.tables_seen.add(layer)
    return layer in job.state.tables_seen


def _previous_max_event_time(spark: SparkSession, job: IngestJob, batch_id: int):
    """This app's high-water mark over batches before ``batch_id``: read once per driver."""
    state = job.state
    if state.hwm_known_before == batch_id:
        return state.hwm
    if not table_exists(spark, job.batches_path):
        return None
    row = (
        spark.read.format("delta")
        .load(job.batches_path)
        .where((F.col("app_id") == job.txn_app_id) & (F.col("batch_id") < batch_id))
        .agg(F.max("max_event_time"))
        .first()
    )
    return row[0] if row else None


@dataclass(frozen=True)
class BatchStats:
    """Everything the batch decides from its validated records, from one Spark job."""

    records: int
    valid: int
    reasons: dict[str, int]
    max_event_time: datetime | None
    horizon: tuple[int, ...]  # watermark-sized event-time buckets of the valid records
    windows: dict[str, tuple[int, ...]]  # gold name -> window starts (epoch s) touched


def batch_stats(validated: DataFrame, job: IngestJob) -> BatchStats:
    from riverdelta.stream.gold import window_bucket, window_seconds

    spec = job.spec
    et = F.col(spec.event_time_column)
    wm = job.watermark_seconds
    rows = (
        validated.groupBy("_reason")
        .agg(
            F.count("*").alias("n"),
            F.max(et).alias("max_et"),
            F.collect_set(window_bucket(et, wm)).alias("_horizon"),
            *(
                F.collect_set(window_bucket(et, window_seconds(g))).alias(f"_g_{g.name}")
                for g in spec.gold
            ),
        )
        .collect()
    )
    valid = next((r for r in rows if r["_reason"] is None), None)
    reasons = {r["_reason"]: r["n"] for r in rows if r["_reason"] is not None}
    return BatchStats(
        records=sum(r["n"] for r in rows),
        valid=valid["n"] if valid else 0,
        reasons=reasons,
        max_event_time=valid["max_et"] if valid else None,
        horizon=tuple(sorted(valid["_horizon"])) if valid else (),
        windows={g.name: tuple(valid[f"_g_{g.name}"]) if valid else () for g in spec.gold},
    )


def _horizon_filter(column: str, buckets: tuple[int, ...], wm: int):
    """Event times within one watermark of a bucket: a late record adds its own range only."""
    from riverdelta.stream.gold import in_time_ranges

    ranges: list[list[int]] = []
    for b in buckets:
        lo, hi = (b - wm), (b + 2 * wm)  # bucket b covers [b, b + wm): +- one watermark
        if ranges and lo <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    return in_time_ranges(column, [(lo, hi) for lo, hi in ranges])


def new_silver_rows(
    spark: SparkSession,
    deduped: DataFrame,
    job: IngestJob,
    batch_id: int,
    horizon: tuple[int, ...],
) -> DataFrame:
    """Rows of this batch whose id is not yet in silver within a watermark of their time.

    A keyed lookup: the batch's ids are broadcast and matched against silver's id
    column within the batch's horizon (pruned by Delta's event-time statistics), so
    only the true duplicates come back; no shuffle of silver, and rows a backfill or
    an earlier checkpoint wrote are seen like any other.
    """
    spec = job.spec
    et, idc = spec.event_time_column, spec.id_column
    tagged = deduped.withColumn("_app_id", F.lit(job.txn_app_id)).withColumn(
        "_batch_id", F.lit(batch_id).cast("long")
    )
    if not horizon or not _known_table(spark, job, "silver"):
        return tagged
    wm = job.watermark_seconds
    seen = (
        spark.read.format("delta")
        .load(job.tables["silver"])
        .where(_horizon_filter(et, horizon, wm))
        # Rows this batch wrote in an earlier, crashed attempt are not duplicates.
        .where(~((F.col("_app_id") == job.txn_app_id) & (F.col("_batch_id") == batch_id)))
        .select(idc)
        .join(F.broadcast(deduped.select(idc)), on=idc, how="left_semi")
    )
    return tagged.join(F.broadcast(seen), on=idc, how="left_anti")


def gold_refresher(spark: SparkSession, job: IngestJob):
    """The job's gold refresher, started once per driver (``None`` without gold)."""
    from riverdelta.stream.gold import GoldRefresher

    if not job.spec.gold:
        return None
    if job.state.gold is None:
        from riverdelta.stream.kafka_sink import sinks_for

        interval = parse_duration(job.spec.gold_trigger).total_seconds()
        # Only the live driver owns a sink's transactional id: a replay (rebuild,
        # backfill) must not fence it; its gold changes reach Kafka when the live
        # refresher next rewrites those windows.
        sinks = (
            sinks_for(job.spec, job.tables.paths, job.txn_app_id)
            if job.mode == IngestMode.LIVE
            else {}
        )
        refresher = GoldRefresher(
            spark,
            job.spec,
            job.tables.paths,
            job.txn_app_id,
            interval,
            retry_conflicts,
            TXN_LOCK,
            sinks=sinks,
        )
        refresher.start()
        job.state.gold = refresher
    return job.state.gold


# --------------------------------------------------------------------------- range backfills


def _on(tp: TP):
    return (F.col("topic") == tp[0]) & (F.col("partition") == tp[1])


def _within(bounds: dict[TP, tuple[int, int]]):
    """Rows whose offset falls in their topic-partition's [lo, hi] bounds."""
    cond = None
    for tp, (lo, hi) in bounds.items():
        c = _on(tp) & F.col("offset").between(lo, hi)
        cond = c if cond is None else cond | c
    return cond if cond is not None else F.lit(False)


def _before(until: dict[TP, int]):
    """Rows before their topic-partition's end; a partition the range does not name has none."""
    cond = None
    for tp, end in until.items():
        c = _on(tp) & (F.col("offset") < end)
        cond = c if cond is None else cond | c
    return cond if cond is not None else F.lit(False)


def split_present(
    spark: SparkSession,
    raw: DataFrame,
    bounds: dict[TP, tuple[int, int]],
    job: IngestJob,
    batch_id: int,
) -> tuple[DataFrame, DataFrame]:
    """(records not yet in bronze, records already there), by (topic, partition, offset)."""
    if not table_exists(spark, job.tables["bronze"]):
        return raw, raw.limit(0)
    existing = (
        spark.read.format("delta")
        .load(job.tables["bronze"])
        .where(_within(bounds))
        # This very batch's rows from an earlier, crashed attempt are not "present".
        .where(~(F.col("app_id").eqNullSafe(job.txn_app_id) & (F.col("batch_id") == batch_id)))
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
    bounds: dict[TP, tuple[int, int]],
    job: IngestJob,
    batch_id: int,
) -> DataFrame:
    """Silver rows of quarantined records that pass the contract now, marked resolved.

    Resolved rows stay in quarantine (``resolved``, ``resolved_at``, ``resolved_by``)
    for the audit trail. A retried batch finds its own resolutions by ``resolved_by``.
    """
    path = job.tables["quarantine"]
    if not table_exists(spark, path):
        return T.to_silver(T.split(T.validate(present.limit(0), job.spec))[0], job.spec)
    token = f"{job.txn_app_id}:{batch_id}"
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

    mark_resolved(spark, path, fixed, token, job, batch_id)
    return fixed


# --------------------------------------------------------------------------- the batch


def process_batch(job: IngestJob, raw_df: DataFrame, batch_id: int) -> dict:
    """One micro-batch: bronze, quarantine (only with poison), silver, the batch's counts.

    Three Delta commits and 18 Spark jobs for a clean batch (measured), whatever the
    tables hold: one action for the offsets, one for every count and bound
    (``batch_stats``), one write per table (each Spark write with a txn id adds the
    jobs Delta needs to read its snapshot's txns); silver's counts come from an
    ``Observation`` on its own write. Gold windows are handed to the refresher.
    """
    spark = raw_df.sparkSession
    gold = gold_refresher(spark, job)
    if gold is not None:
        gold.raise_if_failed()
    if job.until is not None:
        raw_df = raw_df.where(_before(job.until))  # a range backfill stops at its end offsets
    raw = raw_df.persist()
    held: list[DataFrame] = []  # what the batch persisted besides raw, released at its end
    try:
        bounds = _offset_bounds(raw)
        if not bounds:
            return {"batch_id": batch_id, "records_in": 0}
        intake = _take_in(spark, job, raw, bounds, batch_id, held)
        validated = T.validate(intake.fresh, job.spec).persist()
        held.append(validated)
        stats = batch_stats(validated, job)
        valid = _write_bronze_and_quarantine(spark, job, intake.fresh, validated, stats, batch_id)
        counts, windows = _write_silver_counted(spark, job, valid, stats, intake, bounds, batch_id)
        record_batch(job, counts)
        job.state.hwm, job.state.hwm_known_before = counts["max_event_time"], batch_id + 1
        job.state.last_batch = batch_id
        if gold is not None and counts["silver"]:
            gold.announce(batch_id, windows)
        log.info("batch %s: %s", batch_id, counts)
        return counts
    finally:
        raw.unpersist()
        for df in held:
            df.unpersist()


def _offset_bounds(raw: DataFrame) -> dict[TP, tuple[int, int]]:
    """(topic, partition) -> (first, last) offset of the batch: one Spark job."""
    return {
        (r["topic"], r["partition"]): (r["lo"], r["hi"])
        for r in raw.groupBy("topic", "partition")
        .agg(F.min("offset").alias("lo"), F.max("offset").alias("hi"))
        .collect()
    }


@dataclass
class _Intake:
    """The batch's records to write and, for a range backfill, what was there already."""

    fresh: DataFrame  # records not yet in bronze (all of them outside range backfills)
    n_present: int = 0  # records already in bronze
    fixed: DataFrame | None = None  # silver rows of quarantined records that pass now
    n_resolved: int = 0


def _take_in(
    spark: SparkSession,
    job: IngestJob,
    raw: DataFrame,
    bounds: dict[TP, tuple[int, int]],
    batch_id: int,
    held: list[DataFrame],
) -> _Intake:
    """Split off the records bronze holds (``skip_present``); frames it persists go in ``held``."""
    if not job.skip_present:
        return _Intake(fresh=raw)
    fresh, present = split_present(spark, raw, bounds, job, batch_id)
    present = present.persist()
    held.append(present)
    intake = _Intake(fresh=fresh, n_present=present.count())
    if intake.n_present:
        intake.fixed = resolve_quarantined(spark, present, bounds, job, batch_id)
        held.append(intake.fixed)
        intake.n_resolved = intake.fixed.count()
    intake.fresh = fresh.persist()
    held.append(intake.fresh)
    return intake


def _write_bronze_and_quarantine(
    spark: SparkSession,
    job: IngestJob,
    fresh: DataFrame,
    validated: DataFrame,
    stats: BatchStats,
    batch_id: int,
) -> DataFrame:
    """Every record to bronze, the invalid ones to quarantine; the valid ones, for silver."""
    write_idempotent(
        to_bronze(fresh, batch_id, job.txn_app_id), job.tables["bronze"], job, batch_id
    )
    valid, invalid = T.split(validated)
    # No quarantine commit for a batch without poison, but the table exists from a
    # driver's first batch on: readers and the quality gate expect every layer.
    if stats.reasons or not _known_table(spark, job, "quarantine"):
        quarantine = T.to_quarantine(invalid).withColumn("batch_id", F.lit(batch_id).cast("long"))
        write_idempotent(quarantine, job.tables["quarantine"], job, batch_id)
    return valid


def _silver_input(
    job: IngestJob, valid: DataFrame, stats: BatchStats, intake: _Intake
) -> tuple[DataFrame, BatchStats]:
    """Silver's input and its bounds: the valid records, plus the resolved ones of a range."""
    silver_in = T.to_silver(valid, job.spec)
    if intake.fixed is None or not intake.n_resolved:
        return silver_in, stats
    silver_in = silver_in.unionByName(intake.fixed)
    extra = batch_stats(intake.fixed.withColumn("_reason", F.lit(None).cast("string")), job)
    times = (stats.max_event_time, extra.max_event_time)
    return silver_in, dataclasses.replace(
        stats,
        horizon=tuple(sorted({*stats.horizon, *extra.horizon})),
        windows={k: tuple({*v, *extra.windows[k]}) for k, v in stats.windows.items()},
        max_event_time=max((t for t in times if t), default=None),
    )


def _write_silver_counted(
    spark: SparkSession,
    job: IngestJob,
    valid: DataFrame,
    stats: BatchStats,
    intake: _Intake,
    bounds: dict[TP, tuple[int, int]],
    batch_id: int,
) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """Write silver's new rows; the batch's counts and the gold windows it touched."""
    silver_in, touched = _silver_input(job, valid, stats, intake)
    deduped = T.dedupe_batch(silver_in, job.spec)
    new_rows = new_silver_rows(spark, deduped, job, batch_id, touched.horizon)
    # The event-time high-water mark includes this batch (its valid records), so
    # whether a record counts as late does not depend on how the topic was cut
    # into batches. The driver carries it; the table is read once per driver.
    prev_max = _previous_max_event_time(spark, job, batch_id)
    hwm = max((t for t in (prev_max, touched.max_event_time) if t is not None), default=None)
    observed = _write_silver(spark, new_rows, _silver_measures(job, hwm), job, batch_id)
    counts = _batch_counts(job, batch_id, stats, intake, observed, hwm, bounds)
    return counts, dict(touched.windows)


def _silver_measures(job: IngestJob, hwm: datetime | None) -> list:
    """Silver rows, schema-drifted rows and late rows (older than hwm - watermark)."""
    et = job.spec.event_time_column
    return [
        F.count("*").alias("silver"),
        F.sum(F.when(F.col("_extra").isNotNull(), 1).otherwise(0)).alias("drift"),
        (
            F.sum(F.when(F.col(et) < F.lit(hwm - job.watermark), 1).otherwise(0))
            if hwm is not None
            else F.lit(0)
        ).alias("late"),
    ]


def _batch_counts(
    job: IngestJob,
    batch_id: int,
    stats: BatchStats,
    intake: _Intake,
    observed: dict,
    hwm: datetime | None,
    bounds: dict[TP, tuple[int, int]],
) -> dict:
    """The batch's row of ``_ops/ingest_batches`` (and what ``process_batch`` returns)."""
    silver = int(observed["silver"] or 0)
    return {
        "stream": job.spec.name,
        "mode": str(job.mode),
        "app_id": job.txn_app_id,
        "batch_id": batch_id,
        "records_in": stats.records,
        "bronze": stats.records,
        "silver": silver,
        "duplicates": stats.valid + intake.n_resolved - silver,
        "quarantined": sum(stats.reasons.values()),
        "quarantine_by_reason": stats.reasons,
        "late": int(observed["late"] or 0),
        "schema_drift": int(observed["drift"] or 0),
        "max_event_time": hwm,
        # {topic: {partition: [first, last]}}: the batch's inclusive offset ranges.
        "offsets": json.dumps(
            nest({tp: [lo, hi] for tp, (lo, hi) in bounds.items()}), sort_keys=True
        ),
        "already_present": intake.n_present,
        "resolved": intake.n_resolved,
    }


def _write_silver(
    spark: SparkSession, new_rows: DataFrame, measures: list, job: IngestJob, batch_id: int
) -> dict:
    """Append the new silver rows and return ``measures`` over them.

    The measures ride on the write as an ``Observation`` (no second pass) when the
    batch follows one this driver committed, so it cannot be in the table yet. Any
    other batch (a driver's first, a re-run) may be one an earlier attempt already
    committed: Delta then skips the write and an observation would never fire, so
    it is counted by a plain aggregation first.
    """
    from pyspark.sql import Observation

    path = job.tables["silver"]
    last = job.state.last_batch
    if last is None or batch_id <= last:
        rows = new_rows.persist()
        try:
            found = rows.agg(*measures).first().asDict()
            write_idempotent(rows, path, job, batch_id)
        finally:
            rows.unpersist()
        return found
    observation = Observation(f"silver-{batch_id}")
    write_idempotent(new_rows.observe(observation, *measures), path, job, batch_id)
    return observation.get
