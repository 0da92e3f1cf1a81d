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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from riverdelta.config.registry import StreamSpec, TopicSource, parse_duration
from riverdelta.config.settings import settings
from riverdelta.errors import RiverdeltaError
from riverdelta.ops.health import TP, flatten, nest
from riverdelta.storage import roots as storage
from riverdelta.storage.lake import TableSet, checkpoint_path, live_checkpoint, ops_path
from riverdelta.stream import transforms as T

if TYPE_CHECKING:
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("riverdelta.stream.ingest")

BATCHES_TABLE = "ingest_batches"
MARKER = "_riverdelta.json"


R = TypeVar("R")

# Delta's txn session confs (the MERGEs' idempotency) are session-wide: the gold
# thread's writes and a MERGE of the ingest thread must not overlap.
_TXN_LOCK = threading.Lock()


@dataclass
class DriverState:
    """What a driver carries from batch to batch instead of reading it back from tables."""

    hwm: datetime | None = None  # event-time high-water mark of the batches before
    hwm_known_before: int | None = None  # hwm covers this app's batches < this id
    last_batch: int | None = None  # the newest batch this driver committed
    tables_seen: set[str] = field(default_factory=set)  # layers known to exist
    gold: object | None = None  # gold.GoldRefresher, started with the query


class CheckpointMismatchError(RiverdeltaError, ValueError):
    pass


@dataclass(frozen=True)
class IngestJob:
    spec: StreamSpec
    mode: str  # live | replay
    tables: TableSet
    checkpoint: str
    app_id: str
    batches_path: str
    until: dict[TP, int] | None = None  # exclusive end offset per topic-partition (ranges)
    skip_present: bool = False  # range backfill into live tables
    state: DriverState = field(default_factory=DriverState, compare=False, repr=False)

    @property
    def watermark(self) -> timedelta:
        return parse_duration(self.spec.watermark)

    @property
    def watermark_seconds(self) -> int:
        """The watermark in whole seconds (at least 1): the de-duplication's bucket size."""
        return max(int(self.watermark.total_seconds()), 1)


# --------------------------------------------------------------------------- checkpoint


def checkpoint_marker(checkpoint: str) -> dict | None:
    """The checkpoint's Riverdelta marker (stream, source, mode, app id), None if unclaimed."""
    fs, path = storage.filesystem(checkpoint)
    marker = f"{path}/{MARKER}"
    if not fs.exists(marker):
        return None
    return json.loads(fs.cat_file(marker))


def _marked_source(marker: dict) -> str:
    """The source a marker records; markers written before several topics name one 'topic'."""
    if "topic" in marker:
        return str(TopicSource((marker["topic"],)))
    return str(TopicSource(tuple(marker.get("topics") or ()), marker.get("topic_pattern")))


def claim_checkpoint(checkpoint: str, spec: StreamSpec, mode: str) -> str:
    """Return the checkpoint's app id, creating its marker; refuse another stream's checkpoint.

    The app id is new for every new checkpoint: batch ids restart at 0 with a new
    checkpoint, and reusing an old txnAppId would make Delta skip them as done. The
    marker is one object written once, so this works on object stores as on disks.
    """
    data = checkpoint_marker(checkpoint)
    if data is not None:
        if data.get("stream") != spec.name:
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint} belongs to stream {data.get('stream')!r} "
                f"({_marked_source(data)}), not to {spec.name!r} ({spec.source}). "
                "Point --checkpoint at this stream's own checkpoint."
            )
        if _marked_source(data) != str(spec.source):
            # Spark does not support changing a Kafka query's subscription on its checkpoint.
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint} of stream {spec.name!r} reads {_marked_source(data)}, "
                f"but the registry now says {spec.source}. A changed source needs a new "
                "checkpoint: `riverdelta stop`, move the old one aside, start again (it "
                "resumes after what the tables hold)."
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
    marker = {
        "stream": spec.name,
        "topics": list(spec.topics),
        "topic_pattern": spec.topic_pattern,
        "mode": mode,
        "app_id": app_id,
    }
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
        _TXN_LOCK.acquire()
        self.spark.conf.set("spark.databricks.delta.write.txnAppId", self.app_id)
        self.spark.conf.set("spark.databricks.delta.write.txnVersion", str(self.version))

    def __exit__(self, *exc: object) -> None:
        self.spark.conf.unset("spark.databricks.delta.write.txnAppId")
        self.spark.conf.unset("spark.databricks.delta.write.txnVersion")
        _TXN_LOCK.release()


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


def _known_table(spark: SparkSession, job: IngestJob, layer: str) -> bool:
    """Whether the layer's table exists; asked of Delta once per driver, then remembered."""
    if layer not in job.state.tables_seen and _table_exists(spark, job.tables[layer]):
        job.state.tables_seen.add(layer)
    return layer in job.state.tables_seen


def _previous_max_event_time(spark: SparkSession, job: IngestJob, batch_id: int):
    """This app's high-water mark over batches before ``batch_id``: read once per driver."""
    state = job.state
    if state.hwm_known_before == batch_id:
        return state.hwm
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
    tagged = deduped.withColumn("_app_id", F.lit(job.app_id)).withColumn(
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
        .where(~((F.col("_app_id") == job.app_id) & (F.col("_batch_id") == batch_id)))
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
        sinks = sinks_for(job.spec, job.tables.paths, job.app_id) if job.mode == "live" else {}
        refresher = GoldRefresher(
            spark,
            job.spec,
            job.tables.paths,
            job.app_id,
            interval,
            retry_conflicts,
            _TXN_LOCK,
            sinks=sinks,
        )
        refresher.start()
        job.state.gold = refresher
    return job.state.gold


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


COORDS = ["topic", "partition", "offset"]


def split_present(
    spark: SparkSession,
    raw: DataFrame,
    bounds: dict[TP, tuple[int, int]],
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
    bounds: dict[TP, tuple[int, int]],
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
    """One micro-batch: bronze, quarantine (only with poison), silver, the batch's counts.

    Three Delta commits and 18 Spark jobs for a clean batch (measured), whatever the
    tables hold: one action for the offsets, one for every count and bound
    (``batch_stats``), one write per table (each Spark write with a txn id adds the
    jobs Delta needs to read its snapshot's txns); silver's counts come from an
    ``Observation`` on its own write. Gold windows are handed to the refresher.
    """
    spark = raw_df.sparkSession
    spec = job.spec
    gold = gold_refresher(spark, job)
    if gold is not None:
        gold.raise_if_failed()
    if job.until is not None:
        raw_df = raw_df.where(_before(job.until))  # a range backfill stops at its end offsets
    raw = raw_df.persist()
    present = fixed = fresh = validated = None
    try:
        bounds = {
            (r["topic"], r["partition"]): (r["lo"], r["hi"])
            for r in raw.groupBy("topic", "partition")
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
        validated = T.validate(fresh, spec).persist()
        stats = batch_stats(validated, job)
        n_in = stats.records
        write_idempotent(
            to_bronze(fresh, batch_id, job.app_id), job.tables["bronze"], job, batch_id
        )
        valid, invalid = T.split(validated)
        # No quarantine commit for a batch without poison, but the table exists from a
        # driver's first batch on: readers and the quality gate expect every layer.
        if stats.reasons or not _known_table(spark, job, "quarantine"):
            quarantine = T.to_quarantine(invalid).withColumn(
                "batch_id", F.lit(batch_id).cast("long")
            )
            write_idempotent(quarantine, job.tables["quarantine"], job, batch_id)

        silver_in = T.to_silver(valid, spec)
        horizon, windows, batch_max = stats.horizon, dict(stats.windows), stats.max_event_time
        if fixed is not None and n_resolved:
            silver_in = silver_in.unionByName(fixed)
            extra = batch_stats(fixed.withColumn("_reason", F.lit(None).cast("string")), job)
            horizon = tuple(sorted({*horizon, *extra.horizon}))
            windows = {k: tuple({*v, *extra.windows[k]}) for k, v in windows.items()}
            batch_max = max((t for t in (batch_max, extra.max_event_time) if t), default=None)
        n_valid = stats.valid + n_resolved
        new_rows = new_silver_rows(spark, T.dedupe_batch(silver_in, spec), job, batch_id, horizon)

        # The event-time high-water mark includes this batch (its valid records), so
        # whether a record counts as late does not depend on how the topic was cut
        # into batches. The driver carries it; the table is read once per driver.
        prev_max = _previous_max_event_time(spark, job, batch_id)
        hwm = max((t for t in (prev_max, batch_max) if t is not None), default=None)
        et = spec.event_time_column
        measures = [
            F.count("*").alias("silver"),
            F.sum(F.when(F.col("_extra").isNotNull(), 1).otherwise(0)).alias("drift"),
            (
                F.sum(F.when(F.col(et) < F.lit(hwm - job.watermark), 1).otherwise(0))
                if hwm is not None
                else F.lit(0)
            ).alias("late"),
        ]
        observed = _write_silver(spark, new_rows, measures, job, batch_id)
        counts = {
            "stream": spec.name,
            "mode": job.mode,
            "app_id": job.app_id,
            "batch_id": batch_id,
            "records_in": n_in,
            "bronze": n_in,
            "silver": int(observed["silver"] or 0),
            "duplicates": n_valid - int(observed["silver"] or 0),
            "quarantined": sum(stats.reasons.values()),
            "quarantine_by_reason": stats.reasons,
            "late": int(observed["late"] or 0),
            "schema_drift": int(observed["drift"] or 0),
            "max_event_time": hwm,
            # {topic: {partition: [first, last]}}: the batch's inclusive offset ranges.
            "offsets": json.dumps(
                nest({tp: [lo, hi] for tp, (lo, hi) in bounds.items()}), sort_keys=True
            ),
            "already_present": n_present,
            "resolved": n_resolved,
        }
        record_batch(job, counts)
        job.state.hwm, job.state.hwm_known_before = hwm, batch_id + 1
        job.state.last_batch = batch_id
        if gold is not None and counts["silver"]:
            gold.announce(batch_id, windows)
        log.info("batch %s: %s", batch_id, counts)
        return counts
    finally:
        raw.unpersist()
        for df in (validated, present, fixed, fresh if job.skip_present else None):
            if df is not None:
                df.unpersist()


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


_COUNTS_SCHEMA = (
    "stream string, mode string, app_id string, batch_id long, records_in long, bronze long, "
    "silver long, duplicates long, quarantined long, quarantine_by_reason map<string,long>, "
    "late long, schema_drift long, max_event_time timestamp, offsets string, "
    "already_present long, resolved long"
)
_COUNTS_DEFAULTS = {"already_present": 0, "resolved": 0}  # only range backfills set them


def _count_row(counts: dict) -> tuple:
    cols = [c.split()[0] for c in _COUNTS_SCHEMA.split(", ")]
    return tuple(counts.get(c, _COUNTS_DEFAULTS.get(c)) for c in cols)


def batch_counts_df(spark: SparkSession, counts: dict) -> DataFrame:
    return spark.createDataFrame([_count_row(counts)], _COUNTS_SCHEMA).withColumn(
        "committed_at", F.current_timestamp()
    )


def record_batch(job: IngestJob, counts: dict) -> None:
    """Append the batch's counts to ``_ops/ingest_batches``, once per (app id, batch id).

    delta-rs, not Spark: a one-row Spark write with a txn id costs four jobs and about
    half a second (Delta rebuilds the snapshot state to read the txn); delta-rs does
    it in milliseconds, with the same txn action and append-only commits that never
    conflict with other streams' drivers.
    """
    import pyarrow as pa
    from deltalake import CommitProperties, Transaction, write_deltalake

    path = job.batches_path
    try:
        done = storage.delta_table(path).transaction_version(job.app_id)
    except Exception:  # no table yet (the first batch of the lake creates it)
        done = None
    if done is not None and done >= counts["batch_id"]:
        return  # an earlier attempt of this batch recorded it
    names = [c.split()[0] for c in _COUNTS_SCHEMA.split(", ")]
    row = dict(zip(names, _count_row(counts), strict=True))
    hwm = row["max_event_time"]
    row["max_event_time"] = hwm.astimezone(UTC) if hwm is not None else None  # naive = local
    row["quarantine_by_reason"] = list((row["quarantine_by_reason"] or {}).items())
    row["committed_at"] = datetime.now(UTC)
    ts = pa.timestamp("us", tz="UTC")
    schema = pa.schema(
        [
            ("stream", pa.string()), ("mode", pa.string()), ("app_id", pa.string()),
            ("batch_id", pa.int64()), ("records_in", pa.int64()), ("bronze", pa.int64()),
            ("silver", pa.int64()), ("duplicates", pa.int64()), ("quarantined", pa.int64()),
            ("quarantine_by_reason", pa.map_(pa.string(), pa.int64())),
            ("late", pa.int64()), ("schema_drift", pa.int64()), ("max_event_time", ts),
            ("offsets", pa.string()), ("already_present", pa.int64()), ("resolved", pa.int64()),
            ("committed_at", ts),
        ]
    )  # fmt: skip
    table = pa.Table.from_pylist([row], schema=schema)
    storage.makedirs(path)
    write_deltalake(  # delta-rs retries a commit that races another append itself
        storage.delta_uri(path),
        table,
        mode="append",
        storage_options=storage.delta_options(path),
        commit_properties=CommitProperties(
            app_transactions=[Transaction(app_id=job.app_id, version=counts["batch_id"])]
        ),
    )


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
    from riverdelta.ops.health import read_checkpoint

    if job.until is None:
        return False
    state = read_checkpoint(job.checkpoint)
    if state is None or state.last_committed_batch is None:
        return False
    return all(state.end_offsets.get(tp, -1) >= u for tp, u in job.until.items())


def held_offsets(spark: SparkSession, job: IngestJob) -> dict[TP, int]:
    """(topic, partition) -> next offset after what these tables' bronze already holds.

    The tables are the ledger (as kafka-delta-ingest's per-partition txn versions
    are): a writer on a new checkpoint must start after them, or it writes every
    held record a second time. One aggregation over two integer columns, at start.
    """
    if not _table_exists(spark, job.tables["bronze"]):
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
        from riverdelta.backfill.replay import offsets_for_time

        at = int(start["startingTimestamp"]) / 1000
        found = offsets_for_time(bootstrap, at, {tp: hi for tp, (_, hi) in marks.items()})
        start = {"startingOffsets": json.dumps(nest(found))}
    resumed = resume_options(start, held, sorted(marks))
    log.info("new checkpoint over tables that hold data up to %s: starting at %s", held, resumed)
    return resumed


def subscription(spec: StreamSpec) -> dict[str, str]:
    """The Kafka source's subscribe options: named topics, or a pattern Spark re-lists."""
    if spec.topic_pattern is not None:
        # Spark lists the cluster's topics at every trigger: a matching topic created
        # later is read from its earliest offset (as a new partition is).
        return {"subscribePattern": spec.topic_pattern}
    return {"subscribe": ",".join(spec.topics)}


def start_query(
    spark: SparkSession,
    job: IngestJob,
    *,
    starting: str | None = None,
    max_offsets_per_trigger: int | None = None,
    trigger: str | None = None,
) -> StreamingQuery:
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
        job.spec.max_offsets_per_trigger if job.mode == "live" else None
    )
    if limit:
        reader = reader.option("maxOffsetsPerTrigger", str(limit))
    gold_refresher(spark, job)
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
