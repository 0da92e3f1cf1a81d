"""The driver's progress file: rates and the last exception, for ``riverdelta status``.

A ``StreamingQueryListener`` in the driver rewrites one small JSON file after
every micro-batch and when the query ends. Lag and batch age never come from
here (the checkpoint and Kafka are the truth for those); the file only adds what
only the driver knows. pyspark is imported inside ``make_progress_listener``
because this module is imported where pyspark is not installed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from riverdelta.storage import files

log = logging.getLogger("riverdelta.stream.listener")


def _number(value: Any) -> float | None:
    # Spark omits NaN rates from its JSON; Python's json would still accept NaN/Infinity.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def progress_record(
    progress_json: dict[str, Any], previous: dict[str, Any] | None
) -> dict[str, Any]:
    """The file's content after a ``StreamingQueryProgress`` (its parsed ``.json``).

    The last exception is carried over from ``previous``: progress events do not
    clear it, so on-call still sees why the last run died after a restart.
    """
    previous = previous or {}
    num_rows = progress_json.get("numInputRows")
    return {
        "batch_id": progress_json.get("batchId"),
        "timestamp": progress_json.get("timestamp"),
        "input_rows_per_second": _number(progress_json.get("inputRowsPerSecond")),
        "processed_rows_per_second": _number(progress_json.get("processedRowsPerSecond")),
        "num_input_rows": int(num_rows) if isinstance(num_rows, int | float) else None,
        "batch_duration_ms": progress_json.get("batchDuration"),
        "query_id": progress_json.get("id"),
        "run_id": progress_json.get("runId"),
        "name": progress_json.get("name"),
        "last_exception": previous.get("last_exception"),
        "last_exception_detail": previous.get("last_exception_detail"),
        "last_exception_at": previous.get("last_exception_at"),
        "query_started_at": previous.get("query_started_at"),
    }


def started_record(previous: dict[str, Any] | None, *, query_id: str, run_id: str, now: float):
    """The file's content when the query (re)starts: the health check's grace counts from here."""
    record = dict(previous or {})
    record.update(query_id=query_id, run_id=run_id, query_started_at=now, terminated_at=None)
    return record


_EXCEPTION_LINE = re.compile(r"^(?:Caused by: )?[A-Za-z_][\w.$]*(?:Error|Exception|Exit)\b")
_DETAIL_CHARS = 10_000


def summarize_exception(text: str) -> str:
    """The line that names the failure, not the py4j wrapper around it.

    A failed ``foreachBatch`` surfaces as "py4j.Py4JException: An exception was
    raised by the Python Proxy..." with the Python traceback inside; the last
    unindented exception line is the real error (e.g. "ValueError: ...").
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    named = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    line = named[-1] if named else (lines[0] if lines else text)
    return line.removeprefix("Caused by: ").strip()[:500]


def terminated_record(
    previous: dict[str, Any] | None,
    *,
    query_id: str,
    run_id: str,
    exception: str | None,
    now: float,
) -> dict[str, Any]:
    """The file's content after the query terminated (``exception`` None: a clean stop)."""
    record = dict(previous or {})
    record.update(query_id=query_id, run_id=run_id, terminated_at=now)
    if exception:
        record.update(
            last_exception=summarize_exception(exception),
            last_exception_detail=exception[:_DETAIL_CHARS],
            last_exception_at=now,
        )
    record.setdefault("last_exception", None)
    return record


def _offsets(value: Any) -> dict[str, dict[str, int]]:
    # Spark puts a Kafka source's offsets in the progress JSON as an object, or as a
    # string holding one; {topic: {partition: offset}}.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def lag_at_planning(progress_json: dict[str, Any]) -> int | None:
    """Records Kafka held beyond this batch when it was planned (``latestOffset - endOffset``)."""
    total, seen = 0, False
    for source in progress_json.get("sources") or []:
        latest, end = _offsets(source.get("latestOffset")), _offsets(source.get("endOffset"))
        for topic, parts in latest.items():
            for part, hi in parts.items():
                done = (end.get(topic) or {}).get(part)
                if isinstance(hi, int) and isinstance(done, int):
                    total, seen = total + max(0, hi - done), True
    return total if seen else None


def series_point(progress_json: dict[str, Any], now: float) -> dict[str, Any]:
    """One point of the stream's recent history, drawn by the Riverdelta page."""
    return {
        "t": round(now, 3),
        "batch_id": progress_json.get("batchId"),
        "duration_ms": progress_json.get("batchDuration"),
        "rows": progress_json.get("numInputRows"),
        "lag_records": lag_at_planning(progress_json),
    }


def idle_point(now: float) -> dict[str, Any]:
    """A point for an idle trigger: Spark calls a query idle when its source has no new
    data, so nothing is waiting (lag 0) and no batch ran."""
    return {"t": round(now, 3), "batch_id": None, "duration_ms": None, "rows": 0, "lag_records": 0}


SERIES_KEEP_SECONDS = 6 * 3600
SERIES_MAX_POINTS = 5000


def series_file(progress: Path) -> Path:
    return progress.with_name(f"{progress.stem}.series.jsonl")


def append_series(path: Path, point: dict[str, Any]) -> None:
    """Append a point; past twice the bound, keep only the newest hours (so it never grows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(point) + "\n")
    if path.stat().st_size > SERIES_MAX_POINTS * 2 * 120:
        kept = read_series(path, since=point["t"] - SERIES_KEEP_SECONDS)[-SERIES_MAX_POINTS:]
        files.write_atomic(path, "".join(json.dumps(p) + "\n" for p in kept))


def read_series(path: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The points after ``since``, oldest first; a torn last line is skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if isinstance(point, dict) and point.get("t", 0) >= since:
            points.append(point)
    return points


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never a half-written one."""
    files.write_atomic(path, json.dumps(record, default=str))


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def make_progress_listener(path: Path) -> Any:
    """A ``StreamingQueryListener`` keeping ``path`` up to date; add it with ``spark.streams.addListener``."""
    from pyspark import SparkContext
    from pyspark.sql.streaming import StreamingQueryListener

    context = SparkContext._active_spark_context
    spark_app_id = context.applicationId if context is not None else None

    class ProgressListener(StreamingQueryListener):
        def __init__(self) -> None:
            self.path = Path(path)
            self.lock = threading.Lock()
            # The previous run's last exception survives a restart of the driver.
            self.last = read_record(self.path)

        def _write(self, record: dict[str, Any]) -> None:
            record["spark_app_id"] = spark_app_id
            record["written_at"] = time.time()
            write_atomic(self.path, record)
            self.last = record

        def _locked(self, update: Callable[[], None]) -> None:
            # A failing listener must never take the stream down with it.
            try:
                with self.lock:
                    update()
            except Exception:
                log.exception("could not update the progress files of %s", self.path)

        def onQueryStarted(self, event: Any) -> None:
            ids = {"query_id": str(event.id), "run_id": str(event.runId)}
            self._locked(lambda: self._write(started_record(self.last, **ids, now=time.time())))

        def onQueryProgress(self, event: Any) -> None:
            def update() -> None:
                progress = json.loads(event.progress.json)
                self._write(progress_record(progress, self.last))
                append_series(series_file(self.path), series_point(progress, time.time()))

            self._locked(update)

        def onQueryIdle(self, event: Any) -> None:
            # Spark 4 reports an idle trigger here, not as progress (every
            # spark.sql.streaming.noDataProgressEventInterval): the lag chart stays
            # drawn while the stream is caught up.
            self._locked(lambda: append_series(series_file(self.path), idle_point(time.time())))

        def onQueryTerminated(self, event: Any) -> None:
            ids = {"query_id": str(event.id), "run_id": str(event.runId)}
            self._locked(
                lambda: self._write(
                    terminated_record(self.last, **ids, exception=event.exception, now=time.time())
                )
            )

    return ProgressListener()
