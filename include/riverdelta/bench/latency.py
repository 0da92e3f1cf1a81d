"""Live latency: Kafka timestamp to the Delta commit that made a row visible."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riverdelta.bench.common import DUPLICATE_RATE, POISON_RATE, SEED, now
from riverdelta.bench.measure import lag, live_job, progress_summary, table_counts, wait_caught_up

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from riverdelta.config.registry import StreamSpec


def commit_times(table: str, txn_app_id: str) -> dict[int, float]:
    """batch id -> commit timestamp (s) of the Delta version that batch's write created.

    Read from the transaction log: every ingest write carries txn (appId, version =
    batch id) next to the commitInfo timestamp of its version.
    """
    found: dict[int, float] = {}
    for entry in sorted((Path(table) / "_delta_log").glob("*.json")):
        txn = stamp = None
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "txn" in action and action["txn"].get("appId") == txn_app_id:
                txn = int(action["txn"]["version"])
            if "commitInfo" in action:
                stamp = action["commitInfo"].get("inCommitTimestamp") or action["commitInfo"].get(
                    "timestamp"
                )
        if txn is not None and stamp is not None:
            found[txn] = stamp / 1000.0
    return found


def reflected_at(silver: dict[int, float], gold: dict[int, float]) -> dict[int, float]:
    """batch id -> time of the first gold commit that reflects it (txn version >= batch id)."""
    found: dict[int, float] = {}
    ordered = sorted(gold.items())
    for batch in silver:
        later = [ts for version, ts in ordered if version >= batch]
        if later:
            found[batch] = min(later)
    return found


def latency_histogram(
    spark: SparkSession, silver: str, commits: dict[int, float], bucket: float = 0.01
) -> list[tuple[float, int]]:
    """(latency seconds, rows) per ``bucket``: each silver row's commit time minus its Kafka time."""
    from pyspark.sql import functions as F

    batch_commit = spark.createDataFrame(
        [(b, ts) for b, ts in commits.items()], "_batch_id long, commit_ts double"
    )
    latency = F.col("commit_ts") - F.col("kafka_timestamp").cast("double")
    rows = (
        spark.read.format("delta")
        .load(silver)
        .join(F.broadcast(batch_commit), "_batch_id")
        .groupBy(F.round(latency / bucket).cast("long").alias("b"))
        .count()
        .orderBy("b")
        .collect()
    )
    return [(r["b"] * bucket, r["count"]) for r in rows]


def percentile(hist: list[tuple[float, int]], q: float) -> float | None:
    total = sum(n for _, n in hist)
    if not total:
        return None
    seen = 0
    for value, n in hist:
        seen += n
        if seen >= q * total:
            return round(value, 3)
    return round(hist[-1][0], 3)


def _producer(
    spec: StreamSpec, bootstrap: str, rate: float, seconds: float
) -> tuple[threading.Thread, dict[str, Any], list[BaseException]]:
    """A producer thread (not started) at ``rate`` for ``seconds``; what it sent, its errors."""
    from riverdelta.embedded.generator import produce

    count = max(int(rate * seconds), 1)
    sent: dict[str, Any] = {}
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            sent.update(
                produce(
                    spec,
                    count,
                    bootstrap=bootstrap,
                    rate=rate,
                    poison_rate=POISON_RATE,
                    duplicate_rate=DUPLICATE_RATE,
                    seed=SEED + 1,
                )
            )
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=producer, name="bench-producer", daemon=True)
    return thread, sent, errors


def _feed(
    job: Any, spec: StreamSpec, bootstrap: str, rate: float, seconds: float, timeout: float
) -> dict[str, Any]:
    """Feed the running live query, sampling its lag, then wait for silver and gold to drain."""
    from riverdelta.ops.health import read_checkpoint
    from riverdelta.stream.ingest import await_gold

    # The first (empty) batch is planned and committed before any record is sent.
    t0 = now()
    while read_checkpoint(job.checkpoint) is None and now() - t0 < 120:
        time.sleep(0.2)
    thread, sent, errors = _producer(spec, bootstrap, rate, seconds)
    t_start = now()
    thread.start()
    lag_samples: list[tuple[float, int]] = []
    while thread.is_alive():
        thread.join(timeout=2.0)
        lag_samples.append((round(now() - t_start, 1), lag(job, spec.topic, bootstrap)))
    if errors:
        raise errors[0]
    final_lag = lag(job, spec.topic, bootstrap)
    drain = wait_caught_up(job, spec.topic, bootstrap, timeout)
    t_gold = now()
    await_gold(job)  # gold's last pass after the last batch
    return {
        "sent": sent,
        "lag_samples": lag_samples,
        "final_lag": final_lag,
        "drain": drain,
        "gold_drain": now() - t_gold,
    }


def _gold_latency(
    spark: SparkSession, spec: StreamSpec, job: Any, commits: dict[int, float]
) -> dict[str, Any]:
    """Per gold table: Kafka timestamp -> the first gold commit reflecting the row's batch."""
    gold = {}
    for g in spec.gold:
        gold_commits = reflected_at(
            commits, commit_times(job.tables[f"gold_{g.name}"], job.txn_app_id)
        )
        ghist = latency_histogram(spark, job.tables["silver"], gold_commits)
        gold[g.name] = {
            "p50_seconds": percentile(ghist, 0.50),
            "p95_seconds": percentile(ghist, 0.95),
            "max_seconds": round(ghist[-1][0], 3) if ghist else None,
            "rows_measured": sum(n for _, n in ghist),
        }
    return gold


def live_latency(
    spark: SparkSession, spec: StreamSpec, root: Path, rate: float, seconds: float, timeout: float
) -> dict[str, Any]:
    """Live query on a fresh topic fed at ``rate`` for ``seconds``: latency and final lag."""
    from riverdelta.config.registry import parse_duration
    from riverdelta.embedded import kafka_broker
    from riverdelta.kafka import client as kafka_client
    from riverdelta.stream.ingest import start_query, stop_gold

    spec = spec.on_topic(f"{spec.topic}.bench-live")
    kafka_client.create_topics({spec.topic: spec.partitions})
    job = live_job(spec, root)
    query = start_query(spark, job, starting="earliest")
    try:
        fed = _feed(job, spec, kafka_broker.bootstrap(), rate, seconds, timeout)
    finally:
        query.stop()
        stop_gold(job)
    commits = commit_times(job.tables["silver"], job.txn_app_id)
    hist = latency_histogram(spark, job.tables["silver"], commits)
    gold = _gold_latency(spark, spec, job, commits)
    sent, drain = fed["sent"], fed["drain"]
    input_rate = sent["sent"] / sent["seconds"]
    lag_seconds = fed["final_lag"] / input_rate if input_rate else 0.0
    trigger = parse_duration(spec.trigger).total_seconds()
    return {
        "target_rate": round(rate, 1),
        "input_rate": round(input_rate, 1),
        "produced": sent["sent"],
        "produce_seconds": round(sent["seconds"], 3),
        "trigger": spec.trigger,
        "p50_seconds": percentile(hist, 0.50),
        "p95_seconds": percentile(hist, 0.95),
        "p99_seconds": percentile(hist, 0.99),
        "max_seconds": round(hist[-1][0], 3) if hist else None,
        "rows_measured": sum(n for _, n in hist),
        "final_lag_records": fed["final_lag"],
        "final_lag_seconds": round(lag_seconds, 2),
        "drain_seconds": round(drain, 3) if drain is not None else None,
        "gold_trigger": spec.gold_trigger,
        "gold": gold,
        "gold_drain_seconds": round(fed["gold_drain"], 3),
        # Kept up: what was left when the producer stopped is at most two triggers of input.
        "kept_up": drain is not None and lag_seconds <= 2 * trigger,
        "lag_samples": fed["lag_samples"],
        "histogram": hist,
        "tables": table_counts(spark, job),
        "progress": progress_summary(query),
    }
