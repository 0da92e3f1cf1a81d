"""On-call backfills through the ``backfill_<name>`` DAG (dag.test(), real Kafka/Spark/Delta/GX).

The replays run as real spark-submit drivers, beside a live stream where the
scenario has one.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.integration.ingest_helpers import (
    Sent,
    assert_invariants,
    produce,
    read,
    run_replay,
    status,
    wait_for,
    wait_gold,
)

pytestmark = pytest.mark.integration


def run_backfill(stream: str, **conf):
    from riverdelta.airflow.stream_dags import backfill_dag
    from riverdelta.config.registry import load_registry

    dag = backfill_dag(load_registry().get(stream))
    return dag.test(run_conf=conf)


def last_backfill(stream: str) -> dict:
    from riverdelta.ops import state as ops

    rows = ops.history(stream, "backfill")
    assert rows, "every backfill is in the ops history"
    return rows[-1]


def ingest_live_in_process(spark, stream: str) -> None:
    """Run the stream's live query in this process until the topic is drained, then stop."""
    from riverdelta.config.registry import load_registry
    from riverdelta.stream.ingest import await_gold, start_query, stop_gold
    from riverdelta.stream.job import make_job

    job = make_job(load_registry().get(stream), "live")
    query = start_query(spark, job, trigger="1 second")
    try:
        query.processAllAvailable()
        await_gold(job)
    finally:
        query.stop()
        stop_gold(job)


def table_versions(stream: str) -> dict[str, int | None]:
    from riverdelta.config.registry import load_registry
    from riverdelta.quality.tables import latest_version
    from riverdelta.storage.lake import TableSet

    spec = load_registry().get(stream)
    return {layer: latest_version(p) for layer, p in TableSet.for_stream(spec).paths.items()}


class Producer:
    """Produces small generator batches in the background until stopped."""

    def __init__(self, stream: str, seed: int, chunk: int = 150, pause: float = 1.0) -> None:
        self.sent = Sent()
        self._stop = threading.Event()
        self._args = (stream, seed, chunk, pause)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stream, seed, chunk, pause = self._args
        i = 0
        while not self._stop.is_set():
            self.sent.add(
                produce(stream, chunk, seed=seed + i, poison_rate=0.02, duplicate_rate=0.02)
            )
            i += 1
            self._stop.wait(pause)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def live_stream(name: str, seed: int) -> Iterator[Sent]:
    """A deployed live stream that has ingested 1500 events; stopped on exit."""
    from riverdelta.ops import control

    sent = Sent()
    control.deploy(name, actor="test")
    try:
        sent.add(produce(name, 1500, seed=seed, poison_rate=0.02, duplicate_rate=0.02))
        wait_for(lambda: status(name)["lag_records"] == 0, 300, "live catch-up")
        yield sent
        wait_gold(_live_job(name))
    finally:
        control.stop(name, actor="test")


def _live_job(name: str):
    from riverdelta.config.registry import load_registry
    from riverdelta.stream.job import make_job

    return make_job(load_registry().get(name), "live")


def test_refusals_change_nothing_and_dry_run_reports(airflow_db, stream_registry, spark):
    from confluent_kafka import TopicPartition

    from riverdelta.backfill import replay as backfill
    from riverdelta.config.registry import load_registry
    from riverdelta.embedded import kafka_broker

    name = stream_registry()
    spec = load_registry().get(name)
    produce(name, 300, seed=7)
    ingest_live_in_process(spark, name)
    before = table_versions(name)
    assert all(v is not None for v in before.values())

    # Retention: the first 10 records of partition 0 are deleted.
    admin = kafka_broker.admin_client()
    for fut in admin.delete_records([TopicPartition(spec.topic, 0, 10)]).values():
        fut.result(30)

    refusals = [
        (
            {"mode": "range", "from": '{"0": 0}', "to": "latest"},
            r"10 record\(s\) were deleted by retention.*partition 0: 10 record",
        ),
        ({"mode": "range", "from": '{"0": 50}', "to": '{"0": 20}'}, "to is before from"),
        (
            {"mode": "range", "from": '{"9": 0}', "to": "latest"},
            r"unknown partition\(s\) \['rd\.\w+ partition 9'\]",
        ),
        ({"mode": "range", "from": '{"0": 1', "to": "latest"}, "malformed offsets JSON"),
        ({"mode": "rebuild", "from": '{"0": 20}', "to": "latest"}, "from must be 'earliest'"),
    ]
    import re

    for conf, message in refusals:
        assert run_backfill(name, **conf).state == "failed", conf
        refused = last_backfill(name)
        assert refused["outcome"] == "refused"
        assert re.search(message, refused["detail"]["reason"]), refused["detail"]["reason"]
        assert table_versions(name) == before, f"{conf} changed a table"

    backfill.acquire_lock(name, "someone-else")
    try:
        assert run_backfill(name, mode="range").state == "failed"
        assert "already running" in last_backfill(name)["detail"]["reason"]
    finally:
        backfill.release_lock(name, "someone-else")
    assert table_versions(name) == before

    # A dry run reports partitions, ranges, records and time span; it writes nothing.
    assert run_backfill(name, **{"mode": "range", "from": "yesterday", "dry_run": True}).state == (
        "failed"
    ), "a dry run refuses what a real run would refuse"
    assert run_backfill(name, mode="range", dry_run=True).state == "success"
    dry = last_backfill(name)
    assert dry["outcome"] == "dry_run"
    assert dry["detail"]["records"] == 290  # 300 sent, 10 deleted by retention
    assert dry["detail"]["partitions"] == [[spec.topic, p] for p in (0, 1, 2)]
    assert dry["detail"]["first_timestamp"] <= dry["detail"]["last_timestamp"]
    assert table_versions(name) == before


class Maintainer:
    """Runs ``maintain_stream`` a few times in the background, ``pause`` seconds apart.

    A few passes, not a tight loop: every compaction costs the live writer one retry
    of the batch it overlaps (its silver append reads silver for de-duplication, so
    Delta checks it against the compaction's files), and compaction runs nightly.
    """

    def __init__(self, stream: str, passes: int = 3, pause: float = 8.0) -> None:
        self.runs: list[dict] = []
        self._stop = threading.Event()
        self._args = (stream, passes, pause)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from riverdelta.ops.maintenance import maintain_stream

        stream, passes, pause = self._args
        for _ in range(passes):
            if self._stop.wait(pause):
                return
            self.runs.append(maintain_stream(stream))

    def __enter__(self) -> Maintainer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_range_while_live_and_maintenance_writes_nothing_twice(airflow_db, stream_registry, spark):
    """The live stream, a range backfill and table maintenance at once: none fails, no
    record is written twice or lost, and the gate's next increment is exactly the new rows."""
    from riverdelta.config.registry import load_registry
    from riverdelta.quality.gate import validate_table
    from riverdelta.stream.job import make_job

    name = stream_registry()
    with live_stream(name, seed=11) as sent:
        first = validate_table(f"{name}_silver")
        with Producer(name, seed=1000) as live_traffic, Maintainer(name) as maint:
            run = run_backfill(name, mode="range", max_offsets_per_trigger=600)
            assert run.state == "success"
        sent.add(live_traffic.sent.summary)
        wait_for(lambda: status(name)["lag_records"] == 0, 300, "live catch-up after the range")
    reports = [t for r in maint.runs for t in r["tables"]]
    assert [t.error for t in reports if t.error] == []
    compacted = [t for t in reports if t.compacted and t.compacted["files_removed"]]
    assert {t.table for t in compacted} >= {f"{name}_bronze", f"{name}_silver"}
    assert all(t.compacted is None for t in reports if t.table.endswith("_user_5m"))
    during = [r for r in maint.runs if r["backfill_running"]]
    assert during and all(t.vacuumed == 0 for r in during for t in r["tables"])

    done = last_backfill(name)
    assert done["outcome"] == "ok"
    counts = done["detail"]["replay"]["counts"]
    # Every replayed record was already there: none written again.
    assert counts["already_present"] == done["detail"]["records"] >= 1500
    assert counts["records_in"] == 0 and counts["silver"] == 0 and counts["quarantined"] == 0
    spec = load_registry().get(name)
    totals = assert_invariants(spark, spec, make_job(spec, "live"), sent.summary)
    # Compactions in the range add no rows: the increment is exactly the rows appended
    # since the first validation, read from their original files.
    second = validate_table(f"{name}_silver")
    assert second["full"] is False and second["from_version"] == first["to_version"]
    assert second["rows_checked"] == totals["silver"] - first["rows_checked"]


def test_quarantine_replay_resolves_what_now_passes(airflow_db, stream_registry, spark):
    import os

    from confluent_kafka import Producer as KafkaProducer
    from pyspark.sql import functions as F

    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.storage.lake import TableSet
    from riverdelta.stream import transforms as T

    name = stream_registry()
    spec = load_registry().get(name)
    good = produce(name, 400, seed=21, poison_rate=0.05)
    # 30 records with a currency the contract does not know yet.
    producer = KafkaProducer({"bootstrap.servers": settings().kafka_bootstrap})
    xyz_ids = []
    for i in range(30):
        event_id = str(uuid.uuid4())
        xyz_ids.append(event_id)
        record = {
            "event_id": event_id,
            "user_id": f"user-{i}",
            "action": "purchase",
            "amount": "12.50",
            "currency": "XYZ",
            "merchant": "Acme Grocers",
            "event_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        producer.produce(spec.topic, key=record["user_id"], value=json.dumps(record))
    producer.flush(30)
    ingest_live_in_process(spark, name)
    tables = TableSet.for_stream(spec)
    quarantine = read(spark, tables["quarantine"])
    assert quarantine.where(F.col("reason") == "not_allowed").count() >= 30
    other_poison = quarantine.count() - 30
    silver_before = read(spark, tables["silver"]).count()
    bronze_before = read(spark, tables["bronze"]).count()

    # The contract fix: XYZ becomes a known currency.
    path = Path(os.environ["RIVERDELTA_STREAMS"])
    data = yaml.safe_load(path.read_text())
    for field in data["streams"][name]["contract"]["fields"]:
        if field["name"] == "currency":
            field["allowed"].append("XYZ")
    path.write_text(yaml.safe_dump(data))

    assert run_backfill(name, mode="range").state == "success"
    done = last_backfill(name)
    assert done["outcome"] == "ok" and done["detail"]["replay"]["counts"]["resolved"] == 30

    quarantine = read(spark, tables["quarantine"])
    resolved = quarantine.where(F.col("resolved"))
    assert resolved.count() == 30, "resolved, not deleted"
    assert (
        resolved.where(F.col("resolved_by").isNull() | F.col("resolved_at").isNull()).count() == 0
    )
    assert quarantine.count() == 30 + other_poison
    assert quarantine.where(~F.col("resolved")).count() == other_poison, "only those resolved"
    silver = read(spark, tables["silver"])
    assert silver.count() == silver_before + 30 == good["valid"] + good["late"] + 30
    assert silver.select("event_id").distinct().count() == silver.count()
    assert silver.where(F.col("event_id").isin(xyz_ids)).count() == 30
    assert read(spark, tables["bronze"]).count() == bronze_before, "bronze is never rewritten"
    for gold in spec.gold:
        stored = read(spark, tables[f"gold_{gold.name}"]).drop("updated_at")
        fresh = T.aggregate_gold(silver, spec, gold).select(*stored.columns)
        assert stored.exceptAll(fresh).count() == 0 and fresh.exceptAll(stored).count() == 0


def _business_columns(layer: str, columns: list[str]) -> list[str]:
    """What a from-scratch run must reproduce (not when or by which run it was written)."""
    drop = {
        "batch_id", "ingested_at", "app_id", "_app_id", "_batch_id", "updated_at",
        "detail", "resolved_at", "resolved_by",
    }  # fmt: skip
    return [c for c in columns if c not in drop]


def test_rebuild_equals_a_fresh_replay_and_hands_over(
    airflow_db, stream_registry, spark, tmp_path, monkeypatch
):
    from riverdelta.config.registry import load_registry
    from riverdelta.quality.publications import publication
    from riverdelta.storage.lake import TableSet, stream_location

    name = stream_registry()
    spec = load_registry().get(name)
    # No suite file for the test stream: its suites are derived from its contract.
    old_root = stream_location(name)["tables_root"]
    with live_stream(name, seed=31) as sent:
        with Producer(name, seed=3000) as during:
            assert run_backfill(name, mode="rebuild").state == "success"
        sent.add(during.sent.summary)
        assert during.sent.summary["sent"] > 0
        wait_for(lambda: status(name)["lag_records"] == 0, 300, "catch-up on the rebuilt tables")
        assert status(name)["actual"] == "RUNNING"

    where = stream_location(name)
    assert where["tables_root"] != old_root and "tables@" in where["tables_root"]
    rebuilt = TableSet.for_stream(spec)
    for layer, table in spec.table_names().items():
        pub = publication(table)
        assert pub["path"] == rebuilt[layer], "readers were switched to the rebuilt tables"
    done = last_backfill(name)
    assert done["outcome"] == "ok"
    pause = done["detail"]["hand_over"]["live_paused_seconds"]
    assert pause is not None and pause > 0

    # Events produced during the rebuild are in the rebuilt tables exactly once.
    bronze = read(spark, rebuilt["bronze"])
    assert bronze.count() == sent.summary["sent"]
    assert bronze.select("topic", "partition", "offset").distinct().count() == sent.summary["sent"]

    # The rebuilt tables equal a from-scratch replay of the whole topic, row for row.
    lake = tmp_path / "scratch"
    scratch = run_replay(spark, spec, lake, max_offsets=2000)
    for layer, path in rebuilt.paths.items():
        ours = read(spark, path)
        cols = _business_columns(layer, ours.columns)
        ours = ours.select(*cols)
        theirs = read(spark, scratch.tables[layer]).select(*cols)
        assert ours.count() == theirs.count(), layer
        assert ours.exceptAll(theirs).count() == 0 and theirs.exceptAll(ours).count() == 0, layer
