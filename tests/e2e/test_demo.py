"""The demo path, end to end, with the real scheduler: what a newcomer's `make demo` does.

The demo runs as its own process with a runtime home and ports of its own (nothing
shared with the test session's stack), then this test inspects the end state
through the CLI and delta-rs, and stops everything the demo started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EVENTS = 2500  # per stream: enough for several batches, poison of every kind and a rebuild


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def demo_env(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "RIVERDELTA_")) or k == "RIVERDELTA_CACHE"
    }
    env.update(
        {
            "RIVERDELTA_HOME": str(tmp_path / "home"),
            "RIVERDELTA_KAFKA_PORT": str(_free_port()),
            "RIVERDELTA_KAFKA_CONTROLLER_PORT": str(_free_port()),
            "RIVERDELTA_AIRFLOW_PORT": str(_free_port()),
            "RIVERDELTA_DEMO_EVENTS": str(EVENTS),
        }
    )
    yield env
    # Stop everything the demo started, even when the test failed half-way.
    subprocess.run([sys.executable, "-m", "riverdelta.cli", "down"], env=env, timeout=300)


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "riverdelta.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_demo_end_to_end(demo_env, tmp_path):
    from deltalake import DeltaTable

    log = tmp_path / "demo.log"
    with log.open("w") as fh:
        rc = subprocess.run(
            [sys.executable, "-m", "riverdelta.cli", "demo"],
            env=demo_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=1800,
        ).returncode
    text = log.read_text()
    assert rc == 0, text[-5000:]
    assert "Riverdelta demo summary" in text

    # Both streams RUNNING under the deployments the scheduler's runs made.
    status = json.loads(cli(demo_env, "status", "--json"))
    assert {s["stream"]: s["actual"] for s in status} == {
        "transactions": "RUNNING",
        "page_views": "RUNNING",
    }
    # Every table has a validated version.
    tables = json.loads(cli(demo_env, "tables", "--json"))
    assert len(tables) == 8
    assert all(t["validated_version"] is not None for t in tables), tables

    # Stop the streams, then reconcile the tables with what each batch recorded.
    cli(demo_env, "stop", "transactions")
    cli(demo_env, "stop", "page_views")
    tables_by_name = {t["table"]: t for t in tables}
    lake = Path(demo_env["RIVERDELTA_HOME"]) / "lake"
    batches = DeltaTable(str(lake / "_ops" / "ingest_batches")).to_pyarrow_table().to_pylist()
    for stream in ("transactions", "page_views"):
        bronze = DeltaTable(tables_by_name[f"{stream}_bronze"]["path"]).to_pyarrow_table(
            columns=["app_id", "batch_id", "partition", "offset"]
        )
        rows = bronze.to_pylist()
        coords = {(r["partition"], r["offset"]) for r in rows}
        assert len(coords) == len(rows), f"{stream}: a Kafka record twice in bronze"
        in_bronze: dict[tuple[str, int], int] = {}
        for r in rows:
            key = (r["app_id"], r["batch_id"])
            in_bronze[key] = in_bronze.get(key, 0) + 1
        recorded = {(b["app_id"], b["batch_id"]): b for b in batches if b["stream"] == stream}
        mine = {k: b for k, b in recorded.items() if k in in_bronze or b["records_in"] == 0}
        assert mine, f"{stream}: no ingest batch recorded for its live tables"
        for key, b in mine.items():
            assert b["records_in"] + (b["resolved"] or 0) == (
                b["silver"] + b["duplicates"] + b["quarantined"]
            ), (stream, key)
            assert in_bronze.get(key, 0) == b["records_in"], (stream, key)
        # At most one batch per writer may be in flight (written, not yet counted) at stop.
        unrecorded = [k for k in in_bronze if k not in recorded]
        assert len(unrecorded) <= len({app for app, _ in in_bronze}), unrecorded

    # The rebuild backfill ran through Airflow and handed over.
    history = DeltaTable(str(lake / "_ops" / "ops_history")).to_pyarrow_table().to_pylist()
    events = {(h["stream"], h["event"], h["outcome"]) for h in history}
    assert ("page_views", "backfill", "ok") in events
    assert {("transactions", "deploy", "ok"), ("page_views", "deploy", "ok")} <= events
    assert any(e == "validation" and o == "ok" for _, e, o in events)
    rebuild = [h for h in history if h["event"] == "backfill" and h["outcome"] == "ok"][-1]
    detail = json.loads(rebuild["detail"])
    assert detail["mode"] == "rebuild" and detail["hand_over"]["live_paused_seconds"] > 0
    assert "tables@" in tables_by_name["page_views_bronze"]["path"]
