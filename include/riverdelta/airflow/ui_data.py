"""What the Riverdelta page shows, gathered through the CLI's own functions.

``riverdelta status`` (``status.stream_status``) and ``riverdelta tables``
(``read.tables_report``) are the one source of truth; this module only adds the
recent history they do not keep (the listener's series, ``_ops/ingest_batches``,
the ops history) and turns every failure to read Kafka or a table into a message
on the page instead of an error page. No Airflow import: the FastAPI app in
``ui_app`` renders this dict, tests read it directly.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HOURS = 6.0  # how far back the charts look
QUARANTINE_BUCKET_SECONDS = 600
BACKFILL_DAYS = 7


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def stream_panel(name: str, since: float) -> dict[str, Any]:
    """One stream: its status report, its recent series, quarantine and backfills."""
    from riverdelta.ops.status import progress_file, stream_status
    from riverdelta.stream import listener

    panel: dict[str, Any] = {"stream": name, "dags": dag_ids(name)}
    try:
        panel["status"] = stream_status(name)
    except Exception as exc:  # a page, not a stack trace: say what could not be read
        panel["status"] = None
        panel["error"] = f"status could not be read: {_error(exc)}"
    panel["series"] = listener.read_series(listener.series_file(progress_file(name)), since)
    readers = (
        ("batches", lambda: batch_history(name, since)),
        ("backfills", lambda: backfills(name)),
    )
    for key, read in readers:
        try:
            panel[key] = read()
        except Exception as exc:
            panel[key] = None
            panel[f"{key}_error"] = _error(exc)
    return panel


def dag_ids(stream: str) -> dict[str, str]:
    return {kind: f"{kind}_{stream}" for kind in ("stream", "backfill", "quality", "maintain")}


def batch_history(stream: str, since: float) -> dict[str, Any]:
    """Per committed batch: delay at commit, and quarantine by reason in time buckets."""
    import pyarrow.compute as pc

    from riverdelta.quality.engine import arrow_table
    from riverdelta.storage import roots as storage
    from riverdelta.storage.lake import ops_path
    from riverdelta.stream.job import IngestMode

    path = ops_path("ingest_batches")
    if not storage.is_delta_table(path):
        return {"delay": [], "quarantine": {}, "quarantine_total": {}}
    after = datetime.fromtimestamp(since, UTC)
    rows = arrow_table(
        path,
        None,
        ["mode", "committed_at", "max_event_time", "quarantine_by_reason"],
        (pc.field("stream") == stream) & (pc.field("committed_at") >= after),
    ).to_pylist()
    rows.sort(key=lambda r: r["committed_at"])
    delay = [
        {
            "t": r["committed_at"].timestamp(),
            "seconds": round((r["committed_at"] - r["max_event_time"]).total_seconds(), 1),
        }
        for r in rows
        if r["mode"] == IngestMode.LIVE and r["max_event_time"] is not None
    ]
    buckets: dict[int, dict[str, int]] = {}
    total: dict[str, int] = {}
    for r in rows:
        start = int(r["committed_at"].timestamp()) // QUARANTINE_BUCKET_SECONDS
        for reason, n in r["quarantine_by_reason"] or []:
            bucket = buckets.setdefault(start * QUARANTINE_BUCKET_SECONDS, {})
            bucket[reason] = bucket.get(reason, 0) + n
            total[reason] = total.get(reason, 0) + n
    return {"delay": delay, "quarantine": dict(sorted(buckets.items())), "quarantine_total": total}


def backfills(stream: str) -> list[dict[str, Any]]:
    """The stream's backfills of the last ``BACKFILL_DAYS``, newest first, as the ops
    history recorded them."""
    from riverdelta.ops import state as ops

    after = datetime.now(UTC) - timedelta(days=BACKFILL_DAYS)
    runs = []
    for event in reversed(ops.history(stream, event="backfill", since=after)):
        d = event["detail"]
        runs.append(
            {
                "at": event["at"].isoformat(timespec="seconds"),
                "outcome": event["outcome"],
                "actor": event["actor"],
                "mode": d.get("mode"),
                "run_id": d.get("run_id"),
                "records": d.get("records"),
                "first_timestamp": d.get("first_timestamp"),
                "last_timestamp": d.get("last_timestamp"),
                "paused_seconds": (d.get("hand_over") or {}).get("live_paused_seconds"),
                "reason": d.get("reason") or d.get("error"),
            }
        )
    return runs


def data_docs_page(table: str) -> str | None:
    """The newest Data Docs validation page of ``table``, relative to the site's root."""
    from riverdelta.quality.gx import data_docs_dir

    # GX 1.x lays results out as validations/<suite>/<run>/<time>/<batch>.html; a
    # table's suite is named after it.
    root = data_docs_dir()
    pages = list((root / "validations" / table).glob("**/*.html"))
    if not pages:
        return None
    newest = max(pages, key=lambda p: p.stat().st_mtime)
    return str(newest.relative_to(root))


def tables_panel() -> dict[str, Any]:
    from riverdelta.config.registry import load_registry
    from riverdelta.quality.read import tables_report

    try:
        tables = tables_report()
    except Exception as exc:
        return {"tables": [], "error": f"tables could not be read: {_error(exc)}"}
    stream_of = {
        table: spec.name
        for spec in load_registry().streams.values()
        for table in spec.table_names().values()
    }
    for t in tables:
        t["stream"] = stream_of.get(t["table"])
        try:
            t["data_docs"] = data_docs_page(t["table"])
        except OSError:
            t["data_docs"] = None
    return {"tables": tables}


def overview(hours: float = HOURS, now: float | None = None) -> dict[str, Any]:
    """Everything the page shows. Streams are read side by side: each asks Kafka."""
    from riverdelta.config.registry import load_registry

    started = time.monotonic()
    now = time.time() if now is None else now
    since = now - hours * 3600
    names = list(load_registry().streams)
    with ThreadPoolExecutor(max(1, len(names)) + 1) as pool:
        tables = pool.submit(tables_panel)
        streams = list(pool.map(lambda n: stream_panel(n, since), names))
    return {
        "generated_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "hours": hours,
        "streams": streams,
        **tables.result(),
        "seconds": round(time.monotonic() - started, 3),
    }


def data_docs_file(relative: str) -> Path | None:
    """A file of the Data Docs site, or None when ``relative`` leaves the site."""
    from riverdelta.quality.gx import data_docs_dir

    root = data_docs_dir().resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target
