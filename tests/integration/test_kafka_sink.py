"""Gold back to Kafka, exactly once for read_committed readers, across driver SIGKILLs.

A live driver with a ``kafka_sink`` on the transactions gold table is killed
(SIGKILL of its process group) twice mid-stream, each time after it committed a
batch of its own, and restarted. When it has caught up, the sink topic is read
twice: with ``read_committed`` (every committed refresh's records exactly once,
the newest per key and window equal to gold) and with ``read_uncommitted`` (what
a plain consumer sees; reported, asserted only to be a superset).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter

import pytest
import yaml

from tests.integration.ingest_helpers import (
    assert_invariants,
    gold_caught_up,
    produce_in_background,
    read,
    start_live_driver,
    wait_for,
)
from tests.integration.test_exactly_once import _counted

pytestmark = pytest.mark.integration

STREAM, GOLD = "transactions", "user_5m"


def _registry(tmp_path, topic: str, sink_topic: str):
    from riverdelta.config.settings import settings

    data = yaml.safe_load(settings().streams_file.read_text())
    # Small batches: the kills land between batches of a stream still being worked through.
    stream = {
        **data["streams"][STREAM],
        "topic": topic,
        "gold_trigger": "2 seconds",
        "max_offsets_per_trigger": 1000,
    }
    stream["gold"] = [
        {**g, "kafka_sink": {"topic": sink_topic}} if g["name"] == GOLD else g
        for g in stream["gold"]
    ]
    data["streams"] = {STREAM: stream}
    path = tmp_path / "streams.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _read_all(topic: str, isolation: str, timeout: float = 60.0) -> list:
    """Every record of ``topic`` from the start, as the given isolation level returns them."""
    from confluent_kafka import KafkaError, TopicPartition

    from riverdelta.kafka import client as kafka_client

    consumer = kafka_client.consumer(**{"isolation.level": isolation, "enable.partition.eof": True})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        at_end: set[int] = set()
        out = []
        deadline = time.monotonic() + timeout
        while len(at_end) < len(parts):
            assert time.monotonic() < deadline, f"{topic} not read to its end ({isolation})"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_end.add(msg.partition())
                continue
            at_end.discard(msg.partition())
            out.append(msg)
        return out
    finally:
        consumer.close()


def _epoch(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def _kill(info) -> None:
    from riverdelta.launch import procs

    os.killpg(info.pid, signal.SIGKILL)
    while procs.alive(info):
        os.waitpid(info.pid, os.WNOHANG)
        time.sleep(0.1)


def test_kafka_sink_exactly_once_under_sigkill(spark, kafka, topic, lake, tmp_path, capsys):
    from pyspark.sql import functions as F

    from riverdelta.config.registry import load_registry
    from riverdelta.launch import procs
    from riverdelta.stream.job import make_job
    from riverdelta.stream.kafka_sink import MARKER_KEY, Marker, read_marker

    sink_topic = f"{topic}-out"
    registry = _registry(tmp_path, topic, sink_topic)
    spec = load_registry(registry).get(STREAM)
    sink = next(g for g in spec.gold if g.name == GOLD).kafka_sink
    assert sink is not None and sink.key == ("user_id",)
    events, kills, seed = 8_000, 2, 21
    name = f"sink-{topic}"
    started = time.monotonic()
    thread, summary = produce_in_background(spec, events, kafka, seed)
    rng = random.Random(seed)
    info = start_live_driver(registry, lake, STREAM, name)
    job = None
    try:
        for _ in range(kills):
            # Kill after this driver committed a batch of its own, mid-stream.
            before = _counted(spark, job) if job is not None else 0

            def committed_one(before=before):
                nonlocal job
                if job is None and (lake / "cp" / "_riverdelta.json").exists():
                    job = make_job(
                        spec, "live", checkpoint=str(lake / "cp"), tables_root=str(lake / "tables")
                    )
                return job is not None and _counted(spark, job) > before

            # A driver's first batch takes minutes on a loaded two-core machine.
            wait_for(committed_one, 600, "a committed batch", interval=2.0, driver=info)
            time.sleep(rng.uniform(0, 4))
            assert procs.alive(info), procs.tail(info.log)
            _kill(info)
            info = start_live_driver(registry, lake, STREAM, name)
        thread.join()
        wait_for(
            lambda: _counted(spark, job) >= summary["sent"],
            600,
            "every record counted",
            interval=3.0,
            driver=info,
        )
        wait_for(lambda: gold_caught_up(job), 300, "gold to reflect silver", driver=info)
        gold_path = job.tables[f"gold_{GOLD}"]

        def sink_caught_up():
            from riverdelta.storage import roots as storage

            marker = read_marker(sink.marker_topic, timeout=30)
            done = storage.delta_table(gold_path).transaction_version(job.txn_app_id)
            return (
                marker is not None and marker.txn_app_id == job.txn_app_id and marker.batch >= done
            )

        wait_for(sink_caught_up, 300, "the sink to commit gold's last refresh", driver=info)
    finally:
        procs.stop(name, timeout=10)

    assert_invariants(spark, spec, job, summary)

    committed = _read_all(sink_topic, "read_committed")
    uncommitted = _read_all(sink_topic, "read_uncommitted")
    markers = [
        Marker.decode(m.value())
        for m in _read_all(sink.marker_topic, "read_committed")
        if m.key() == MARKER_KEY
    ]
    # One marker per committed refresh, numbered 1..n without a gap or a repeat.
    assert [m.refresh for m in markers] == list(range(1, len(markers) + 1))
    assert len({(m.txn_app_id, m.batch) for m in markers}) == len(markers)

    values = [json.loads(m.value()) for m in committed]
    ids = Counter((v["user_id"], v["window_start"], v["_refresh"]) for v in values)
    duplicates = sum(n - 1 for n in ids.values())
    assert duplicates == 0, [k for k, n in ids.items() if n > 1][:5]
    # As many records as the committed refreshes say they sent, per refresh.
    assert len(values) == sum(m.records for m in markers)
    per_refresh = Counter(v["_refresh"] for v in values)
    assert {m.refresh: m.records for m in markers if m.records} == dict(per_refresh)
    for m in committed:  # keyed by group and window
        v = json.loads(m.value())
        assert json.loads(m.key()) == {"user_id": v["user_id"], "window_start": v["window_start"]}

    # The newest record per (key, window) is the gold row; every gold row was sent.
    newest: dict = {}
    for v in values:
        k = (v["user_id"], _epoch(v["window_start"]))
        if k not in newest or v["_refresh"] > newest[k]["_refresh"]:
            newest[k] = v
    gold = {
        (r["user_id"], r["start"]): r
        for r in read(spark, gold_path)
        .select(
            "user_id",
            F.unix_timestamp("window_start").alias("start"),
            F.unix_timestamp("window_end").alias("end"),
            F.col("total_amount").cast("string").alias("total_amount"),
            "event_count",
        )
        .collect()
    }
    assert set(newest) == set(gold)
    for k, row in gold.items():
        v = newest[k]
        assert (_epoch(v["window_end"]), v["total_amount"], v["event_count"]) == (
            row["end"],
            row["total_amount"],
            row["event_count"],
        ), k

    # A plain consumer sees every committed record and possibly aborted ones too.
    plain = Counter((m.key(), m.value()) for m in uncommitted)
    assert not Counter((m.key(), m.value()) for m in committed) - plain
    plain_ids = Counter(
        (v["user_id"], v["window_start"], v["_refresh"])
        for v in (json.loads(m.value()) for m in uncommitted)
    )
    report = {
        "kills": kills,
        "events": summary["sent"],
        "refreshes_committed": len(markers),
        "read_committed": len(committed),
        "read_uncommitted": len(uncommitted),
        "uncommitted_repeats_of_key_window_refresh": sum(n - 1 for n in plain_ids.values()),
        "duplicates_read_committed": duplicates,
        "gold_rows": len(gold),
        "seconds": round(time.monotonic() - started, 1),
    }
    with capsys.disabled():
        print(f"\nkafka sink exactly-once: {json.dumps(report)}")
