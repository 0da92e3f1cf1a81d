"""A stream over several topics: named ones, or a pattern that picks up topics created later.

Everything a stream keys by offset (the checkpoint, lag, backfill ranges, the tables'
held positions, the batch ledger) is per topic-partition, so two topics' partition 0
never mix.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import pytest

from tests.integration.ingest_helpers import (
    assert_invariants,
    lake_job,
    read,
    run_replay,
    spec_on_topic,
    wait_for,
)

pytestmark = pytest.mark.integration


def _merged(*summaries: dict) -> dict:
    """The generator summaries of several topics as one (what assert_invariants reads)."""
    out = {k: sum(s[k] for s in summaries) for k in ("sent", "valid", "late", "duplicates")}
    out["by_kind"] = dict(sum((Counter(s["by_kind"]) for s in summaries), Counter()))
    return out


def _produce(spec, topic: str, n: int, seed: int, bootstrap: str) -> dict:
    from riverdelta.embedded.generator import produce

    return produce(
        spec.on_topic(topic),
        n,
        bootstrap=bootstrap,
        poison_rate=0.03,
        duplicate_rate=0.02,
        seed=seed,
    )


def test_two_named_topics_reconcile_and_resolve_per_topic_partition(spark, kafka, topic, lake):
    from pyspark.sql import functions as F

    from riverdelta.backfill.replay import resolve
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops.health import compute_health
    from riverdelta.stream.ingest import start_query, stop_gold

    eu, us = f"{topic}.eu", f"{topic}.us"
    kafka_client.create_topics({eu: 2, us: 3})
    spec = dataclasses.replace(spec_on_topic("transactions", eu), topics=(eu, us))
    summary = _merged(_produce(spec, eu, 1200, 1, kafka), _produce(spec, us, 800, 2, kafka))

    job = run_replay(spark, spec, lake, max_offsets=700)
    assert read(spark, job.batches_path).count() >= 3
    assert_invariants(spark, spec, job, summary)
    bronze = read(spark, job.tables["bronze"])
    per_topic = {r["topic"]: r["count"] for r in bronze.groupBy("topic").count().collect()}
    assert per_topic == {eu: 1200, us: 800}

    # Lag is per topic-partition: both topics' partition 0 are counted, neither hides the other.
    health = compute_health(job.checkpoint, kafka, spec.source)
    assert health.kafka_error is None and health.lag_records == 0
    assert set(health.partition_lag) == {(eu, 0), (eu, 1), (us, 0), (us, 1), (us, 2)}
    assert sum(health.committed_offsets.values()) == 2000
    # The batch ledger names the topic of every offset range.
    ledger = read(spark, job.batches_path).where(F.col("app_id") == job.txn_app_id).collect()
    spans = [json.loads(r["offsets"]) for r in ledger]
    assert {t for s in spans for t in s} == {eu, us}

    # A range of one topic's partition, replayed over the same tables: all of it is present.
    rng = resolve(spec.source, kafka, json.dumps({us: {"1": 10}}), json.dumps({us: {"1": 60}}))
    picked = {tp: rng.end[tp] - rng.start[tp] for tp in rng.start if rng.end[tp] > rng.start[tp]}
    assert (us, 1) in picked and picked[(us, 1)] == 50
    rng_job = lake_job(spec, "replay", lake, "range", until=rng.end, skip_present=True)
    query = start_query(spark, rng_job, starting=rng.starting_offsets_json())
    query.awaitTermination()
    assert query.exception() is None
    stop_gold(rng_job)
    done = (
        read(spark, rng_job.batches_path)
        .where(F.col("app_id") == rng_job.txn_app_id)
        .agg(F.sum("already_present"), F.sum("silver"))
        .first()
    )
    assert (done[0], done[1]) == (rng.records, 0), "a present range writes nothing again"
    assert read(spark, job.tables["bronze"]).count() == 2000


def test_a_pattern_stream_picks_up_a_topic_created_later(spark, kafka, topic, lake, monkeypatch):
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops.health import compute_health
    from riverdelta.stream.ingest import start_query
    from spark_apps.ingest import kafka_problem

    first, later = f"{topic}.p-1", f"{topic}.p-2"
    kafka_client.create_topics({first: 2})
    base = dataclasses.replace(spec_on_topic("transactions", first), gold=())
    spec = dataclasses.replace(base, topics=(), topic_pattern=re.escape(f"{topic}.p-") + r"\d+")

    # A pattern that matches nothing is refused before a query starts, in one line.
    nothing = dataclasses.replace(spec, topic_pattern=re.escape(topic) + r"\.none-.*")
    problem = kafka_problem(nothing)
    assert problem is not None and "matches no topic" in problem and "\n" not in problem
    assert kafka_problem(spec) is None

    sent = [_produce(spec, first, 400, 3, kafka)]
    job = lake_job(spec, "live", lake, "live")
    query = start_query(spark, job, starting="earliest", trigger="1 second")
    try:

        def caught_up(total: int):
            def check():
                h = compute_health(job.checkpoint, kafka, spec.source)
                held = (
                    read(spark, job.tables["bronze"]).count() if h.last_batch_id is not None else 0
                )
                return h if h.lag_records == 0 and held == total else None

            return check

        wait_for(caught_up(400), 180, "the first topic ingested")
        kafka_client.create_topics({later: 1})
        sent.append(_produce(spec, later, 250, 4, kafka))
        # Health lists the new topic at once (its records are lag until the query reads them).
        health = compute_health(job.checkpoint, kafka, spec.source)
        assert (later, 0) in health.topic_end_offsets
        health = wait_for(caught_up(650), 180, "the topic created later ingested")
        assert query.exception() is None
    finally:
        query.stop()
    assert set(health.committed_offsets) == {(first, 0), (first, 1), (later, 0)}
    per_topic = {
        r["topic"]: r["count"]
        for r in read(spark, job.tables["bronze"]).groupBy("topic").count().collect()
    }
    assert per_topic == {first: 400, later: 250}
    assert_invariants(spark, spec, job, _merged(*sent))
