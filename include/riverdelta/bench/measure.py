"""The throughput phases of `make bench`, and the validation and DAG-parse timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riverdelta.bench.common import DUPLICATE_RATE, POISON_RATE, SEED, STREAM, now, ratio
from riverdelta.config.settings import PROJECT_ROOT, settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from riverdelta.config.registry import StreamSpec


def produce_dataset(spec: StreamSpec, records: int, bootstrap: str) -> dict[str, Any]:
    from riverdelta.embedded.generator import produce
    from riverdelta.kafka import client as kafka_client

    kafka_client.create_topics({spec.topic: spec.partitions})
    summary = produce(
        spec,
        records,
        bootstrap=bootstrap,
        poison_rate=POISON_RATE,
        duplicate_rate=DUPLICATE_RATE,
        seed=SEED,
    )
    return {**summary, "rate": round(summary["rate"], 1), "seconds": round(summary["seconds"], 3)}


def raw_consumer(topic: str, bootstrap: str) -> dict[str, Any]:
    """The limit: every record of the topic through librdkafka, nothing decoded or written."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from riverdelta.kafka.client import consumer as kafka_consumer
    from riverdelta.ops.health import end_offsets

    ends = end_offsets(bootstrap, topic)
    consumer = kafka_consumer(bootstrap, **{"enable.partition.eof": True})
    rows = size = 0
    t = now()
    try:
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                tp = (msg.topic(), msg.partition())
                if msg.error() is not None:
                    pending.discard(tp)  # end of partition
                    continue
                rows += 1
                size += len(msg.value() or b"") + len(msg.key() or b"")
                if msg.offset() + 1 >= ends[tp]:
                    pending.discard(tp)
            if now() - t > 600:
                raise TimeoutError(f"raw consumer: {rows} of {sum(ends.values())} after 600 s")
    finally:
        consumer.close()
    seconds = now() - t
    return {
        "rows": rows,
        "bytes": size,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1),
        "mb_per_second": round(size / seconds / 1e6, 2),
    }


def progress_summary(query: Any) -> dict[str, Any]:
    """Per-batch durations Spark reports (ms): where the trigger time went."""
    progress = [p for p in query.recentProgress if p.get("numInputRows")]
    if not progress:
        return {"batches": 0}
    keys = sorted({k for p in progress for k in p.get("durationMs", {})})
    return {
        "batches": len(progress),
        "rows_per_batch": round(sum(p["numInputRows"] for p in progress) / len(progress), 1),
        "mean_duration_ms": {
            k: round(sum(p["durationMs"].get(k, 0) for p in progress) / len(progress)) for k in keys
        },
    }


def naive_spark(spark: SparkSession, topic: str, root: Path, expected: int) -> dict[str, Any]:
    """Plain Kafka source -> Delta append of the raw value: Spark with no Riverdelta logic."""
    from riverdelta.embedded import kafka_broker
    from riverdelta.kafka import client as kafka_client

    table = str(root / "naive" / "raw")
    t = now()
    query = (
        spark.readStream.format("kafka")
        .options(**kafka_client.client_config(bootstrap=kafka_broker.bootstrap()).spark_options())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
        .select("value")
        .writeStream.format("delta")
        .option("checkpointLocation", str(root / "naive" / "_checkpoint"))
        .trigger(availableNow=True)
        .start(table)
    )
    query.awaitTermination()
    seconds = now() - t
    if query.exception() is not None:
        raise RuntimeError(f"naive Spark query failed: {query.exception()}")
    rows = spark.read.format("delta").load(table).count()
    if rows != expected:
        raise RuntimeError(f"naive Spark wrote {rows} rows, the topic holds {expected}")
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1),
        "progress": progress_summary(query),
    }


def table_counts(spark: SparkSession, job: Any) -> dict[str, int]:
    from pyspark.sql import functions as F

    counts = {
        layer: spark.read.format("delta").load(path).count()
        for layer, path in job.tables.paths.items()
    }
    mine = (
        spark.read.format("delta").load(job.batches_path).where(F.col("app_id") == job.txn_app_id)
    )
    row = mine.agg(F.sum("duplicates"), F.sum("silver"), F.sum("quarantined")).first()
    counts["duplicates_counted"] = int(row[0] or 0)
    counts["reconciles"] = int(counts["bronze"] == sum(int(x or 0) for x in row))
    return counts


def replay(
    spark: SparkSession, spec: StreamSpec, root: Path, expected: int, *, default_tables: bool
) -> dict[str, Any]:
    """Riverdelta's backfill path; ``default_tables``: the lake's own (the ones quality validates)."""
    from riverdelta.stream.job import IngestMode, make_job

    job = make_job(
        spec,
        IngestMode.REPLAY,
        checkpoint=str(root / "_checkpoints" / "bench-replay"),
        tables_root=None if default_tables else str(root / "tables"),
        ops_root=None if default_tables else str(root / "_ops"),
    )
    from riverdelta.stream.ingest import start_query, stop_gold

    t = now()
    query = start_query(spark, job, starting="earliest")
    query.awaitTermination()
    ingest_seconds = now() - t
    if query.exception() is not None:
        raise RuntimeError(f"replay failed: {query.exception()}")
    stop_gold(job)  # a replay driver ends when gold is written too: it is in the time
    seconds = now() - t
    counts = table_counts(spark, job)
    if counts["bronze"] != expected:
        raise RuntimeError(f"replay: bronze holds {counts['bronze']} rows, expected {expected}")
    return {
        "rows": counts["bronze"],
        "seconds": round(seconds, 3),
        "rows_per_second": round(counts["bronze"] / seconds, 1),
        "ingest_seconds": round(ingest_seconds, 3),
        "gold_seconds": round(seconds - ingest_seconds, 3),
        "tables": counts,
        "progress": progress_summary(query),
    }


def wait_caught_up(job: Any, topic: str, bootstrap: str, timeout: float) -> float | None:
    """Seconds until the last committed batch covers the topic's end offsets (None: timeout)."""
    from riverdelta.ops.health import end_offsets, read_checkpoint

    ends = end_offsets(bootstrap, topic)
    t = now()
    while now() - t < timeout:
        state = read_checkpoint(job.checkpoint)
        if state and all(state.end_offsets.get(p, 0) >= end for p, end in ends.items()):
            return now() - t
        time.sleep(0.2)
    return None


def lag(job: Any, topic: str, bootstrap: str) -> int:
    from riverdelta.ops.health import end_offsets, read_checkpoint

    state = read_checkpoint(job.checkpoint)
    done = state.end_offsets if state else {}
    return sum(max(end - done.get(p, 0), 0) for p, end in end_offsets(bootstrap, topic).items())


def live_job(spec: StreamSpec, root: Path) -> Any:
    from riverdelta.stream.job import IngestMode, make_job

    return make_job(
        spec,
        IngestMode.LIVE,
        checkpoint=str(root / "_checkpoint"),
        tables_root=str(root / "tables"),
        ops_root=str(root / "_ops"),
    )


def live_maximum(
    spark: SparkSession, spec: StreamSpec, root: Path, expected: int, timeout: float
) -> dict[str, Any]:
    """The live query (registry trigger) started on the full backlog, until it has caught up."""
    from riverdelta.embedded import kafka_broker
    from riverdelta.stream.ingest import start_query

    job = live_job(spec, root)
    t = now()
    query = start_query(spark, job, starting="earliest")
    try:
        waited = wait_caught_up(job, spec.topic, kafka_broker.bootstrap(), timeout)
        seconds = now() - t
    finally:
        query.stop()
        from riverdelta.stream.ingest import stop_gold

        stop_gold(job)
    if waited is None:
        raise RuntimeError(f"live maximum: not caught up after {timeout:.0f} s")
    return {
        "rows": expected,
        "seconds": round(seconds, 3),
        "rows_per_second": round(expected / seconds, 1),
        "trigger": spec.trigger,
        "progress": progress_summary(query),
    }


def warmup(spark: SparkSession, spec: StreamSpec, root: Path, records: int = 5_000) -> dict:
    """The naive and the replay path once on a small topic, untimed.

    The first query in a JVM pays class loading and code generation; without this
    the phase that happens to run first would look slower than it is.
    """
    spec = spec.on_topic(f"{spec.topic}.bench-warmup")
    produce_dataset(spec, records, settings().kafka_bootstrap)
    naive_spark(spark, spec.topic, root, records)
    replay(spark, spec, root, records, default_tables=False)
    return {"records": records}


def validation(spark: SparkSession) -> dict[str, Any]:
    from riverdelta.quality.benchmark import time_validation_vs_scan

    return time_validation_vs_scan(f"{STREAM}_silver", spark=spark)


INCREMENT_ROWS = 10_000
# GX's own import (scipy, altair, its pyspark and sqlalchemy shims) is timed apart:
# it is most of a fresh process's cost, and a warm worker pays it once.
_VALIDATE_ONCE = (
    "import json, os, sys, time; t = time.monotonic()\n"
    "os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')\n"
    "import great_expectations\n"
    "from riverdelta.quality.gate import validate_table\n"
    "imported = time.monotonic() - t\n"
    "r = validate_table(sys.argv[1], publish_on_pass=False)\n"
    "print(json.dumps({'engine': r['engine'], 'rows': r['rows_checked'],"
    " 'success': r['success'], 'from_version': r['from_version'],"
    " 'import_seconds': round(imported, 3),"
    " 'validate_seconds': round(time.monotonic() - t - imported, 3)}))\n"
)


def increment_validation(spark: SparkSession) -> dict[str, Any]:
    """A 10k-row increment of silver validated as an Airflow task validates it: a fresh
    process, with each engine (Spark's figure includes its JVM start), same rows."""
    from pyspark.sql import functions as F

    from riverdelta.quality.tables import resolve_table

    table = f"{STREAM}_silver"
    ref = resolve_table(table)
    rows = spark.read.format("delta").load(ref.path).limit(INCREMENT_ROWS)
    idc = ref.spec.id_column
    rows.withColumn(idc, F.concat(F.lit("inc-"), F.col(idc))).write.format("delta").mode(
        "append"
    ).save(ref.path)
    out: dict[str, Any] = {"table": table}
    for engine in ("pandas", "spark"):
        env = {**os.environ, "RIVERDELTA_VALIDATION_ENGINE": engine}
        t = now()
        done = subprocess.run(
            [sys.executable, "-c", _VALIDATE_ONCE, table],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        wall = round(now() - t, 3)
        out[engine] = {"wall_seconds": wall, **json.loads(done.stdout.strip().splitlines()[-1])}
    out["rows"] = out["pandas"]["rows"]
    out["spark_vs_pandas"] = ratio(out["spark"]["wall_seconds"], out["pandas"]["wall_seconds"])
    return out


def dag_parse_times() -> dict[str, Any]:
    """Each DAG file through Airflow's DagBag in a fresh interpreter (airflow imported first)."""
    from riverdelta.airflow.env import airflow_env

    code = (
        "import json, sys, time\n"
        "t0 = time.perf_counter()\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "t1 = time.perf_counter()\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'airflow_import_seconds': t1 - t0, 'parse_seconds': t2 - t1,"
        " 'dags': len(bag.dags), 'errors': len(bag.import_errors)}))\n"
    )
    env = airflow_env()
    found: dict[str, Any] = {}
    for path in sorted((PROJECT_ROOT / "dags").glob("*.py")):
        if path.name.startswith("_"):
            continue
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"parsing {path.name} failed:\n{out.stderr[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        found[path.name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}
    return {"files": found, "max_parse_seconds": max(d["parse_seconds"] for d in found.values())}
