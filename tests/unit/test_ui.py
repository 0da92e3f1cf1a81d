"""The Riverdelta page's rendering and its file serving (no Airflow, no services)."""

from __future__ import annotations

import pytest

from riverdelta.airflow import ui_app, ui_data

pytestmark = pytest.mark.unit


def _overview(**stream_extra):
    status = {
        "desired": "RUNNING",
        "actual": "RUNNING",
        "lag_records": 12,
        "lag_seconds": 3.25,
        "last_batch_age_seconds": 4.0,
        "input_rows_per_second": 40.0,
        "processed_rows_per_second": 80.0,
        "restarts_in_window": 1,
        "last_error": "ValueError: <script>alert(1)</script>",
        "kafka_error": None,
    }
    panel = {
        "stream": "orders",
        "dags": ui_data.dag_ids("orders"),
        "status": status,
        "series": [{"t": 1.0, "lag_records": 5, "duration_ms": 900}] * 3,
        "batches": {
            "delay": [{"t": 1.0, "seconds": 2.0}, {"t": 2.0, "seconds": 4.0}],
            "quarantine": {0: {"bad_json": 2}, 600: {"bad_json": 1, "missing_field": 4}},
            "quarantine_total": {"bad_json": 3, "missing_field": 4},
        },
        "backfills": [
            {
                "at": "2026-12-02T08:00:00+00:00", "outcome": "ok", "actor": "on-call",
                "mode": "rebuild", "run_id": "manual__2026-12-02T08:00:00", "records": 900,
                "first_timestamp": 1.7e9, "last_timestamp": 1.7e9 + 60, "paused_seconds": 4.2,
                "reason": None,
            }
        ],
    }  # fmt: skip
    panel.update(stream_extra)
    table = {
        "table": "orders_silver", "stream": "orders", "latest_version": 9,
        "validated_version": 7, "versions_behind": 2, "rows_latest": 1000, "rows_validated": 900,
        "data_docs": "validations/orders_silver/run/20261202/x.html",
        "last_validation": {
            "success": False, "validated_at": "2026-12-02T08:01:00", "failed": ["not_null(id)"],
            "run_id": "r1",
        },
    }  # fmt: skip
    return {
        "generated_at": "2026-12-02T08:02:00+00:00",
        "hours": 6.0,
        "seconds": 0.2,
        "streams": [panel],
        "tables": [table],
    }


def test_page_shows_stream_table_quarantine_and_backfill_with_links():
    page = ui_app.render_page(_overview())
    assert 'data-stream="orders" data-desired="RUNNING" data-actual="RUNNING"' in page
    assert 'data-lag-records="12"' in page
    for dag in ("stream_orders", "backfill_orders", "quality_orders", "maintain_orders"):
        assert f'target="_top" href="/dags/{dag}"' in page
    assert 'href="/dags/backfill_orders/runs/manual__2026-12-02T08%3A00%3A00"' in page
    assert 'data-table="orders_silver" data-latest="9" data-validated="7"' in page
    assert "FAILED</span> not_null(id)" in page
    assert 'href="/riverdelta/failed-rows/orders_silver?run_id=r1"' in page
    assert 'href="/riverdelta/data-docs/validations/orders_silver/run/20261202/x.html"' in page
    assert 'data-quarantine="orders:missing_field" data-count="4"' in page
    assert page.count("<polyline") == 5  # lag, duration, delay, two quarantine reasons
    assert "<script>alert(1)" not in page  # errors are escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own link handler


def test_page_says_what_could_not_be_read_instead_of_failing():
    kafka_down = _overview()
    kafka_down["streams"][0]["status"]["kafka_error"] = "KafkaException: broker down"
    page = ui_app.render_page(kafka_down)
    assert "Kafka could not be read: KafkaException: broker down" in page
    no_status = _overview(status=None, error="status could not be read: OSError: gone")
    no_status["error"] = "tables could not be read: OSError: lake"
    no_status["tables"] = []
    page = ui_app.render_page(no_status)
    assert "status could not be read: OSError: gone" in page
    assert "tables could not be read: OSError: lake" in page


def test_sparkline_needs_two_points_and_skips_gaps():
    assert "no data yet" in ui_app.sparkline([None, 3])
    svg = ui_app.sparkline([1, None, 4])
    assert svg.count(",") == 2 and "max 4" in svg


def test_data_docs_file_stays_inside_the_site(tmp_path, monkeypatch):
    from riverdelta.quality import gx

    site = tmp_path / "data_docs"
    (site / "validations").mkdir(parents=True)
    (site / "index.html").write_text("<html/>")
    (tmp_path / "secret.txt").write_text("no")
    monkeypatch.setattr(gx, "data_docs_dir", lambda: site)
    assert ui_data.data_docs_file("index.html") == (site / "index.html").resolve()
    assert ui_data.data_docs_file("../secret.txt") is None
    assert ui_data.data_docs_file("validations") is None  # a folder is not a page
    assert ui_data.data_docs_page("orders_silver") is None
    page = site / "validations" / "orders_silver" / "run" / "t" / "b.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html/>")
    assert ui_data.data_docs_page("orders_silver") == "validations/orders_silver/run/t/b.html"


def test_batch_history_and_backfills_from_the_ops_tables(lake_env):
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa
    from deltalake import write_deltalake

    from riverdelta.ops import state as ops
    from riverdelta.storage.lake import ops_path

    now = datetime.now(UTC).replace(microsecond=0)
    ts = pa.timestamp("us", tz="UTC")
    rows = [  # (stream, mode, minutes ago, event-time delay s, quarantine)
        ("orders", "live", 400, 5, [("bad_json", 9)]),  # before the window
        ("orders", "live", 30, 5, [("bad_json", 2)]),
        ("orders", "replay", 20, 900, [("bad_json", 1), ("missing_field", 3)]),
        ("orders", "live", 10, 12, []),
        ("clicks", "live", 10, 1, [("bad_json", 7)]),  # another stream
    ]
    table = pa.Table.from_pylist(
        [
            {
                "stream": s, "mode": m, "committed_at": now - timedelta(minutes=ago),
                "max_event_time": now - timedelta(minutes=ago, seconds=delay),
                "quarantine_by_reason": q,
            }
            for s, m, ago, delay, q in rows
        ],
        schema=pa.schema(
            [("stream", pa.string()), ("mode", pa.string()), ("committed_at", ts),
             ("max_event_time", ts), ("quarantine_by_reason", pa.map_(pa.string(), pa.int64()))]
        ),
    )  # fmt: skip
    write_deltalake(ops_path("ingest_batches"), table)
    since = (now - timedelta(hours=6)).timestamp()
    got = ui_data.batch_history("orders", since)
    assert [d["seconds"] for d in got["delay"]] == [5.0, 12.0]  # live batches only
    assert got["quarantine_total"] == {"bad_json": 3, "missing_field": 3}
    assert sum(sum(b.values()) for b in got["quarantine"].values()) == 6

    ops.record("orders", "backfill", outcome="dry_run", actor="me", mode="range", run_id="r1")
    ops.record(
        "orders", "backfill", outcome="ok", mode="rebuild", run_id="r2", records=10,
        hand_over={"live_paused_seconds": 3.5},
    )  # fmt: skip
    ops.record("orders", "deploy")
    runs = ui_data.backfills("orders")
    assert [(r["run_id"], r["outcome"], r["paused_seconds"]) for r in runs] == [
        ("r2", "ok", 3.5),
        ("r1", "dry_run", None),
    ]
