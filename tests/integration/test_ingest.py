"""Streaming ingest against a real broker, Spark and Delta: the invariants hold."""

from __future__ import annotations

import pytest

from tests.integration.ingest_helpers import assert_invariants, read, run_replay, spec_on_topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stream", ["transactions", "page_views"])
def test_replay_reconciles(spark, kafka, topic, lake, stream):
    from riverdelta.embedded.generator import produce

    spec = spec_on_topic(stream, topic)
    summary = produce(
        spec, 6000, bootstrap=kafka, poison_rate=0.05, duplicate_rate=0.03, late_rate=0.02, seed=7
    )
    # Several micro-batches, so de-duplication across batches is exercised too.
    job = run_replay(spark, spec, lake, max_offsets=2500)
    assert read(spark, job.batches_path).count() >= 3
    assert_invariants(spark, spec, job, summary)


def test_replayed_batch_is_skipped(spark, kafka, topic, lake):
    """Running a batch again (as after a crash) writes nothing twice."""
    from riverdelta.embedded.generator import produce
    from riverdelta.stream.batch import process_batch

    spec = spec_on_topic("transactions", topic)
    summary = produce(spec, 1000, bootstrap=kafka, poison_rate=0.05, duplicate_rate=0.05, seed=3)
    job = run_replay(spark, spec, lake)
    versions = {k: read(spark, p).count() for k, p in job.tables.paths.items()}
    raw = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", kafka)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    counts = process_batch(job, raw, 0)
    assert {k: read(spark, p).count() for k, p in job.tables.paths.items()} == versions
    # The re-run computes the same numbers, not "everything is a duplicate".
    assert counts["silver"] == summary["valid"] + summary["late"]
    assert_invariants(spark, spec, job, summary)


def test_checkpoint_of_another_stream_is_refused(lake):
    from riverdelta.config.registry import load_registry
    from riverdelta.stream.job import CheckpointMismatchError, make_job

    reg = load_registry()
    cp = str(lake / "cp")
    make_job(reg.get("transactions"), "live", checkpoint=cp, tables_root=str(lake))
    with pytest.raises(CheckpointMismatchError, match="belongs to stream 'transactions'"):
        make_job(reg.get("page_views"), "live", checkpoint=cp, tables_root=str(lake))
