"""`make bench`: Riverdelta against the limits of this machine, measured side by side.

One run starts its own broker (own runtime home under the output folder, free
ports), produces one fixed dataset, and times on that same data:

- the limit: a raw confluent-kafka consumer reading the whole topic;
- a naive baseline: plain Spark Kafka source -> Delta append of the raw value
  (``Trigger.AvailableNow``);
- Riverdelta's replay (``job.make_job(..., IngestMode.REPLAY)`` + ``start_query``:
  bronze, silver, quarantine, gold and the per-batch counts);
- the live maximum: the live query (the registry's processing-time trigger)
  started on the same backlog, timed until its last committed batch covers the
  topic's end offsets;
- live at a fraction of the replay rate: a producer at a fixed rate for a fixed
  time, latency from the Kafka record timestamp to the Delta commit that made
  the row visible in silver, and the lag left when the producer stops;
- a full GX validation of silver vs one Spark pass computing the same metrics;
- each DAG file's parse time in a fresh interpreter, and the stack's peak RSS.

Throughputs are wall-clock: records / (seconds from starting the reader or
query to the moment every record is committed), start-up included, because
that is what an operator waits for. Targets are reported, never asserted.

Results go to ``<out>/bench-<timestamp>/`` (results.json, results.md, PNGs);
``--write-docs`` also regenerates docs/benchmarks.md, keeping the hand-written
section between the ``where-the-time-goes`` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import linecache
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riverdelta.config.settings import PROJECT_ROOT, settings
from riverdelta.launch import procs

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from riverdelta.config.registry import StreamSpec

STREAM = "transactions"
SEED = 20260101
POISON_RATE = 0.01
DUPLICATE_RATE = 0.01
LIVE_LOAD = 0.6  # live producer rate as a fraction of the measured replay rate
DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
MANUAL_START = "<!-- where-the-time-goes:start (hand-written, kept by make bench) -->"
MANUAL_END = "<!-- where-the-time-goes:end -->"

# (key, label, how the measured value compares, threshold): reported as met / missed.
TARGETS = (
    ("ingest_vs_raw_consumer", "Riverdelta replay ÷ raw consumer", ">=", 0.25),
    ("ingest_vs_naive_spark", "Riverdelta replay ÷ naive Spark", ">=", 0.35),
    ("live_kept_up", "live at 60 % load kept up (lag ≤ 2 triggers of input; 1 = yes)", ">=", 1),
    ("live_p95_seconds", "p95 Kafka timestamp → silver commit at 60 % load (s)", "<=", 5.0),
    ("gold_p95_seconds", "p95 Kafka timestamp → gold commit at 60 % load (s)", "<=", 30.0),
    ("batch_growth_ratio", "batch time, 1M rows in silver ÷ 10k rows", "<=", 1.2),
    ("jobs_per_clean_batch", "Spark jobs per clean live batch", "<=", 10),
    ("commits_per_clean_batch", "Delta commits per clean live batch", "<=", 3),
    ("validation_vs_scan", "validation ÷ one scan", "<=", 2.0),
    (
        "increment_validation_seconds",
        "10k-row increment validated in a fresh task process (s)",
        "<=",
        5.0,
    ),
    ("dag_parse_max_seconds", "slowest DAG file parse (s)", "<=", 0.3),
    (
        "validated_freshness_p95_seconds",
        "p95 Kafka timestamp → silver version published, gate as deployed (s)",
        "<=",
        60.0,
    ),
)
GROWTH_BATCH = 20_000  # records per probe batch of the table-growth phase
GROWTH_SMALL = 10_000  # rows in silver of the small table


@dataclasses.dataclass(frozen=True)
class Config:
    records: int = 1_000_000
    live_seconds: float = 120.0
    out: Path = PROJECT_ROOT / "results"
    smoke: bool = False
    write_docs: bool = False
    warmup: bool = True
    drain_timeout: float = 600.0


def _now() -> float:
    return time.monotonic()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- isolation


@contextlib.contextmanager
def isolated_home(home: Path) -> Iterator[None]:
    """Own runtime home and free ports, like tests/conftest.py; the jar cache is shared."""
    saved = dict(os.environ)
    cache = settings().cache  # resolved before the home moves: jars stay where they are
    for name in ("RIVERDELTA_LAKE", "RIVERDELTA_KAFKA_BOOTSTRAP", "RIVERDELTA_ENV"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "RIVERDELTA_HOME": str(home),
            "RIVERDELTA_CACHE": str(cache),
            "RIVERDELTA_KAFKA_PORT": str(procs.free_port()),
            "RIVERDELTA_KAFKA_CONTROLLER_PORT": str(procs.free_port()),
            "RIVERDELTA_AIRFLOW_PORT": str(procs.free_port()),
        }
    )
    settings.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        settings.cache_clear()


class MemorySampler(threading.Thread):
    """Peak of broker JVM + Spark driver JVM + this Python process RSS, sampled twice a second."""

    def __init__(self, broker_pid: int, interval: float = 0.5) -> None:
        super().__init__(name="bench-memory", daemon=True)
        import psutil

        self.me = psutil.Process()
        self.broker = psutil.Process(broker_pid)
        self.interval = interval
        self.peak: dict[str, float] = {"total": 0.0, "broker": 0.0, "spark": 0.0, "python": 0.0}
        self._halt = threading.Event()

    def _spark_jvms(self) -> list[Any]:
        found = []
        for child in self.me.children(recursive=True):
            with contextlib.suppress(Exception):
                if "org.apache.spark.deploy.SparkSubmit" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    def sample(self) -> None:
        import psutil

        parts = {"python": self.me.memory_info().rss, "broker": 0, "spark": 0}
        with contextlib.suppress(psutil.Error):
            parts["broker"] = self.broker.memory_info().rss
        for jvm in self._spark_jvms():
            with contextlib.suppress(psutil.Error):
                parts["spark"] += jvm.memory_info().rss
        total = sum(parts.values())
        if total > self.peak["total"] * 2**20:
            self.peak = {k: v / 2**20 for k, v in {**parts, "total": total}.items()}

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join(timeout=5)
        return {f"{k}_mb": round(v, 1) for k, v in self.peak.items()}


# --------------------------------------------------------------------------- profiling


class BatchProfiler:
    """Times every Spark action ``batch.process_batch`` makes, by the step that made it.

    Wraps the actions (count / collect / first, Delta writes, merges, table
    probes) and ``process_batch`` itself; an action is charged to the step of the
    batch (the function ``process_batch`` called, or its own line) and to the
    innermost frame of the batch's modules (``stream/batch.py``,
    ``stream/delta_sink.py``) that called it, with the Spark jobs it started (the
    streaming query's job group, read through the status tracker).
    """

    def __init__(self, spark: SparkSession) -> None:
        from riverdelta.stream import batch, delta_sink

        self.sc = spark.sparkContext
        self.batch = batch
        self.batch_files = {batch.__file__, delta_sink.__file__}
        self.sites: dict[str, dict[str, float]] = {}
        self.batches: list[dict[str, Any]] = []
        self._local = threading.local()
        self._restore: list[tuple[Any, str, Any]] = []

    def _jobs(self) -> set[int]:
        group = self.sc.getLocalProperty("spark.jobGroup.id")
        return set(self.sc.statusTracker().getJobIdsForGroup(group))

    def _site(self, action: str, args: tuple) -> str | None:
        """``<statement of the batch's step> [<function of the batch that ran it>.<action>]``."""
        frames = []
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename in self.batch_files:
                frames.append(frame)
            frame = frame.f_back
        if not frames:
            return None
        # The statement being run in the step process_batch called (or in process_batch
        # itself) says which step of the batch this is.
        top = next((i for i, f in enumerate(frames) if f.f_code.co_name == "process_batch"), None)
        outer = frames[-1] if top is None else frames[max(top - 1, 0)]
        inner = frames[0]
        text = linecache.getline(outer.f_code.co_filename, outer.f_lineno).strip()[:60]
        target = f" -> {Path(str(args[1])).name}" if action == "save" and len(args) > 1 else ""
        return (
            f"{outer.f_code.co_name}:{outer.f_lineno} {text} "
            f"[{inner.f_code.co_name}.{action}{target}]"
        )

    def _wrap_action(self, owner: Any, name: str) -> None:
        original = owner.__dict__[name]
        func = original.__func__ if isinstance(original, classmethod | staticmethod) else original
        profiler = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(profiler._local, "depth", 0)
            site = profiler._site(name, args) if depth == 0 else None
            if site is None:
                return func(*args, **kwargs)
            profiler._local.depth = depth + 1
            before, t = profiler._jobs(), _now()
            try:
                return func(*args, **kwargs)
            finally:
                seconds, jobs = _now() - t, len(profiler._jobs() - before)
                profiler._local.depth = depth
                entry = profiler.sites.setdefault(site, {"calls": 0, "seconds": 0.0, "jobs": 0})
                entry["calls"] += 1
                entry["seconds"] += seconds
                entry["jobs"] += jobs

        patched = classmethod(wrapper) if isinstance(original, classmethod) else wrapper
        patched = staticmethod(wrapper) if isinstance(original, staticmethod) else patched
        self._restore.append((owner, name, original))
        setattr(owner, name, patched)

    def __enter__(self) -> BatchProfiler:
        from delta.tables import DeltaMergeBuilder, DeltaTable
        from pyspark.sql import DataFrameWriter

        # The classic (non-Connect) implementation, the one a local session runs.
        from pyspark.sql.classic.dataframe import DataFrame

        for owner, name in (
            (DataFrame, "count"),
            (DataFrame, "collect"),
            (DataFrame, "first"),
            (DataFrameWriter, "save"),
            (DeltaMergeBuilder, "execute"),
            (DeltaTable, "isDeltaTable"),
        ):
            self._wrap_action(owner, name)
        original = self.batch.process_batch

        def process_batch(job: Any, raw_df: Any, batch_id: int) -> dict:
            before, t = self._jobs(), _now()
            counts = original(job, raw_df, batch_id)
            self.batches.append(
                {
                    "mode": str(job.mode),
                    "batch_id": batch_id,
                    "records": counts.get("records_in", 0),
                    "seconds": round(_now() - t, 3),
                    "jobs": len(self._jobs() - before),
                }
            )
            return counts

        # start_query's foreachBatch looks process_batch up in its module at call time.
        self._restore.append((self.batch, "process_batch", original))
        self.batch.process_batch = process_batch
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()

    def report(self) -> dict[str, Any]:
        batches = [b for b in self.batches if b["records"]]
        total = sum(b["seconds"] for b in batches)
        sites = sorted(self.sites.items(), key=lambda kv: -kv[1]["seconds"])
        return {
            "batches": self.batches,
            "process_batch_seconds": round(total, 3),
            "actions": [
                {
                    "site": site,
                    "calls": int(v["calls"]),
                    "seconds": round(v["seconds"], 3),
                    "share": round(v["seconds"] / total, 3) if total else None,
                    "jobs": int(v["jobs"]),
                }
                for site, v in sites
            ],
            "outside_actions_seconds": round(total - sum(v["seconds"] for _, v in sites), 3),
        }


# --------------------------------------------------------------------------- phases


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
    t = _now()
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
            if _now() - t > 600:
                raise TimeoutError(f"raw consumer: {rows} of {sum(ends.values())} after 600 s")
    finally:
        consumer.close()
    seconds = _now() - t
    return {
        "rows": rows,
        "bytes": size,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1),
        "mb_per_second": round(size / seconds / 1e6, 2),
    }


def _progress_summary(query: Any) -> dict[str, Any]:
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
    t = _now()
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
    seconds = _now() - t
    if query.exception() is not None:
        raise RuntimeError(f"naive Spark query failed: {query.exception()}")
    rows = spark.read.format("delta").load(table).count()
    if rows != expected:
        raise RuntimeError(f"naive Spark wrote {rows} rows, the topic holds {expected}")
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1),
        "progress": _progress_summary(query),
    }


def _table_counts(spark: SparkSession, job: Any) -> dict[str, int]:
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

    t = _now()
    query = start_query(spark, job, starting="earliest")
    query.awaitTermination()
    ingest_seconds = _now() - t
    if query.exception() is not None:
        raise RuntimeError(f"replay failed: {query.exception()}")
    stop_gold(job)  # a replay driver ends when gold is written too: it is in the time
    seconds = _now() - t
    counts = _table_counts(spark, job)
    if counts["bronze"] != expected:
        raise RuntimeError(f"replay: bronze holds {counts['bronze']} rows, expected {expected}")
    return {
        "rows": counts["bronze"],
        "seconds": round(seconds, 3),
        "rows_per_second": round(counts["bronze"] / seconds, 1),
        "ingest_seconds": round(ingest_seconds, 3),
        "gold_seconds": round(seconds - ingest_seconds, 3),
        "tables": counts,
        "progress": _progress_summary(query),
    }


def _wait_caught_up(job: Any, topic: str, bootstrap: str, timeout: float) -> float | None:
    """Seconds until the last committed batch covers the topic's end offsets (None: timeout)."""
    from riverdelta.ops.health import end_offsets, read_checkpoint

    ends = end_offsets(bootstrap, topic)
    t = _now()
    while _now() - t < timeout:
        state = read_checkpoint(job.checkpoint)
        if state and all(state.end_offsets.get(p, 0) >= end for p, end in ends.items()):
            return _now() - t
        time.sleep(0.2)
    return None


def _lag(job: Any, topic: str, bootstrap: str) -> int:
    from riverdelta.ops.health import end_offsets, read_checkpoint

    state = read_checkpoint(job.checkpoint)
    done = state.end_offsets if state else {}
    return sum(max(end - done.get(p, 0), 0) for p, end in end_offsets(bootstrap, topic).items())


def _live_job(spec: StreamSpec, root: Path) -> Any:
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

    job = _live_job(spec, root)
    t = _now()
    query = start_query(spark, job, starting="earliest")
    try:
        waited = _wait_caught_up(job, spec.topic, kafka_broker.bootstrap(), timeout)
        seconds = _now() - t
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
        "progress": _progress_summary(query),
    }


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


def live_latency(
    spark: SparkSession, spec: StreamSpec, root: Path, rate: float, seconds: float, timeout: float
) -> dict[str, Any]:
    """Live query on a fresh topic fed at ``rate`` for ``seconds``: latency and final lag."""
    from riverdelta.config.registry import parse_duration
    from riverdelta.embedded import kafka_broker
    from riverdelta.embedded.generator import produce
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops.health import read_checkpoint
    from riverdelta.stream.ingest import start_query

    spec = spec.on_topic(f"{spec.topic}.bench-live")
    kafka_client.create_topics({spec.topic: spec.partitions})
    bootstrap = kafka_broker.bootstrap()
    job = _live_job(spec, root)
    query = start_query(spark, job, starting="earliest")
    try:
        # The first (empty) batch is planned and committed before any record is sent.
        t0 = _now()
        while read_checkpoint(job.checkpoint) is None and _now() - t0 < 120:
            time.sleep(0.2)
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
        t_start = _now()
        thread.start()
        lag_samples: list[tuple[float, int]] = []
        while thread.is_alive():
            thread.join(timeout=2.0)
            lag_samples.append((round(_now() - t_start, 1), _lag(job, spec.topic, bootstrap)))
        if errors:
            raise errors[0]
        final_lag = _lag(job, spec.topic, bootstrap)
        drain = _wait_caught_up(job, spec.topic, bootstrap, timeout)
        from riverdelta.stream.ingest import await_gold, stop_gold

        t_gold = _now()
        await_gold(job)  # gold's last pass after the last batch
        gold_drain = _now() - t_gold
    finally:
        query.stop()
        stop_gold(job)
    commits = commit_times(job.tables["silver"], job.txn_app_id)
    hist = latency_histogram(spark, job.tables["silver"], commits)
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
    counts = _table_counts(spark, job)
    trigger = parse_duration(spec.trigger).total_seconds()
    input_rate = sent["sent"] / sent["seconds"]
    lag_seconds = final_lag / input_rate if input_rate else 0.0
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
        "final_lag_records": final_lag,
        "final_lag_seconds": round(lag_seconds, 2),
        "drain_seconds": round(drain, 3) if drain is not None else None,
        "gold_trigger": spec.gold_trigger,
        "gold": gold,
        "gold_drain_seconds": round(gold_drain, 3),
        # Kept up: what was left when the producer stopped is at most two triggers of input.
        "kept_up": drain is not None and lag_seconds <= 2 * trigger,
        "lag_samples": lag_samples,
        "histogram": hist,
        "tables": counts,
        "progress": _progress_summary(query),
    }


def _synthetic_batch(spark: SparkSession, spec: StreamSpec, n: int, seed: int, base, offset: int):
    """A Kafka-shaped micro-batch of ``n`` generated records (no broker: the batch alone)."""
    from riverdelta.embedded.generator import generate

    now = datetime.now(UTC)
    rows = [
        (e.key, e.value, spec.topic, i % spec.partitions, offset + i, now)
        for i, e in enumerate(generate(spec, n, seed=seed, base_time=base))
    ]
    schema = (
        "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
    )
    df = spark.createDataFrame(rows, schema).persist()
    df.count()
    return df


def _commits(paths: list[str]) -> int:
    return sum(len(list((Path(p) / "_delta_log").glob("*.json"))) for p in paths)


def table_growth(spark: SparkSession, spec: StreamSpec, root: Path, big_tables: str) -> dict:
    """The same clean batches against silver holding 10k rows and holding the replay's 1M.

    ``process_batch`` itself (what the live query runs per batch), fed identical
    generated batches with no poison, so every batch is a clean one: seconds, Spark
    jobs and Delta commits per batch. The tables' own rows are older than the
    watermark, as in any table that has run for longer than that; gold is left out
    (it is the refresher's work, off the batch's path).
    """
    import statistics

    from riverdelta.config.registry import parse_duration
    from riverdelta.stream.batch import process_batch
    from riverdelta.stream.job import IngestMode, make_job

    spec = dataclasses.replace(spec, gold=())
    base = datetime.now(UTC) + 3 * parse_duration(spec.watermark)
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    found: dict[str, Any] = {}
    for name, tables_root in (("small", str(root / "small")), ("large", big_tables)):
        job = make_job(
            spec,
            IngestMode.LIVE,
            checkpoint=str(root / f"cp-{name}"),
            tables_root=tables_root,
            ops_root=str(root / f"ops-{name}"),
        )
        offset = 10_000_000
        if name == "small":
            seed_df = _synthetic_batch(spark, spec, GROWTH_SMALL, 500, base - timedelta(hours=1), 0)
            process_batch(job, seed_df, 0)
            seed_df.unpersist()
        rows = [
            spark.read.format("delta").load(job.tables["silver"]).count(),
        ]
        batches = []
        for i in range(4):
            df = _synthetic_batch(
                spark, spec, GROWTH_BATCH, 600 + i, base, offset + i * GROWTH_BATCH
            )
            paths = [*job.tables.paths.values(), job.batches_path]
            before = _commits(paths)
            group = f"growth-{name}-{i}"
            sc.setJobGroup(group, group)
            t = _now()
            process_batch(job, df, 1 + i)
            seconds = _now() - t
            sc.setJobGroup("", "")
            batches.append(
                {
                    "seconds": round(seconds, 3),
                    "jobs": len(tracker.getJobIdsForGroup(group)),
                    "commits": _commits(paths) - before,
                }
            )
            df.unpersist()
        steady = batches[1:]  # the first batch of a driver also reads its high-water mark
        found[name] = {
            "silver_rows": rows[0],
            "batches": batches,
            "median_seconds": round(statistics.median(b["seconds"] for b in steady), 3),
            "jobs": max(b["jobs"] for b in steady),
            "commits": max(b["commits"] for b in steady),
        }
    found["ratio"] = _ratio(found["large"]["median_seconds"], found["small"]["median_seconds"])
    return found


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
    from riverdelta.quality.gate import time_validation_vs_scan

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

    from riverdelta.quality.gate import resolve_table

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
        t = _now()
        done = subprocess.run(
            [sys.executable, "-c", _VALIDATE_ONCE, table],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        wall = round(_now() - t, 3)
        out[engine] = {"wall_seconds": wall, **json.loads(done.stdout.strip().splitlines()[-1])}
    out["rows"] = out["pandas"]["rows"]
    out["spark_vs_pandas"] = _ratio(out["spark"]["wall_seconds"], out["pandas"]["wall_seconds"])
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


# --------------------------------------------------------------------------- machine


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    import psutil

    from riverdelta.launch import jars

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    kafka = next(
        (
            p.name.removeprefix("kafka_").removesuffix(".jar")
            for p in jars.jars("kafka")
            if p.name.startswith("kafka_2")
        ),
        None,
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "versions": {
            "python": platform.python_version(),
            "java": java.splitlines()[0] if java else None,
            "kafka": kafka,
            "pyspark": _version("pyspark"),
            "delta-spark": _version("delta-spark"),
            "great-expectations": _version("great-expectations"),
            "apache-airflow": _version("apache-airflow"),
            "confluent-kafka": _version("confluent-kafka"),
        },
    }


# --------------------------------------------------------------------------- the run


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def evaluate(results: dict[str, Any]) -> None:
    """Derived ratios and targets, computed from the measured figures in ``results``."""
    ph = results["phases"]
    replay_rate = ph["replay"]["rows_per_second"]
    # What the live query really sustains: rows per second of batch time under load.
    busy = [b for b in ph["live"].get("profile", {}).get("batches", []) if b["records"]]
    seconds = sum(b["seconds"] for b in busy)
    ph["live"]["sustained_rows_per_second"] = (
        round(sum(b["records"] for b in busy) / seconds, 1) if seconds else None
    )
    results["ratios"] = {
        "ingest_vs_raw_consumer": _ratio(replay_rate, ph["raw_consumer"]["rows_per_second"]),
        "ingest_vs_naive_spark": _ratio(replay_rate, ph["naive_spark"]["rows_per_second"]),
        "validation_vs_scan": ph["validation"]["ratio"],
        "backfill_vs_live": _ratio(replay_rate, ph["live_max"]["rows_per_second"]),
    }
    growth = ph.get("growth", {})
    golds = ph["live"].get("gold", {})
    measured = {
        **results["ratios"],
        "live_kept_up": int(bool(ph["live"]["kept_up"])),
        "gold_p95_seconds": max((g["p95_seconds"] or 0 for g in golds.values()), default=None),
        "batch_growth_ratio": growth.get("ratio"),
        "jobs_per_clean_batch": growth.get("large", {}).get("jobs"),
        "commits_per_clean_batch": growth.get("large", {}).get("commits"),
        "live_p95_seconds": ph["live"]["p95_seconds"],
        "increment_validation_seconds": ph.get("increment_validation", {})
        .get("pandas", {})
        .get("wall_seconds"),
        "dag_parse_max_seconds": ph["dag_parse"]["max_parse_seconds"],
        # Smoke runs do not start Airflow: no freshness figure, the target reads missed.
        "validated_freshness_p95_seconds": ph.get("freshness", {})
        .get("validated", {})
        .get("p95_seconds"),
    }
    results["targets"] = [
        {
            "key": key,
            "label": label,
            "target": f"{op} {threshold}",
            "value": measured[key],
            "met": measured[key] is not None
            and (measured[key] >= threshold if op == ">=" else measured[key] <= threshold),
        }
        for key, label, op, threshold in TARGETS
    ]


def run(cfg: Config) -> dict[str, Any]:
    from riverdelta.config.registry import load_registry
    from riverdelta.embedded import kafka_broker

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (cfg.out / f"bench-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=False)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "records": cfg.records,
            "live_seconds": cfg.live_seconds,
            "live_load": LIVE_LOAD,
            "poison_rate": POISON_RATE,
            "duplicate_rate": DUPLICATE_RATE,
            "seed": SEED,
            "smoke": cfg.smoke,
            "warmup": cfg.warmup,
        },
        "machine": machine(),
        "load_average": {"start": _load()},
        "phases": {},
        "out": str(out),
    }
    phases = results["phases"]

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        load_before, t = _load(), _now()
        value = fn()
        value["phase_seconds"] = round(_now() - t, 3)
        value["load_average"] = {"before": load_before, "after": _load()}
        phases[name] = value
        print(f"bench: {name}: {_brief(value)}", file=sys.stderr, flush=True)
        return value

    with isolated_home(out / "home"):
        s = settings()
        lake = Path(s.lake)
        spec = load_registry().get(STREAM)
        spark = sampler = None
        own_spark = False
        try:
            sampler = MemorySampler(kafka_broker.start().pid)
            sampler.start()
            spark, own_spark = _spark()
            if cfg.warmup:
                phase("warmup", lambda: warmup(spark, spec, lake / "bench-warmup"))
            phase("produce", lambda: produce_dataset(spec, cfg.records, s.kafka_bootstrap))
            phase("raw_consumer", lambda: raw_consumer(spec.topic, s.kafka_bootstrap))
            phase("naive_spark", lambda: naive_spark(spark, spec.topic, lake, cfg.records))
            with BatchProfiler(spark) as prof:
                phase("replay", lambda: replay(spark, spec, lake, cfg.records, default_tables=True))
            phases["replay"]["profile"] = prof.report()
            phase(
                "live_max",
                lambda: live_maximum(
                    spark, spec, lake / "bench-live-max", cfg.records, cfg.drain_timeout
                ),
            )
            rate = LIVE_LOAD * phases["replay"]["rows_per_second"]
            with BatchProfiler(spark) as prof:
                phase(
                    "live",
                    lambda: live_latency(
                        spark,
                        spec,
                        lake / "bench-live",
                        rate,
                        cfg.live_seconds,
                        cfg.drain_timeout,
                    ),
                )
            phases["live"]["profile"] = prof.report()
            phase(
                "growth",
                lambda: table_growth(spark, spec, lake / "bench-growth", str(lake / "tables")),
            )
            phase("validation", lambda: validation(spark))
            phase("increment_validation", lambda: increment_validation(spark))
            phase("dag_parse", dag_parse_times)
            if not cfg.smoke:
                from riverdelta.bench.freshness import validated_freshness

                fresh_rate = LIVE_LOAD * phases["live_max"]["rows_per_second"]
                phase(
                    "freshness",
                    lambda: validated_freshness(
                        STREAM, fresh_rate, cfg.live_seconds, out / "home", cfg.drain_timeout
                    ),
                )
        except BaseException as exc:
            # What was measured before the failure is still worth reading.
            results["error"] = repr(exc)
            (out / "results.partial.json").write_text(json.dumps(results, indent=2, default=str))
            raise
        finally:
            if sampler is not None:
                results["peak_memory"] = sampler.stop()
            if spark is not None:
                for query in spark.streams.active:
                    with contextlib.suppress(Exception):
                        query.stop()
                if own_spark:
                    spark.stop()
            kafka_broker.stop()
    results["load_average"]["end"] = _load()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    evaluate(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(render_markdown(results))
    plot(results, out)
    if cfg.write_docs:
        write_docs(results, DOCS)
    return results


def _spark() -> tuple[SparkSession, bool]:
    """The session, and whether this run created it (a session it found stays running)."""
    from pyspark import SparkContext

    from riverdelta.launch.spark import get_spark

    existed = SparkContext._active_spark_context is not None
    spark = get_spark("riverdelta-bench", ui=False)
    spark.sparkContext.setLogLevel("ERROR")
    return spark, not existed


def _brief(value: dict[str, Any]) -> str:
    keys = ("rows", "rows_per_second", "p95_seconds", "ratio", "sent", "phase_seconds")
    parts = [f"{k}={value[k]}" for k in keys if k in value]
    return ", ".join(parts) or f"{len(value)} figures"


# --------------------------------------------------------------------------- reports


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _increment_lines(inc: dict[str, Any] | None) -> list[str]:
    if not inc:
        return []
    p, s = inc["pandas"], inc["spark"]
    return [
        f"Increment of {inc['rows']:,} rows of `{inc['table']}` validated in a fresh process "
        f"(as an Airflow task): GX pandas over delta-rs {p['wall_seconds']} s wall, of which "
        f"{p['import_seconds']} s importing GX and {p['validate_seconds']} s validating; "
        f"GX Spark {s['wall_seconds']} s wall ({s['import_seconds']} s importing GX, "
        f"{s['validate_seconds']} s validating, the JVM start included); same verdict: "
        f"{p['success'] == s['success'] and p['rows'] == s['rows']}.",
        "",
    ]


def _freshness_lines(fr: dict[str, Any] | None) -> list[str]:
    if not fr:
        return []
    ing, val = fr["ingest"], fr["validated"]
    return [
        f"Validated freshness at {LIVE_LOAD:.0%} of the live maximum ({fr['input_rate']} "
        f"records/s for {fr['produced']:,} records), the stream deployed by its DAG and the "
        f"gate started by its asset watcher ({fr['publications']} publications of silver; "
        f"gate runs by type {fr['gate_runs']}), seconds:",
        "",
        _table(
            ["Kafka timestamp →", "p50", "p95", "max", "rows"],
            [
                [
                    "silver commit",
                    ing["p50_seconds"],
                    ing["p95_seconds"],
                    ing["max_seconds"],
                    fr["rows"],
                ],
                [
                    "silver version published",
                    val["p50_seconds"],
                    val["p95_seconds"],
                    val["max_seconds"],
                    fr["rows"] - fr["rows_unpublished"],
                ],
            ],
        ),
        "",
    ]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: dict[str, Any], *, heading: str = "#") -> str:
    ph, m = results["phases"], results["machine"]
    live = ph["live"]
    ratio_rows = [
        ["Riverdelta replay ÷ raw consumer (rows/s)", results["ratios"]["ingest_vs_raw_consumer"]],
        ["Riverdelta replay ÷ naive Spark (rows/s)", results["ratios"]["ingest_vs_naive_spark"]],
        ["GX validation ÷ one Spark scan (s)", results["ratios"]["validation_vs_scan"]],
        ["backfill (replay) ÷ live maximum (rows/s)", results["ratios"]["backfill_vs_live"]],
    ]
    target_rows = [
        [t["label"], t["target"], t["value"], "met" if t["met"] else "**missed**"]
        for t in results["targets"]
    ]
    abs_rows = [
        ["produce (generator → Kafka)", ph["produce"]["sent"], ph["produce"]["rate"], "records/s"],
        [
            "raw confluent-kafka consumer",
            ph["raw_consumer"]["rows"],
            ph["raw_consumer"]["rows_per_second"],
            f"rows/s ({ph['raw_consumer']['mb_per_second']} MB/s)",
        ],
        [
            "naive Spark (Kafka → Delta, AvailableNow)",
            ph["naive_spark"]["rows"],
            ph["naive_spark"]["rows_per_second"],
            "rows/s",
        ],
        [
            "Riverdelta replay (AvailableNow)",
            ph["replay"]["rows"],
            ph["replay"]["rows_per_second"],
            "rows/s",
        ],
        [
            f"Riverdelta live maximum (trigger {ph['live_max']['trigger']})",
            ph["live_max"]["rows"],
            ph["live_max"]["rows_per_second"],
            "rows/s",
        ],
        [
            f"live at {LIVE_LOAD:.0%} of replay rate: input",
            live["produced"],
            live["input_rate"],
            "records/s in",
        ],
        [
            "live at that load: processed per second of batch time",
            sum(b["records"] for b in live.get("profile", {}).get("batches", [])),
            live.get("sustained_rows_per_second"),
            "rows/s",
        ],
    ]
    lat_rows = [
        [
            live["p50_seconds"],
            live["p95_seconds"],
            live["p99_seconds"],
            live["max_seconds"],
            live["final_lag_records"],
            live["final_lag_seconds"],
            live["drain_seconds"],
            live["kept_up"],
        ]
    ]
    val = ph["validation"]
    mem = results.get("peak_memory", {})
    loads = [
        [name, p["load_average"]["before"], p["load_average"]["after"]] for name, p in ph.items()
    ]
    h = heading
    parts = [
        f"{h} Riverdelta benchmark — {results['started_at']}",
        "",
        f"{results['config']['records']:,} transactions "
        f"({POISON_RATE:.0%} poison, {DUPLICATE_RATE:.0%} duplicates, seed {SEED}); "
        f"live run {results['config']['live_seconds']:.0f} s"
        + (" (smoke sizes)" if results["config"]["smoke"] else "")
        + ".",
        "",
        f"{h}# Ratios",
        "",
        _table(["ratio", "value"], ratio_rows),
        "",
        f"{h}# Targets (reported, never asserted)",
        "",
        _table(["target", "wanted", "measured", ""], target_rows),
        "",
        f"{h}# Absolute figures",
        "",
        _table(["what", "records", "rate", "unit"], abs_rows),
        "",
        f"Latency at {LIVE_LOAD:.0%} load (Kafka timestamp → silver commit), seconds:",
        "",
        _table(
            [
                "p50",
                "p95",
                "p99",
                "max",
                "lag at stop (records)",
                "lag (s)",
                "drain (s)",
                "kept up",
            ],
            lat_rows,
        ),
        "",
        f"Validation of `{val['table']}` ({val['rows']:,} rows): full GX validation "
        f"{val['validation_seconds']} s (GX checkpoint alone {val['gx_seconds']} s), one Spark "
        f"scan of the same metrics {val['scan_seconds']} s.",
        "",
        *_increment_lines(ph.get("increment_validation")),
        *_freshness_lines(ph.get("freshness")),
        "DAG file parse (DagBag in a fresh interpreter, Airflow already imported):",
        "",
        _table(
            ["file", "parse (s)", "importing Airflow first (s)", "DAGs"],
            [
                [f, d["parse_seconds"], d["airflow_import_seconds"], d["dags"]]
                for f, d in ph["dag_parse"]["files"].items()
            ],
        ),
        "",
        f"Peak RSS of the stack: {_fmt(mem.get('total_mb'))} MB (broker "
        f"{_fmt(mem.get('broker_mb'))}, Spark driver JVM {_fmt(mem.get('spark_mb'))}, "
        f"Python {_fmt(mem.get('python_mb'))}) at the sample with the largest sum.",
        "",
        f"{h}# Machine",
        "",
        f"{m['cores']} cores ({m['cpu']}), {m['ram_gb']} GB RAM, {m['os']}. Load average "
        f"(1/5/15 min) at start {results['load_average']['start']}, at end "
        f"{results['load_average']['end']}; other jobs may share the machine.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        _table(["phase", "load average before", "after"], loads),
        "",
    ]
    return "\n".join(parts)


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ph = results["phases"]
    bars = [
        ("raw consumer", ph["raw_consumer"]["rows_per_second"]),
        ("naive Spark", ph["naive_spark"]["rows_per_second"]),
        ("Riverdelta replay", ph["replay"]["rows_per_second"]),
        ("Riverdelta live max", ph["live_max"]["rows_per_second"]),
        (f"live input ({LIVE_LOAD:.0%})", ph["live"]["input_rate"]),
        ("live processed", ph["live"].get("sustained_rows_per_second")),
    ]
    bars = [(label, value) for label, value in bars if value]  # log scale: no zero bars
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="#3b7dd8")
    ax.set_xscale("log")
    ax.set_xlabel("rows / s (log scale)")
    for i, (_, v) in enumerate(bars[::-1]):
        ax.text(v, i, f" {v:,.0f}", va="center")
    ax.set_title(f"Throughput, {results['config']['records']:,} transactions")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    hist = ph["live"]["histogram"]
    total = sum(n for _, n in hist) or 1
    xs, ys, seen = [], [], 0
    for value, n in hist:
        seen += n
        xs.append(value)
        ys.append(seen / total)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.step(xs, ys, where="post")
    for q in ("p50", "p95", "p99"):
        v = ph["live"][f"{q}_seconds"]
        if v is not None:
            ax.axvline(v, ls="--", lw=0.8, color="grey")
            ax.text(v, 0.02, f" {q} {v:.1f}s", rotation=90, va="bottom", fontsize=8)
    ax.set_xlabel("seconds from Kafka timestamp to silver commit")
    ax.set_ylabel("fraction of rows")
    ax.set_title(
        f"Live latency CDF at {ph['live']['input_rate']:,.0f} records/s "
        f"(trigger {ph['live']['trigger']})"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)


def manual_section(text: str | None) -> str:
    """The hand-written section between the markers, markers included."""
    if text and MANUAL_START in text and MANUAL_END in text:
        start = text.index(MANUAL_START)
        return text[start : text.index(MANUAL_END, start) + len(MANUAL_END)]
    return f"{MANUAL_START}\n## Where the time goes\n\n(not written yet)\n{MANUAL_END}"


METHOD = """\
## Method

`make bench` (`python -m riverdelta.bench.run --write-docs`) starts its own Kafka broker
(KRaft, own runtime home under the output folder, free ports) and one Spark session
(`riverdelta.launch.spark.get_spark`, `local[2]`, 1 GB driver), and stops both at the end,
even on failure. On one dataset — `riverdelta.embedded.generator` transactions with 1 % poison
and 1 % duplicates, fixed seed, to a topic with the registry's partitions — it measures,
in this order,
after an untimed warm-up (the naive and replay paths once on 5,000 records, so that
class loading and code generation are not charged to whichever phase runs first):

- **raw consumer** (the limit): a confluent-kafka consumer assigned to every partition
  from the beginning, `consume(10 000)` until the end offsets read at start; rows/s
  and MB/s of key + value bytes. Nothing is decoded or written.
- **naive Spark**: `readStream.format("kafka")` → `select("value")` → Delta append,
  `Trigger.AvailableNow`, fresh checkpoint; wall time from `start()` to termination.
- **Riverdelta replay**: `job.make_job(spec, IngestMode.REPLAY)` + `start_query(...,
  starting="earliest")` (AvailableNow, no `maxOffsetsPerTrigger`, as `riverdelta run
  --mode replay` defaults): bronze, silver, quarantine, gold and `_ops/ingest_batches`;
  wall time from `start_query` to termination, start-up included. Bronze must hold
  exactly the records produced.
- **Riverdelta live maximum**: the live query (`mode="live"`, the registry's
  processing-time trigger, no `maxOffsetsPerTrigger`) started on the same full
  backlog with a fresh checkpoint and tables; rows / seconds from `start_query` until
  the checkpoint's last committed batch covers the topic's end offsets. *backfill ÷
  live* is the replay rate over this rate.
- **Live latency**: a fresh topic and tables, the live query running, then a producer
  thread (`generator.produce(rate=…)`) at 60 % of the measured replay rate for the
  live duration. A row is *visible* when the Delta version of silver that added it is
  committed: the commit's `commitInfo.timestamp` in `_delta_log`, found through the
  `txn` action (appId = the job's app id, version = the batch id) every ingest write
  carries. Latency = that commit time - the record's Kafka timestamp (producer
  CreateTime), for every silver row, bucketed at 10 ms; p50/p95/p99 from the buckets.
  Publication by the quality gate (analysts' reads) comes later and is not included.
  *Final lag* = topic end offsets - the last committed batch's end offsets when the
  producer stops; *kept up* = the query then drains that lag and it is at most two
  trigger intervals of input.
- **Validation vs scan**: `quality.time_validation_vs_scan("transactions_silver")`:
  a full validation (GX checkpoint, history row, Data Docs, publication) vs one Spark
  aggregation computing the suite's metrics on the same pinned version.
- **DAG parse**: each file in `dags/` through `DagBag` in a fresh interpreter with
  the Airflow environment, timed after `airflow` is imported (the DAG processor has
  it loaded already); the import time is reported beside it.
- **Peak memory**: RSS of the broker JVM + the Spark driver JVM + the Python process,
  sampled every 0.5 s with psutil; the largest sum.

Every phase records the load average before and after: other jobs share this machine,
so compare the ratios (measured side by side) rather than the absolute rates. Targets
are reported as met / missed, never asserted. Each run's results.json, results.md,
throughput.png and latency_cdf.png are in `results/bench-<timestamp>/` (not committed).
"""


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def write_docs(results: dict[str, Any], path: Path) -> None:
    existing = path.read_text() if path.exists() else None
    body = render_markdown(results).split("\n", 1)[1]
    text = "\n".join(
        [
            "# Benchmarks",
            "",
            "Regenerated by `make bench` (except the hand-written section between the "
            "markers). Latest run: "
            f"{results['started_at']}, results in `{_shown(Path(results['out']))}/`.",
            body.rstrip(),
            "",
            METHOD,
            manual_section(existing),
            "",
        ]
    )
    path.write_text(text)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m riverdelta.bench.run",
        description="Measure Riverdelta against the limits of this machine (see docs/benchmarks.md).",
    )
    parser.add_argument("--records", type=int, default=None, help="dataset size (1,000,000)")
    parser.add_argument(
        "--live-seconds", type=float, default=None, help="live producer duration (120)"
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (3,000 records, 10 s live) for tests"
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite docs/benchmarks.md (the full run)"
    )
    args = parser.parse_args(argv)
    records = args.records or (3_000 if args.smoke else 1_000_000)
    live = args.live_seconds or (10.0 if args.smoke else 120.0)
    if records < 100 or live <= 0:
        parser.error("--records must be at least 100 and --live-seconds positive")
    return Config(
        records=records,
        live_seconds=live,
        out=args.out,
        smoke=args.smoke,
        write_docs=args.write_docs,
        # Smoke runs check that every figure is produced, not its value: no warm-up.
        warmup=not args.smoke,
        drain_timeout=120.0 if args.smoke else 600.0,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)

    def terminated(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through run()'s clean-up

    # Only the main thread may set handlers; elsewhere (an embedding test) clean-up relies
    # on the caller's exceptions alone.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    try:
        results = run(cfg)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(render_markdown(results))
    print(f"results: {results['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
