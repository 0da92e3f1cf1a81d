"""Validation history: one record per run, and a per-table summary of the last runs.

Every run appends a row to the Delta table ``_ops/validation_history`` (what
``riverdelta`` and the UI list) and rewrites ``_ops/validation_summary/<table>.json``
(the last run and the last full run: what the next run's full-validation policy
reads, at a cost that does not grow with the history).

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from riverdelta.quality.engine import arrow_table
from riverdelta.quality.locks import file_lock
from riverdelta.storage import files
from riverdelta.storage import roots as storage
from riverdelta.storage.lake import control_dir, ops_path

HISTORY_TABLE = "validation_history"


def history_path() -> str:
    return ops_path(HISTORY_TABLE)


def append_history(row: dict[str, Any]) -> None:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("table", pa.string()),
            ("from_version", pa.int64()),
            ("to_version", pa.int64()),
            ("suite", pa.string()),
            ("success", pa.bool_()),
            ("failed", pa.string()),
            ("rows_checked", pa.int64()),
            ("duration", pa.float64()),
            ("full", pa.bool_()),
            ("full_reason", pa.string()),
            ("validated_at", pa.timestamp("us", tz="UTC")),
            ("run_id", pa.string()),
        ]
    )
    data = pa.Table.from_pylist([row], schema=schema)
    # Blind appends never conflict in Delta: concurrent validations need no lock here.
    storage.write_delta(history_path(), data, mode="append")
    _write_summary(row)


# What a validation needs of the past (the last run, the last full run) is one small
# document per table beside the publication: it costs the same after 100,000 runs as
# after one, where reading the history table grows with it.
def _summary_file(table: str) -> Path:
    return control_dir("validation_summary") / f"{table}.json"


def _write_summary(row: dict[str, Any]) -> None:
    path = _summary_file(row["table"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        summary = json.loads(path.read_text()) if path.exists() else {}
        entry = {**row, "validated_at": row["validated_at"].isoformat()}
        summary["last"] = entry
        if row["full"]:
            summary["last_full"] = entry
        files.write_atomic(path, json.dumps(summary, default=str))


def _summary(table: str) -> dict[str, Any] | None:
    path = _summary_file(table)
    if not path.exists():
        return None
    out = {}
    for key, entry in json.loads(path.read_text()).items():
        entry["validated_at"] = datetime.fromisoformat(entry["validated_at"])
        entry["failed"] = json.loads(entry["failed"]) if entry["failed"] else []
        out[key] = entry
    return out


def validation_history(
    table: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Past runs, oldest first; ``failed`` decoded. The filters go into the Parquet scan."""
    import pyarrow.compute as pc

    if not storage.is_delta_table(history_path()):
        return []
    where = None
    if table is not None:
        where = pc.field("table") == table
    if since is not None:
        after = pc.field("validated_at") >= since
        where = after if where is None else where & after
    rows = arrow_table(history_path(), None, None, where).to_pylist()
    for r in rows:
        r["failed"] = json.loads(r["failed"]) if r["failed"] else []
    return sorted(rows, key=lambda r: r["validated_at"])


def last_validation(table: str) -> dict[str, Any] | None:
    summary = _summary(table)
    if summary is not None:
        return summary.get("last")
    rows = validation_history(table)  # validated before summaries existed
    return rows[-1] if rows else None


def last_full_validation(table: str) -> dict[str, Any] | None:
    summary = _summary(table)
    if summary is not None:
        return summary.get("last_full")
    fulls = [r for r in validation_history(table) if r["full"]]
    return fulls[-1] if fulls else None
