"""``make demo``: the whole product on the embedded stack, narrated.

Starts Kafka and Airflow, produces traffic (with poison, duplicates and late
events) in the background, deploys both streams through Airflow's real
scheduler, waits for the tables and a small lag, lets the quality gates
(started by their asset watchers) validate and publish every table, runs a ``rebuild`` backfill of
one stream through Airflow, and prints a summary.

``RIVERDELTA_DEMO_EVENTS`` (default 12000 per stream) sizes the traffic, sent at
``RIVERDELTA_DEMO_RATE`` events/s (default 400: the hot path keeps up with that on
2 cores, and a newcomer should not wait for a slow producer). Once the tables are
validated a trickle of ``RIVERDELTA_DEMO_TRICKLE_RATE`` events/s (default 5, 0 =
none) keeps the streams visibly live on the Riverdelta page; the e2e test turns it
off so the page's numbers hold still while it compares them.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from riverdelta.airflow import dag_ids

PRODUCE_COUNT = int(os.environ.get("RIVERDELTA_DEMO_EVENTS", "12000"))
PRODUCE_RATE = float(os.environ.get("RIVERDELTA_DEMO_RATE", "400"))
TRICKLE_RATE = float(os.environ.get("RIVERDELTA_DEMO_TRICKLE_RATE", "5"))
TRICKLE_SECONDS = 3600
BACKFILL_STREAM = "page_views"


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_producers(
    streams: list[str], count: int = PRODUCE_COUNT, rate: float = PRODUCE_RATE, label: str = ""
) -> None:
    from riverdelta.config.settings import settings
    from riverdelta.launch import procs

    seed = int(time.time())  # a new run must not re-send the event ids of the previous one
    for i, name in enumerate(streams):
        proc = f"producer-{name}{label}"
        if procs.running(proc):
            continue
        cmd = [
            sys.executable, "-m", "riverdelta.cli", "produce", name,
            "--count", str(count), "--rate", str(rate),
            "--poison-rate", "0.02", "--duplicate-rate", "0.02", "--late-rate", "0.01",
            "--seed", str(seed + i),
        ]  # fmt: skip
        procs.start_detached(proc, cmd, log=settings().log_dir / f"{proc}.log")
        say(f"producing {count} {name} events at {rate:.0f}/s in the background")


def wait_healthy(streams: list[str], timeout: float = 420) -> dict[str, Any]:
    from riverdelta.ops.status import stream_status

    deadline = time.monotonic() + timeout
    while True:
        reports = {n: stream_status(n) for n in streams}
        ready = all(
            r["actual"] == "RUNNING"
            and r["last_batch_id"] is not None
            and (r["lag_records"] or 0) < 2000
            for r in reports.values()
        )
        line = ", ".join(
            f"{n}: {r['actual']} batch={r['last_batch_id']} lag={r['lag_records']}"
            for n, r in reports.items()
        )
        say(line)
        if ready:
            return reports
        if time.monotonic() > deadline:
            raise RuntimeError(f"streams not healthy within {timeout:.0f}s: {line}")
        time.sleep(10)


def wait_validated(
    streams: list[str], tables: list[str], since: datetime, timeout: float = 600
) -> None:
    """Wait until the quality gates have published every table since ``since`` (this
    run's start: a second demo run waits for fresh validations, and a gate that was
    quicker than the streams' health wait still counts). Nobody triggers the gates:
    their watchers (Airflow's triggerer) see each new Delta version within seconds."""
    from riverdelta.quality.publications import publications

    gates = ", ".join(dag_ids.quality(n) for n in streams)
    say(f"the quality gates ({gates}) validate each new table version as it lands")
    deadline = time.monotonic() + timeout
    reported: set[str] = set()
    while True:
        pubs = publications()
        for table in tables:
            fresh = table in pubs and datetime.fromisoformat(pubs[table]["published_at"]) >= since
            if fresh and table not in reported:
                reported.add(table)
                say(f"validated and published {table} v{pubs[table]['validated_version']}")
        if reported >= set(tables):
            return
        if time.monotonic() > deadline:
            missing = sorted(set(tables) - reported)
            raise RuntimeError(
                f"no validated version within {timeout:.0f}s for {missing}: see the quality_<stream> "
                "DAG runs in the Airflow UI"
            )
        time.sleep(5)


def run_backfill(stream: str) -> dict[str, Any]:
    from riverdelta.backfill.replay import follow_backfill
    from riverdelta.ops import state as ops

    say(f"rebuild backfill of {stream} from the earliest offsets, through Airflow")
    rc = follow_backfill(stream, {"mode": "rebuild"}, timeout=900, out=lambda m: say(m.strip()))
    if rc != 0:
        raise RuntimeError(
            f"the rebuild backfill of {stream} failed: see {dag_ids.backfill(stream)}"
        )
    return ops.history(stream, "backfill")[-1]


def summary(streams: list[str], backfill: dict[str, Any] | None = None) -> str:
    from riverdelta.airflow import env as airflow_env
    from riverdelta.embedded import airflow_stack
    from riverdelta.ops.status import stream_status
    from riverdelta.quality.gx import data_docs_index
    from riverdelta.quality.read import tables_report

    lines = [
        "",
        "=" * 78,
        "Riverdelta demo summary",
        "=" * 78,
        "Tables (rows at latest / validated version):",
    ]
    for t in tables_report():
        lines.append(
            f"  {t['table']:<34} rows {t['rows_latest'] or 0:>7}  latest v{t['latest_version']}  "
            f"validated v{t['validated_version']}"
        )
    lines.append("Quarantine by reason:")
    for name in streams:
        lines.append(f"  {name}: {quarantine_by_reason(name)}")
    lines.append("Lag:")
    for name in streams:
        r = stream_status(name)
        lines.append(
            f"  {name}: {r['lag_records']} records, {r['lag_seconds']}s; last batch {r['last_batch_age_seconds'] or 0:.0f}s ago"
        )
    if backfill:
        d = backfill["detail"]
        lines += [
            f"Backfill: rebuild of {backfill['stream']} {backfill['outcome']}: {d.get('records')} "
            f"records replayed in {d['replay']['seconds']} s ({d['replay']['rows_per_second']} rows/s); "
            f"live stream paused {d['hand_over']['live_paused_seconds']} s at hand-over; "
            f"tables now under {d['tables_root']}",
        ]
    lines += [
        f"Data Docs: file://{data_docs_index()}",
        f"Riverdelta page: {airflow_env.api_url()}/plugin/riverdelta  (streams, tables, "
        "quarantine and backfills, inside the Airflow UI)",
        f"Airflow UI: {airflow_env.api_url()}  {airflow_stack.login_line()}",
        "Streams keep running. Status: .venv/bin/riverdelta status   Stop everything: make down",
        "=" * 78,
    ]
    return "\n".join(lines)


def quarantine_by_reason(stream: str) -> dict[str, int]:
    from riverdelta.config.registry import load_registry
    from riverdelta.storage import roots as storage
    from riverdelta.storage.lake import TableSet

    path = TableSet.for_stream(load_registry().get(stream))["quarantine"]
    try:
        reasons = (
            storage.delta_table(path)
            .to_pyarrow_table(columns=["reason"])
            .column("reason")
            .to_pylist()
        )
    except Exception:
        return {}
    out: dict[str, int] = {}
    for r in reasons:
        out[r] = out.get(r, 0) + 1
    return dict(sorted(out.items()))


def main() -> int:
    from riverdelta.airflow import api as airflow_api
    from riverdelta.airflow import env as airflow_env
    from riverdelta.config.registry import load_registry
    from riverdelta.embedded import airflow_stack, kafka_broker
    from riverdelta.kafka import client as kafka_client

    t0 = time.monotonic()
    started = datetime.now(UTC)
    registry = load_registry()
    streams = registry.names
    say("starting the embedded Kafka broker (KRaft) and Airflow")
    kafka_broker.start()
    kafka_client.create_topics(registry.topics(), registry.topic_configs())
    airflow_stack.start()
    say(f"Airflow healthy at {airflow_env.api_url()}")
    start_producers(streams)

    api = airflow_api.ApiClient()
    for name in streams:
        dag_id = dag_ids.stream(name)
        api.wait_for_dag(dag_id)
        run_id = api.trigger(dag_id, {"action": "deploy"})
        say(f"triggered {dag_id} action=deploy (run {run_id}); the scheduler runs it")
        state = api.wait_for_run(dag_id, run_id)
        if state != "success":
            raise RuntimeError(f"{dag_id} deploy run {state}: see the task log in the Airflow UI")
        say(f"{name} deployed: a detached Spark driver now runs the stream")

    wait_healthy(streams)
    tables = [t for s in registry.streams.values() for t in s.table_names().values()]
    wait_validated(streams, tables, since=started)
    done = run_backfill(BACKFILL_STREAM)
    wait_healthy(streams)
    if TRICKLE_RATE > 0:
        start_producers(
            streams, int(TRICKLE_RATE * TRICKLE_SECONDS), TRICKLE_RATE, label="-trickle"
        )
    print(summary(streams, done))
    say(f"done in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
