"""`make bench` at smoke sizes, in-process: every figure is there, counts are exact."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

RECORDS = 3_000


def _positive(results: dict, dotted: str) -> float:
    value = results
    for key in dotted.split("."):
        value = value[key]
    assert isinstance(value, int | float) and value > 0, f"{dotted} = {value!r}"
    return value


def test_bench_smoke(spark, tmp_path):
    from riverdelta.bench import run as bench
    from riverdelta.bench.targets import TARGETS

    docs_before = bench.DOCS.read_bytes() if bench.DOCS.exists() else None
    # The test session's Spark is reused (and left running); the broker is the bench's own.
    assert bench.main(["--smoke", "--records", str(RECORDS), "--out", str(tmp_path)]) == 0

    (out,) = tmp_path.glob("bench-*")
    results = json.loads((out / "results.json").read_text())
    for figure in (
        "phases.raw_consumer.rows_per_second",
        "phases.raw_consumer.mb_per_second",
        "phases.naive_spark.rows_per_second",
        "phases.replay.rows_per_second",
        "phases.live_max.rows_per_second",
        "phases.live.input_rate",
        "phases.live.p50_seconds",
        "phases.live.p95_seconds",
        "phases.live.p99_seconds",
        "phases.validation.validation_seconds",
        "phases.validation.scan_seconds",
        "phases.dag_parse.max_parse_seconds",
        "ratios.ingest_vs_raw_consumer",
        "ratios.ingest_vs_naive_spark",
        "ratios.validation_vs_scan",
        "ratios.backfill_vs_live",
        "peak_memory.total_mb",
        "peak_memory.broker_mb",
        "peak_memory.spark_mb",
        "peak_memory.python_mb",
        "machine.cores",
    ):
        _positive(results, figure)
    assert len(results["load_average"]["start"]) == 3
    assert {t["key"] for t in results["targets"]} == {key for key, *_ in TARGETS}
    assert all(isinstance(t["met"], bool) for t in results["targets"])

    ph = results["phases"]
    produced = ph["produce"]
    assert produced["sent"] == RECORDS
    # Every record read by every reader, and reconciled by the replay.
    assert ph["raw_consumer"]["rows"] == RECORDS
    assert ph["naive_spark"]["rows"] == RECORDS
    tables = ph["replay"]["tables"]
    assert tables["bronze"] == RECORDS
    assert tables["silver"] == produced["valid"] + produced["late"]
    assert tables["quarantine"] == produced["poison"]
    assert tables["duplicates_counted"] == produced["duplicates"]
    assert tables["reconciles"] == 1
    live = ph["live"]
    assert live["tables"]["bronze"] == live["produced"]
    # Latency covers every row that reached silver.
    assert live["rows_measured"] == live["tables"]["silver"]
    assert ph["replay"]["profile"]["batches"], "the replay's batches were profiled"
    # The same increment (silver's rows again, under new ids) validated by each engine.
    inc = ph["increment_validation"]
    assert (inc["pandas"]["engine"], inc["spark"]["engine"]) == ("pandas", "spark")
    assert inc["pandas"]["rows"] == inc["spark"]["rows"] == min(10_000, ph["validation"]["rows"])
    assert inc["pandas"]["success"] and inc["spark"]["success"]

    markdown = (out / "results.md").read_text()
    assert "## Ratios" in markdown and "## Machine" in markdown
    for png in ("throughput.png", "latency_cdf.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # Only the full run (--write-docs) rewrites the docs page.
    assert (bench.DOCS.read_bytes() if bench.DOCS.exists() else None) == docs_before
