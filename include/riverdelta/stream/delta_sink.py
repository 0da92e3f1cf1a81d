"""The ingest's Delta writes, each idempotent: a replayed batch is skipped table by table.

Every write carries the Delta idempotency pair (``txnAppId`` = the checkpoint's id,
``txnVersion`` = the batch id); a MERGE gets the same pair through session confs.
Concurrent Delta commits (the live stream and a backfill writing the same tables)
are retried: every write is idempotent, so a retry cannot double it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from riverdelta.storage import roots as storage
from riverdelta.stream.job import IngestJob

# The ingest's logger name for every module of the batch: drivers' logs are read by it.
log = logging.getLogger("riverdelta.stream.ingest")

R = TypeVar("R")

# Delta's txn session confs (the MERGEs' idempotency) are session-wide: the gold
# thread's writes and a MERGE of the ingest thread must not overlap.
TXN_LOCK = threading.Lock()


def table_exists(spark: SparkSession, path: str) -> bool:
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


# tenacity rather than a hand-written loop: the stop, the retry predicate and the
# back-off are declared instead of interleaved with the control flow, and tenacity
# (already in the lock) re-raises the last error itself. The schedule is the one the
# loop had: 0.5 s doubling up to 20 s, times a jitter in [0.5, 1.5).
_BACKOFF = wait_exponential(multiplier=0.5, max=20.0)


def _jittered_backoff(retry_state: RetryCallState) -> float:
    return _BACKOFF(retry_state) * (0.5 + random.random())


def retry_conflicts(fn: Callable[[], R], what: str, attempts: int = 8) -> R:
    """Run ``fn`` again after a concurrent-commit conflict, with jittered back-off."""

    def warn(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        log.warning(
            "%s: concurrent Delta commit (%s); retry %d in %.1fs",
            what,
            type(exc).__name__,
            retry_state.attempt_number,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        retry=retry_if_exception(_is_conflict),
        wait=_jittered_backoff,
        before_sleep=warn,
        reraise=True,
    )
    return retrying(fn)


class _txn_guard:
    """Session confs that make a DML command (MERGE) idempotent like ``txnAppId`` writes."""

    def __init__(self, spark: SparkSession, txn_app_id: str, version: int) -> None:
        self.spark, self.txn_app_id, self.version = spark, txn_app_id, version

    def __enter__(self) -> None:
        TXN_LOCK.acquire()
        self.spark.conf.set("spark.databricks.delta.write.txnAppId", self.txn_app_id)
        self.spark.conf.set("spark.databricks.delta.write.txnVersion", str(self.version))

    def __exit__(self, *exc: object) -> None:
        self.spark.conf.unset("spark.databricks.delta.write.txnAppId")
        self.spark.conf.unset("spark.databricks.delta.write.txnVersion")
        TXN_LOCK.release()


def write_idempotent(
    df: DataFrame, path: str, job: IngestJob, batch_id: int, txn_app_id: str | None = None
) -> None:
    def write() -> None:
        (
            df.write.format("delta")
            .mode("append")
            .option("txnAppId", txn_app_id or job.txn_app_id)
            .option("txnVersion", batch_id)
            .option("mergeSchema", "true")
            .save(path)
        )

    retry_conflicts(write, f"append to {path}")


COORDS = ["topic", "partition", "offset"]  # a Kafka record's identity in bronze and quarantine


def mark_resolved(
    spark: SparkSession, path: str, fixed: DataFrame, token: str, job: IngestJob, batch_id: int
) -> None:
    """Mark the quarantine rows of ``fixed`` (by coordinates) resolved by ``token``, once."""
    from delta.tables import DeltaTable

    def mark() -> None:
        # Its own txn app id: the quarantine append of this batch already used (txn_app_id, batch_id).
        with _txn_guard(spark, f"{job.txn_app_id}-resolve", batch_id):
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


# --------------------------------------------------------------------------- the batches table


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
    """Append the batch's counts to ``_ops/ingest_batches``, once per (txn app id, batch id).

    delta-rs, not Spark: a one-row Spark write with a txn id costs four jobs and about
    half a second (Delta rebuilds the snapshot state to read the txn); delta-rs does
    it in milliseconds, with the same txn action and append-only commits that never
    conflict with other streams' drivers.
    """
    import pyarrow as pa
    from deltalake import CommitProperties, Transaction, write_deltalake

    path = job.batches_path
    try:
        done = storage.delta_table(path).transaction_version(job.txn_app_id)
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
            app_transactions=[Transaction(app_id=job.txn_app_id, version=counts["batch_id"])]
        ),
    )
