"""The demo path, end to end, with the real scheduler: what a newcomer's `make demo` does.

The demo runs once, as its own process with a runtime home and ports of its own
(nothing shared with the test session's stack). While its streams still run, the
Riverdelta page is checked from outside (login refused, then a real browser
against ``riverdelta status`` / ``tables``, a DAG link, a dry-run backfill from the
trigger form); then the end state is inspected through the CLI and delta-rs, and
everything the demo started is stopped. The tests run in file order.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

EVENTS = 2500  # per stream: enough for several batches, poison of every kind and a rebuild


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Demo:
    env: dict[str, str]
    log: str

    @property
    def url(self) -> str:
        return f"http://localhost:{self.env['RIVERDELTA_AIRFLOW_PORT']}"

    @property
    def password(self) -> str:
        home = Path(self.env["RIVERDELTA_HOME"]) / "airflow"
        return json.loads((home / "simple_auth_manager_passwords.json").read_text())["admin"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("demo")
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
            "RIVERDELTA_DEMO_TRICKLE_RATE": "0",  # the page must hold still to be compared
        }
    )
    log = tmp_path / "demo.log"
    with log.open("w") as fh:
        rc = subprocess.run(
            [sys.executable, "-m", "riverdelta.cli", "demo"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=1800,
        ).returncode
    text = log.read_text()
    yield Demo(env, text if rc == 0 else f"demo exited {rc}\n{text}")
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


def _ran(demo: Demo) -> None:
    assert not demo.log.startswith("demo exited"), demo.log[-5000:]
    assert "Riverdelta demo summary" in demo.log
    assert f"Riverdelta page: {demo.url}/plugin/riverdelta" in demo.log


def _http(demo: Demo, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    """Status and decoded body of a request to the demo's API server; no redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    req = urllib.request.Request(
        demo.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location") or exc.read().decode()[:500]


def _token(demo: Demo) -> str:
    status, body = _http(demo, "/auth/token", body={"username": "admin", "password": demo.password})
    assert status == 201, body
    return body["access_token"]


def test_riverdelta_page_refuses_anonymous_requests(demo):
    _ran(demo)
    for path in ("/riverdelta/api/overview", "/riverdelta/data-docs/index.html",
                 "/riverdelta/failed-rows/transactions_silver"):  # fmt: skip
        assert _http(demo, path)[0] == 401, path
    status, location = _http(demo, "/riverdelta/")
    assert status == 302 and "/auth/login?next=" in location
    assert _http(demo, "/riverdelta/api/overview", token="not-a-jwt")[0] == 403
    status, overview = _http(demo, "/riverdelta/api/overview", token=_token(demo))
    assert status == 200
    assert [s["stream"] for s in overview["streams"]] == ["transactions", "page_views"]
    assert len(overview["tables"]) == 8


def _attrs(frame: Any, selector: str, *names: str) -> dict[str, tuple[str, ...]]:
    rows = frame.locator(selector)
    key = names[0]
    return {
        rows.nth(i).get_attribute(key): tuple(rows.nth(i).get_attribute(n) for n in names[1:])
        for i in range(rows.count())
    }


def _cli_view(demo: Demo) -> tuple[dict, dict]:
    """What the page must show, from ``riverdelta status/tables --json``, as the page
    writes it into its data attributes (None as "-")."""

    def text(v: Any) -> str:
        return "-" if v is None else str(v)

    status = json.loads(cli(demo.env, "status", "--json"))
    tables = json.loads(cli(demo.env, "tables", "--json"))
    return (
        {s["stream"]: (s["desired"], s["actual"], text(s["lag_records"]),
                       text(s["restarts_in_window"])) for s in status},
        {t["table"]: (text(t["latest_version"]), text(t["validated_version"]),
                      text(t["rows_latest"])) for t in tables},
    )  # fmt: skip


def _agrees(page: Any, demo: Demo) -> tuple[tuple, tuple]:
    """The page's streams and tables against the CLI's, read around the page's own
    read so a live change in between is retried, not failed. (The raw JSON always
    differs between two reads: it carries the time it was checked.)"""
    for _ in range(5):
        expected = _cli_view(demo)
        page.reload()
        frame = page.frame_locator("iframe")
        frame.locator("h1", has_text="Riverdelta").wait_for()
        shown = (
            _attrs(frame, "tr[data-desired]", "data-stream", "data-desired", "data-actual",
                   "data-lag-records", "data-restarts"),
            _attrs(frame, "tr[data-table]", "data-table", "data-latest", "data-validated",
                   "data-rows"),
        )  # fmt: skip
        if shown == expected == _cli_view(demo):
            break
        time.sleep(5)
    return shown, expected


def test_riverdelta_page_in_a_browser(demo):
    from tests.e2e.browser import logged_in, screenshot

    _ran(demo)
    with logged_in(demo.url, "admin", demo.password, "/plugin/riverdelta") as page:
        shown, expected = _agrees(page, demo)
        assert shown == expected
        streams, tables = shown
        assert set(streams) == {"transactions", "page_views"}
        assert all(v[1] == "RUNNING" for v in streams.values()), streams
        assert len(tables) == 8 and all(v[1] != "-" for v in tables.values()), tables
        frame = page.frame_locator("iframe")
        assert frame.locator("polyline").count() >= 2  # lag and batch duration charts drawn
        screenshot(page, "riverdelta-page")

        # A stream's DAG link opens the DAG in the Airflow UI itself, not in the frame.
        frame.locator('tr[data-stream="transactions"] a', has_text="transactions").click()
        page.wait_for_url(re.compile(r"/dags/stream_transactions$"))
        page.get_by_text("stream_transactions").first.wait_for()  # the DAG page, rendered
        screenshot(page, "stream-dag")

        # A dry-run backfill from the DAG's trigger form, then its run succeeds.
        run_id = f"ui_dry_run_{int(time.time())}"
        page.goto(f"{demo.url}/dags/backfill_page_views")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = page.get_by_role("dialog")
        dialog.locator('[id="switch:element_dry_run:control"]').click()  # Chakra's switch
        assert dialog.locator('[id="switch:element_dry_run"]').get_attribute("data-state") == (
            "checked"
        )
        dialog.get_by_role("button", name="Advanced Options").click()
        dialog.locator("input[name=dagRunId]").fill(run_id)
        screenshot(page, "trigger-dry-run")
        dialog.locator("[data-testid=trigger-dag-submit]").click()
        token, state, deadline = _token(demo), None, time.monotonic() + 600
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(5)
            code, run = _http(demo, f"/api/v2/dags/backfill_page_views/dagRuns/{run_id}", token)
            state = run.get("state") if code == 200 else None
        assert state == "success", run
        assert run["conf"]["dry_run"] is True
        page.goto(f"{demo.url}/dags/backfill_page_views/runs/{run_id}")
        page.get_by_text("success").first.wait_for()
        screenshot(page, "dry-run-succeeded")

        # The page lists it among the backfills, linked to its run.
        page.goto(f"{demo.url}/plugin/riverdelta")
        frame = page.frame_locator("iframe")
        row = frame.locator(f'tr[data-backfill="{run_id}"]')
        row.wait_for()
        assert row.get_attribute("data-outcome") == "dry_run"


def test_demo_end_to_end(demo):
    from deltalake import DeltaTable

    _ran(demo)
    demo_env = demo.env

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
