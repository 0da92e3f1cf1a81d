"""The hot path's promises: one writer position per table set, bounded live batches."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.ingest_helpers import (
    lake_job,
    read,
    run_replay,
    spec_on_topic,
    status,
    wait_for,
)

pytestmark = pytest.mark.integration


def _delta_rows(path: str, columns: list[str]) -> list[dict]:
    from riverdelta.storage import roots as storage

    return storage.delta_table(path).to_pyarrow_table(columns=columns).to_pylist()


def test_live_on_a_new_checkpoint_starts_after_what_the_tables_hold(spark, kafka, topic, lake):
    """Replay from earliest, then a live query on a fresh checkpoint over the same tables."""
    from riverdelta.embedded.generator import produce
    from riverdelta.stream.ingest import await_gold, start_query, stop_gold

    spec = spec_on_topic("transactions", topic)
    rates = {"poison_rate": 0.05, "duplicate_rate": 0.03, "late_rate": 0.01}
    first = produce(spec, 3000, bootstrap=kafka, seed=21, **rates)
    replay = run_replay(spark, spec, lake)
    second = produce(spec, 2000, bootstrap=kafka, seed=22, **rates)
    live = lake_job(spec, "live", lake, "live-new")
    assert live.txn_app_id != replay.txn_app_id
    query = start_query(spark, live, starting="earliest", trigger="1 second")
    try:
        query.processAllAvailable()
        await_gold(live)
    finally:
        query.stop()
        stop_gold(live)

    sent = first["sent"] + second["sent"]
    coords = ["topic", "partition", "offset"]
    bronze = Counter(tuple(r.values()) for r in _delta_rows(live.tables["bronze"], coords))
    assert sum(bronze.values()) == sent, "every offset in bronze"
    assert max(bronze.values()) == 1, "and exactly once"
    quarantined = Counter(tuple(r.values()) for r in _delta_rows(live.tables["quarantine"], coords))
    poison = sum(
        n
        for s in (first, second)
        for k, n in s["by_kind"].items()
        if k not in ("valid", "duplicate", "late")
    )
    assert sum(quarantined.values()) == poison and max(quarantined.values()) == 1
    ids = [r["event_id"] for r in _delta_rows(live.tables["silver"], ["event_id"])]
    assert len(ids) == len(set(ids)) == sum(s["valid"] + s["late"] for s in (first, second))
    # The live query read only the second lot: its batches hold exactly those records.
    from pyspark.sql import functions as F

    mine = read(spark, live.batches_path).where(F.col("app_id") == live.txn_app_id)
    assert mine.agg(F.sum("records_in")).first()[0] == second["sent"]


@pytest.mark.timeout(1200)  # its own waits: 300 s first catch-up + 600 s on the backlog
def test_backlog_is_worked_through_in_bounded_batches(airflow_db, stream_registry, spark):
    """A deployed stream restarted on 60k records: bounded batches, no health restart."""
    from pyspark.sql import functions as F

    from riverdelta.config.registry import load_registry
    from riverdelta.ops import control
    from riverdelta.ops import state as ops
    from riverdelta.stream.job import make_job
    from tests.integration.ingest_helpers import produce

    bound = 10_000
    name = stream_registry(
        health={"max_lag_seconds": 600, "max_batch_age_seconds": 45},
        extra={"max_offsets_per_trigger": bound},
    )
    control.deploy(name, actor="test")
    try:
        produce(name, 500, seed=1)
        wait_for(lambda: status(name)["lag_records"] == 0, 300, "first catch-up")
        control.stop(name, actor="test")
        backlog = produce(name, 60_000, seed=2, duplicate_rate=0.01)["sent"]
        control.deploy(name, actor="test")
        reconciled = []

        def caught_up() -> bool:
            reconciled.append(control.reconcile(name, actor="test")["action"])
            return status(name)["lag_records"] == 0

        wait_for(caught_up, 600, "catch-up on the backlog", interval=5)
    finally:
        control.stop(name, actor="test")
    assert set(reconciled) == {"none"}, f"reconcile acted while the stream was busy: {reconciled}"
    assert ops.history(name, "restart") == [], "no health restart"
    job = make_job(load_registry().get(name), "live")
    rows = read(spark, job.batches_path).where(F.col("app_id") == job.txn_app_id).collect()
    sizes = [r["records_in"] for r in rows if r["records_in"]]
    assert sum(sizes) == 500 + backlog
    assert max(sizes) <= bound and len(sizes) >= backlog // bound
