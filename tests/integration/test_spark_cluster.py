"""A live stream on a real Spark standalone cluster (master + 2 workers on loopback).

The driver goes through the ``standalone`` launcher (client mode here, the
``riverdelta`` package shipped with ``--py-files``), its executors run on the
workers; one worker is SIGKILLed mid-stream (its executor with it) and the
stream must carry on on the other without losing or duplicating anything.
Tables are checked with delta-rs, so the test process starts no JVM of its own.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.ingest_helpers import Sent, spec_on_topic, wait_for

pytestmark = pytest.mark.integration

STREAM = "transactions"
RATES = {"poison_rate": 0.02, "duplicate_rate": 0.02, "late_rate": 0.005}
PER_PHASE = 3_000
RATE = 150.0  # records/s: 20 s of traffic per phase


@pytest.fixture()
def cluster(monkeypatch):
    """Master + 2 workers (1 core, 1 GB each); RIVERDELTA_SPARK_MASTER and spark_default point at it."""
    from riverdelta.airflow.env import airflow_env
    from riverdelta.config.settings import settings
    from riverdelta.embedded import spark_cluster

    started = spark_cluster.start(2, cores=1, memory="1g")
    try:
        monkeypatch.setenv("RIVERDELTA_SPARK_MASTER", started.master_url)
        settings.cache_clear()
        conn = airflow_env()["AIRFLOW_CONN_SPARK_DEFAULT"]
        monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", conn)
        yield started
    finally:
        spark_cluster.stop(started)
        monkeypatch.undo()
        settings.cache_clear()


def _registry_on_topic(tmp_path: Path, topic: str) -> Path:
    from riverdelta.config.settings import settings

    data = yaml.safe_load(settings().streams_file.read_text())
    data["streams"] = {STREAM: {**data["streams"][STREAM], "topic": topic}}
    path = tmp_path / "streams.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _delta(path: str, columns: list[str] | None = None):
    from deltalake import DeltaTable

    return DeltaTable(path).to_pyarrow_table(columns=columns)


def _batches(job) -> list[dict]:
    import glob
    import os

    if not glob.glob(os.path.join(job.batches_path, "_delta_log", "*.json")):
        return []
    rows = _delta(job.batches_path).to_pylist()
    return sorted((r for r in rows if r["app_id"] == job.txn_app_id), key=lambda r: r["batch_id"])


def _epoch(ts) -> float:
    from datetime import UTC

    # committed_at is a Delta timestamp (UTC); delta-rs may hand it back naive.
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def _counted(job) -> int:
    return sum(r["bronze"] for r in _batches(job))


def _lag(job, topic: str) -> int:
    from riverdelta.config.settings import settings
    from riverdelta.ops.health import end_offsets, read_checkpoint

    state = read_checkpoint(job.checkpoint)
    done = state.end_offsets if state else {}
    ends = end_offsets(settings().kafka_bootstrap, topic)
    return sum(max(end - done.get(p, 0), 0) for p, end in ends.items())


def _check_invariants(spec, job, summary: dict) -> dict:
    """Bronze = sent exactly, unique coordinates and event ids, per-batch reconciliation."""
    import pyarrow.compute as pc

    sent = summary["sent"]
    bronze = _delta(job.tables["bronze"], ["topic", "partition", "offset"])
    assert bronze.num_rows == sent
    assert bronze.group_by(["topic", "partition", "offset"]).aggregate([]).num_rows == sent
    silver = _delta(job.tables["silver"], [spec.id_column])
    assert pc.count_distinct(silver[spec.id_column]).as_py() == silver.num_rows
    assert silver.num_rows == summary["valid"] + summary["late"]
    quarantine = _delta(job.tables["quarantine"], ["reason"])
    by_reason = {
        r["reason"]: r["reason_count"]
        for r in quarantine.group_by("reason").aggregate([("reason", "count")]).to_pylist()
    }
    poison = {
        k: v for k, v in summary["by_kind"].items() if k not in ("valid", "duplicate", "late")
    }
    assert by_reason == poison
    batches = _batches(job)
    for b in batches:
        assert b["records_in"] + (b["resolved"] or 0) == (
            b["silver"] + b["duplicates"] + b["quarantined"]
        ), b
    assert sum(b["bronze"] for b in batches) == sent
    assert sum(b["duplicates"] for b in batches) == summary["duplicates"]
    return {
        "bronze": bronze.num_rows,
        "silver": silver.num_rows,
        "quarantine": sum(by_reason.values()),
        "duplicates": summary["duplicates"],
        "batches": len(batches),
    }


def _producer(spec, seed: int, sent: Sent) -> threading.Thread:
    from riverdelta.config.settings import settings
    from riverdelta.embedded.generator import produce

    def run() -> None:
        sent.add(
            produce(
                spec,
                PER_PHASE,
                bootstrap=settings().kafka_bootstrap,
                rate=RATE,
                seed=seed,
                **RATES,
            )
        )

    return threading.Thread(target=run, name=f"producer-{seed}")


def _app(cluster, spark_app_id: str) -> dict | None:
    from riverdelta.embedded import spark_cluster

    return next(
        (a for a in spark_cluster.master_status(cluster)["activeapps"] if a["id"] == spark_app_id),
        None,
    )


def test_stream_survives_losing_a_worker(cluster, kafka, topic, tmp_path):
    from riverdelta.config.settings import settings
    from riverdelta.embedded import spark_cluster
    from riverdelta.launch import launchers
    from riverdelta.launch.submit import build_command, ingest_args, submit_env
    from riverdelta.stream.job import make_job

    figures: dict = {"master": cluster.master_url}
    spec = spec_on_topic(STREAM, topic)
    registry = _registry_on_topic(tmp_path, topic)
    lake = tmp_path / "lake"
    checkpoint = str(lake / "cp")
    # Claimed before the driver starts, so the test and the driver share one app id.
    job = make_job(spec, "live", checkpoint=checkpoint, tables_root=str(lake / "tables"))

    args = ingest_args(
        STREAM, "live", checkpoint=checkpoint, tables_root=str(lake / "tables"), trigger="2 seconds"
    )
    args[args.index("--registry") + 1] = str(registry)
    cmd = build_command(
        args, name=f"riverdelta-{STREAM}-cluster", conf=spark_cluster.executor_conf(2)
    )
    assert settings().spark_master == cluster.master_url
    assert launchers.submit_option(cmd, "--master") == cluster.master_url
    py_files = launchers.submit_option(cmd, "--py-files")
    assert py_files and py_files.endswith("riverdelta.zip") and Path(py_files).is_file()
    launcher = launchers.launcher_for(cluster.master_url)
    assert isinstance(launcher, launchers.StandaloneLauncher)

    sent = Sent()
    dep = launcher.launch(STREAM, cmd, submit_env(), tmp_path / "driver.log")
    t0 = time.monotonic()
    try:
        assert launchers.submit_option(cmd, "--deploy-mode") in (None, "client")
        # Phase 1: traffic on two executors.
        producer = _producer(spec, 1, sent)
        producer.start()
        producer.join()
        wait_for(
            lambda: _counted(job) >= sent.summary["sent"] or launcher.status(dep) != "RUNNING",
            300,
            "phase 1 committed",
        )
        assert launcher.status(dep) == "RUNNING", Path(dep.log).read_text()[-5000:]
        figures["phase1_seconds"] = round(time.monotonic() - t0, 1)
        dep = launcher.refresh(dep)
        assert dep.spark_app_id and dep.spark_app_id.startswith("app-"), dep
        app = _app(cluster, dep.spark_app_id)
        assert app is not None and app["state"] == "RUNNING" and app["cores"] == 2, app
        # Each worker ran one of the app's executors (its stderr sits in work-dir/<app>/<exec>/).
        for w in cluster.workers:
            assert list((w.work_dir / dep.spark_app_id).glob("*/stderr")), w
        figures["phase1"] = _check_invariants(spec, job, sent.summary)
        batches_before = len(_batches(job))

        # Phase 2: keep producing, lose worker 1 (and its executor) in the middle.
        producer = _producer(spec, 2, sent)
        producer.start()
        time.sleep(8)
        killed_at = spark_cluster.kill_worker(cluster, 1)
        t_kill = time.monotonic()
        producer.join()
        wait_for(lambda: len(spark_cluster.alive_workers(cluster)) == 1, 60, "the master to see it")
        wait_for(
            lambda: _counted(job) >= sent.summary["sent"] or launcher.status(dep) != "RUNNING",
            300,
            "phase 2 committed",
        )
        assert launcher.status(dep) == "RUNNING", Path(dep.log).read_text()[-5000:]
        wait_for(lambda: _lag(job, topic) == 0, 60, "lag back to 0")
        figures["recovered_seconds_after_kill"] = round(time.monotonic() - t_kill, 1)
        batches = _batches(job)
        after = [b for b in batches if _epoch(b["committed_at"]) > killed_at]
        figures["batches_before_kill"] = batches_before
        figures["batches_after_kill"] = len(after)
        figures["first_batch_after_kill_seconds"] = round(
            min(_epoch(b["committed_at"]) for b in after) - killed_at, 1
        )
        assert len(after) >= 1 and sum(b["records_in"] for b in after) > 0
        # Not waiting for resources: still running on the surviving worker's core.
        app = _app(cluster, dep.spark_app_id)
        assert app is not None and app["state"] == "RUNNING" and app["cores"] == 1, app
        figures["final"] = _check_invariants(spec, job, sent.summary)
        assert figures["final"]["bronze"] == 2 * PER_PHASE
        assert _lag(job, topic) == 0
        figures["total_seconds"] = round(time.monotonic() - t0, 1)
        # What the driver saw of the loss (its log is gone with tmp_path otherwise).
        figures["driver_log_on_loss"] = [
            line[:240]
            for line in Path(dep.log).read_text(errors="replace").splitlines()
            if "lost executor" in line.lower() or "worker lost" in line.lower()
        ][:5]
        assert figures["driver_log_on_loss"], "the driver never saw its executor go"
    finally:
        launcher.stop(dep, timeout=20)
        print("spark cluster figures:", json.dumps(figures, default=str))
