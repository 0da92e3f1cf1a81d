"""Helpers shared by the ingest integration tests (not a test module)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from riverdelta.config.registry import StreamSpec, load_registry


def spec_on_topic(stream: str, topic: str) -> StreamSpec:
    return load_registry().get(stream).on_topic(topic)


def lake_job(spec: StreamSpec, mode: str, lake: Path, name: str, **kwargs):
    """An ingest job on ``lake``: checkpoint ``_checkpoints/<name>``, its tables and ops."""
    from riverdelta.stream.job import make_job

    return make_job(
        spec,
        mode,
        checkpoint=str(lake / "_checkpoints" / name),
        tables_root=str(lake / "tables"),
        ops_root=str(lake / "_ops"),
        **kwargs,
    )


def run_replay(
    spark, spec: StreamSpec, lake: Path, *, max_offsets: int | None = None, name: str = "replay"
):
    from riverdelta.stream.ingest import start_query

    job = lake_job(spec, "replay", lake, name)
    query = start_query(spark, job, starting="earliest", max_offsets_per_trigger=max_offsets)
    query.awaitTermination()
    assert query.exception() is None
    finish_gold(job)
    return job


def finish_gold(job) -> None:
    """What a replay driver does at its end: let the gold refresher write what is pending."""
    from riverdelta.stream.ingest import stop_gold

    stop_gold(job)


def gold_caught_up(job) -> bool:
    """Every gold table carries this app's txn for its newest silver batch with rows.

    The refresher's consistency marker: gold reflects every silver row of the app
    whose batch id is at most gold's txn version (see riverdelta.stream.gold).
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from riverdelta.storage import roots as storage

    try:
        silver = storage.delta_table(job.tables["silver"]).to_pyarrow_dataset()
    except Exception:
        return True  # no silver, nothing to reflect
    mine = silver.to_table(columns=["_batch_id"], filter=ds.field("_app_id") == job.txn_app_id)
    newest = pc.max(mine["_batch_id"]).as_py() if mine.num_rows else None
    if newest is None:
        return True
    for gold in job.spec.gold:
        try:
            done = storage.delta_table(job.tables[f"gold_{gold.name}"]).transaction_version(
                job.txn_app_id
            )
        except Exception:
            return False
        if done is None or done < newest:
            return False
    return True


def wait_gold(job, timeout: float = 180.0, driver=None) -> None:
    """Gold off the critical path still follows silver: wait for it (a live driver's)."""
    wait_for(lambda: gold_caught_up(job), timeout, "gold to reflect silver", driver=driver)


def read(spark, path: str):
    return spark.read.format("delta").load(path)


def assert_invariants(spark, spec: StreamSpec, job, summary: dict) -> dict:
    """The ingest invariants, for any number of runs and crashes; returns the counts."""
    from pyspark.sql import functions as F

    from riverdelta.storage import roots as storage
    from riverdelta.stream import transforms as T

    sent = summary["sent"]
    bronze = read(spark, job.tables["bronze"])
    silver = read(spark, job.tables["silver"])
    quarantine = read(spark, job.tables["quarantine"])
    batches = read(spark, job.batches_path).where(F.col("app_id") == job.txn_app_id)

    # Every Kafka record exactly once in bronze.
    assert bronze.count() == sent
    assert bronze.select("topic", "partition", "offset").distinct().count() == sent
    # Every valid event exactly once in silver.
    n_silver = silver.count()
    assert silver.select(spec.id_column).distinct().count() == n_silver
    assert n_silver == summary["valid"] + summary["late"]
    # Poison: quarantined per reason exactly as sent per kind.
    by_reason = {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}
    poison = {
        k: v for k, v in summary["by_kind"].items() if k not in ("valid", "duplicate", "late")
    }
    assert by_reason == poison
    # Reconciliation from the per-batch counts: bronze = silver + quarantine + duplicates.
    tot = batches.agg(
        F.sum("bronze"), F.sum("silver"), F.sum("quarantined"), F.sum("duplicates"), F.sum("late")
    ).first()
    assert tot[0] == sent
    assert tot[0] == tot[1] + tot[2] + tot[3]
    assert tot[1] == n_silver and tot[2] == sum(poison.values()) and tot[3] == summary["duplicates"]
    assert tot[4] == summary["late"], "late events are counted, never silently lost"
    # Gold equals a batch recomputation from silver, once the refresher has caught up.
    assert gold_caught_up(job), "gold lags silver: wait_gold() before stopping the driver"
    for gold in spec.gold:
        stored = read(spark, job.tables[f"gold_{gold.name}"]).drop("updated_at")
        fresh = T.aggregate_gold(silver, spec, gold).select(*stored.columns)
        assert stored.count() == fresh.count()
        assert stored.exceptAll(fresh).count() == 0 and fresh.exceptAll(stored).count() == 0
    # An independent reader agrees with Spark on every table.
    for layer, path in job.tables.paths.items():
        assert storage.delta_table(path).to_pyarrow_table().num_rows == read(spark, path).count(), (
            layer
        )
    return {"bronze": sent, "silver": n_silver, "quarantine": by_reason, "duplicates": tot[3]}


def start_live_driver(registry: Path, lake: Path, stream: str, name: str):
    """A live spark-submit driver on ``lake/cp`` and ``lake/tables``, registry from a file."""
    from riverdelta.launch import procs
    from riverdelta.launch.submit import build_command, ingest_args, submit_env

    args = ingest_args(
        stream,
        "live",
        checkpoint=str(lake / "cp"),
        tables_root=str(lake / "tables"),
        trigger="2 seconds",
    )
    args[args.index("--registry") + 1] = str(registry)
    cmd = build_command(args, name=name)
    return procs.start_detached(name, cmd, log=lake / f"{name}.log", env=submit_env())


def wait_for(predicate, timeout: float, what: str, interval: float = 2.0, driver=None):
    """Poll ``predicate`` until truthy; fail at once if ``driver`` (a ProcInfo) dies."""
    from riverdelta.launch import procs

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        if driver is not None:
            assert procs.alive(driver), f"driver died while waiting for {what}:\n" + procs.tail(
                driver.log, 60
            )
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")


def status(stream: str) -> dict:
    from riverdelta.ops.status import stream_status

    return stream_status(stream)


def produce(stream: str, n: int, seed: int, **rates) -> dict:
    from riverdelta.config.settings import settings
    from riverdelta.embedded.generator import produce as gen

    return gen(
        load_registry().get(stream), n, bootstrap=settings().kafka_bootstrap, seed=seed, **rates
    )


def produce_in_background(
    spec: StreamSpec, events: int, bootstrap: str, seed: int, seconds: float = 60.0
) -> tuple[threading.Thread, dict]:
    """A producer thread (started) sending ``events`` over ``seconds`` with some poison,
    duplicates and late events; the dict gets the generator's summary when it is done."""
    from riverdelta.embedded.generator import produce as gen

    summary: dict = {}

    def send() -> None:
        summary.update(
            gen(
                spec,
                events,
                bootstrap=bootstrap,
                rate=events / seconds,
                poison_rate=0.01,
                duplicate_rate=0.01,
                late_rate=0.005,
                seed=seed,
            )
        )

    thread = threading.Thread(target=send)
    thread.start()
    return thread, summary


class Sent:
    """What the generator sent, summed over several runs (the invariants' expectations)."""

    def __init__(self) -> None:
        self.summary = {"sent": 0, "valid": 0, "late": 0, "duplicates": 0, "by_kind": {}}

    def add(self, summary: dict) -> None:
        for k in ("sent", "valid", "late", "duplicates"):
            self.summary[k] += summary[k]
        for k, v in summary["by_kind"].items():
            self.summary["by_kind"][k] = self.summary["by_kind"].get(k, 0) + v
