"""Batch time as silver grows: the same clean batches against a small and a large table."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riverdelta.bench.common import now, ratio

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from riverdelta.config.registry import StreamSpec

GROWTH_BATCH = 20_000  # records per probe batch of the table-growth phase
GROWTH_SMALL = 10_000  # rows in silver of the small table


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
            t = now()
            process_batch(job, df, 1 + i)
            seconds = now() - t
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
    found["ratio"] = ratio(found["large"]["median_seconds"], found["small"]["median_seconds"])
    return found
