"""How a failed validation is reported: failure records, the failing rows, the message.

Every failure, a GX expectation's or a riverdelta check's, is one record
``{expectation, column, observed_value, details}``. The rows a failure names (GX's
index list, a gold check's sample) are appended to the Delta table
``_ops/failed_rows``, one row per failing row, for ``riverdelta failed-rows``.
Sensitive values are replaced by ``REDACTED`` before anything is stored.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from riverdelta.quality.engine import arrow_table
from riverdelta.storage import roots as storage
from riverdelta.storage.lake import ops_path

FAILED_ROWS_TABLE = "failed_rows"
REDACTED = "<redacted>"


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_failure(name: str, column: Any, observed: Any, details: dict[str, Any]) -> dict[str, Any]:
    """The failure record of riverdelta check ``name`` (the same shape as GX's)."""
    return {
        "expectation": f"riverdelta.{name}",
        "column": column,
        "observed_value": observed,
        "details": jsonable(details),
    }


def failing_rows(failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(expectation, column, row) for each row a failure names: GX's index list, gold's sample."""
    out = []
    for f in failed:
        details = f.get("details") or {}
        rows = details.get("partial_unexpected_index_list") or [
            s["key"] | {"silver": s["silver"], "gold": s["gold"]}
            for s in details.get("sample") or []
        ]
        for row in rows:
            out.append({"expectation": f["expectation"], "column": f["column"], "row": row})
    return out


def write_failed_rows(table: str, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Append to ``_ops/failed_rows``: a table a person can query, one row per failing row."""
    import pyarrow as pa

    now = datetime.now(UTC)
    data = pa.table(
        {
            "table": [table] * len(rows),
            "run_id": [run_id] * len(rows),
            "validated_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
            "expectation": [r["expectation"] for r in rows],
            "column": [json.dumps(r["column"]) for r in rows],
            "row": [json.dumps(r["row"], default=str, sort_keys=True) for r in rows],
        }
    )
    storage.write_delta(ops_path(FAILED_ROWS_TABLE), data)


def failed_rows(table: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """The failing rows recorded for ``table`` (one run's, or all), ``row`` decoded."""
    import pyarrow.compute as pc

    path = ops_path(FAILED_ROWS_TABLE)
    if not storage.is_delta_table(path):
        return []
    where = pc.field("table") == table
    if run_id is not None:
        where = where & (pc.field("run_id") == run_id)
    rows = arrow_table(path, None, None, where).to_pylist()
    return [{**r, "row": json.loads(r["row"]), "column": json.loads(r["column"])} for r in rows]


def failure_message(result: dict[str, Any]) -> str:
    span = (
        f"versions {result['from_version']}..{result['to_version']}"
        if result["from_version"] is not None
        else f"version {result['to_version']} (full)"
    )
    lines = [
        f"{result['table']} failed validation at {span}, {result['rows_checked']} rows checked; "
        f"validated version stays {result['validated_version']}:"
    ]
    for f in result["failed"]:
        lines.append(
            f"  - {f['expectation']} on column {f['column']}: observed {f['observed_value']}"
        )
    if result.get("failed_rows"):
        lines.append(
            f"  {result['failed_rows']} failing rows (up to 20 per expectation) are in "
            f"_ops/{FAILED_ROWS_TABLE} with run_id {result['run_id']!r}: "
            f"riverdelta failed-rows {result['table']}"
        )
    return "\n".join(lines)
