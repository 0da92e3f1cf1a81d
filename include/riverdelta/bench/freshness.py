"""Validated freshness: Kafka timestamp -> the silver version holding the row is published.

The gate runs as deployed: the embedded Airflow (scheduler, triggerer, DAG
processor, API server) with the bench stream's DAGs, the stream deployed by its
DAG (a detached Spark driver), and ``quality_<stream>`` started by its asset
watcher. Nobody triggers a validation. Each silver row's two times come from the
tables themselves:

- committed: the commit timestamp of the Delta version that added the row's file;
- published: the ops-history time of the first successful validation whose
  ``to_version`` reaches that version (recorded just after the pointer moved, so
  the figure errs late, never early).

The producer runs at ``LIVE_LOAD`` of what the live query sustained on a backlog
(the ``live_max`` phase): a stream at 60 % of its own capacity.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

STREAM = "bench_fresh"


def _registry_with_bench_stream(base: str, out: Path) -> Path:
    """A registry holding one copy of ``base`` under its own name and topic."""
    from riverdelta.config.settings import settings

    data = yaml.safe_load(settings().streams_file.read_text())
    stream = {**data["streams"][base], "topic": f"bench.{STREAM}"}
    data["streams"] = {STREAM: stream}
    out.write_text(yaml.safe_dump(data))
    return out


def version_commits(table: str) -> dict[int, tuple[float, list[str]]]:
    """version -> (commit timestamp s, files it added with data), read from the Delta log."""
    from riverdelta.storage import roots as storage

    out: dict[int, tuple[float, list[str]]] = {}
    for version in range(storage.delta_table(table).version() + 1):
        try:
            actions = storage.commit_actions(table, version)
        except FileNotFoundError:  # cleaned up after a checkpoint
            continue
        made = storage.commit_seconds(actions)
        if made is not None:
            out[version] = (made, storage.data_files_added(actions))
    return out


def publication_times(events: list[dict[str, Any]], table: str) -> list[tuple[int, float]]:
    """(to_version, time) of each successful validation of ``table``, in time order."""
    out = []
    for e in events:
        d = e["detail"]
        if e["outcome"] == "ok" and d.get("table") == table and d.get("to_version") is not None:
            out.append((int(d["to_version"]), e["at"].timestamp()))
    return sorted(out, key=lambda p: p[1])


def first_published(version: int, pubs: list[tuple[int, float]]) -> float | None:
    """When a version was first covered by a publication (pointers only move forward)."""
    for to_version, at in pubs:
        if to_version >= version:
            return at
    return None


def freshness(
    table: str, pubs: list[tuple[int, float]], column: str = "kafka_timestamp"
) -> dict[str, Any]:
    """Per row: committed - Kafka time and published - Kafka time; percentiles of both."""
    from urllib.parse import unquote

    import pyarrow.parquet as pq

    ingest: list[float] = []
    validated: list[float] = []
    unpublished = 0
    for version, (committed, files) in sorted(version_commits(table).items()):
        published = first_published(version, pubs)
        for f in files:
            ts = pq.read_table(
                os.path.join(table, unquote(f)),
                columns=[column],
                coerce_int96_timestamp_unit="us",
            ).column(column)
            seconds = [t.timestamp() for t in ts.to_pylist() if t is not None]
            ingest += [committed - s for s in seconds]
            if published is None:
                unpublished += len(seconds)
            else:
                validated += [published - s for s in seconds]
    return {
        "rows": len(ingest),
        "rows_unpublished": unpublished,
        "ingest": _percentiles(ingest),
        "validated": _percentiles(validated),
        "publications": len(pubs),
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_seconds": None, "p95_seconds": None, "max_seconds": None}
    ordered = sorted(values)

    def q(p: float) -> float:
        # Nearest rank: the smallest value with at least p of all values at or below it.
        return round(ordered[max(math.ceil(p * len(ordered)) - 1, 0)], 3)

    return {"p50_seconds": q(0.50), "p95_seconds": q(0.95), "max_seconds": round(ordered[-1], 3)}


def _wait(what: str, check, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"validated freshness: {what} not reached within {timeout:.0f} s")


def _caught_up(silver: str) -> bool:
    from riverdelta.ops.status import stream_status
    from riverdelta.quality.publications import publication
    from riverdelta.quality.tables import latest_version

    if stream_status(STREAM)["lag_records"] != 0:
        return False
    pub = publication(f"{STREAM}_silver")
    latest = latest_version(silver)
    return bool(pub and latest is not None and pub["validated_version"] >= latest)


def validated_freshness(
    base_stream: str, rate: float, seconds: float, home: Path, timeout: float = 600.0
) -> dict[str, Any]:
    """Deploy the bench stream through Airflow, feed it at ``rate``, measure freshness."""
    from riverdelta.airflow import api as airflow_api
    from riverdelta.airflow import dag_ids
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.embedded import airflow_stack
    from riverdelta.embedded.generator import produce
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops import state as ops
    from riverdelta.storage.lake import TableSet

    os.environ["RIVERDELTA_STREAMS"] = str(
        _registry_with_bench_stream(base_stream, home / "bench-streams.yaml")
    )
    settings.cache_clear()
    spec = load_registry().get(STREAM)
    silver = TableSet.for_stream(spec)["silver"]
    kafka_client.create_topics({spec.topic: spec.partitions})
    t = time.monotonic()
    airflow_stack.start()
    started = {"airflow_seconds": round(time.monotonic() - t, 1)}
    api = airflow_api.ApiClient()
    try:
        api.wait_for_dag(dag_ids.stream(STREAM))
        api.wait_for_dag(dag_ids.quality(STREAM))
        run_id = api.trigger(dag_ids.stream(STREAM), {"action": "deploy"})
        if api.wait_for_run(dag_ids.stream(STREAM), run_id) != "success":
            raise RuntimeError(f"validated freshness: {dag_ids.stream(STREAM)} deploy failed")
        from riverdelta.ops.status import stream_status

        _wait("first batch", lambda: stream_status(STREAM)["last_batch_id"] is not None, 300)
        count = max(int(rate * seconds), 1)
        sent = produce(spec, count, bootstrap=settings().kafka_bootstrap, rate=rate, seed=7)
        t = time.monotonic()
        _wait("silver validated up to its latest version", lambda: _caught_up(silver), timeout)
        drain = time.monotonic() - t
        run_id = api.trigger(dag_ids.stream(STREAM), {"action": "stop"})
        api.wait_for_run(dag_ids.stream(STREAM), run_id)
        runs = api.call("GET", f"/dags/{dag_ids.quality(STREAM)}/dagRuns?limit=100")
    finally:
        from riverdelta.ops import control

        with contextlib.suppress(Exception):  # the driver must not outlive the bench
            control.stop(STREAM, actor="bench")
        airflow_stack.stop()
    pubs = publication_times(ops.history(STREAM, "validation"), f"{STREAM}_silver")
    measured = freshness(silver, pubs)
    kinds: dict[str, int] = {}
    for r in runs.get("dag_runs", []):
        kinds[r.get("run_type", "?")] = kinds.get(r.get("run_type", "?"), 0) + 1
    return {
        **started,
        "target_rate": round(rate, 1),
        "input_rate": round(sent["sent"] / sent["seconds"], 1),
        "produced": sent["sent"],
        "drain_seconds": round(drain, 1),
        "gate_runs": kinds,
        **measured,
    }
