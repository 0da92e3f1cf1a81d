"""Which rows a validation checks: the increment since the validated version, or all of them.

Incremental validation
    Each table has a validated version (``riverdelta.quality.publications``). A run
    pins the table's latest version ``to_version`` and, for the append-only layers
    (bronze, silver, quarantine), validates only the rows in Parquet files added
    after the validated version, read commit by commit from the Delta log
    (metadata only), as plain Parquet under the pinned version's schema: by GX's
    pandas engine through delta-rs up to the row bound of
    ``riverdelta.quality.engine`` (no JVM), by Spark above it. That is exact for
    blind appends and reads nothing else. Delta's Change Data Feed would need
    ``delta.enableChangeDataFeed`` on the tables, and turning it on is a metadata
    commit that makes the live stream's concurrent append fail, so it is not used.
    The run falls back to a full validation (and says why in ``full_reason``) when
    anything in the range is not a blind append (MERGE, DELETE, RESTORE, a file
    removed), when the table uses column mapping or partitions, or when the old
    commits are gone from the log.

Full validation policy
    Full when asked (``full=True``), on the first validation of a table (or of a new
    path), always for gold (its touched windows are rewritten in place), and
    periodically: when the last full validation of the table is more than
    ``RIVERDELTA_FULL_EVERY_VERSIONS`` versions (default 500) or
    ``RIVERDELTA_FULL_EVERY_HOURS`` hours (default 24) behind. Uniqueness
    expectations see only the rows they are given, so duplicates across increments
    are caught by these periodic full runs.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from riverdelta.quality.history import last_full_validation
from riverdelta.quality.publications import publication
from riverdelta.quality.tables import APPEND_ONLY_LAYERS, TableRef
from riverdelta.storage import roots as storage

# Commits that only append data (or touch metadata only): an increment stays exact across them.
_APPEND_OPERATIONS = frozenset(
    {"WRITE", "STREAMING UPDATE", "CREATE TABLE", "CREATE OR REPLACE TABLE"}
)
_METADATA_OPERATIONS = frozenset(
    {"SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "ADD COLUMNS", "CHANGE COLUMN", "UPGRADE PROTOCOL"}
)


def _commit_info(actions: list[dict[str, Any]]) -> tuple[str, str, str]:
    info = storage.commit_info(actions)
    params = info.get("operationParameters") or {}
    mode = str(params.get("mode", "Append")).strip('"')
    return info.get("operation", ""), mode, str(params.get("outputMode", "Append"))


def increment_files(path: str, from_version: int, to_version: int) -> tuple[list[str] | None, str]:
    """Data files added by versions ``(from_version, to_version]``, or None and why not exact.

    Read commit by commit from the log: the files each commit added with
    ``dataChange=true``. A compaction (OPTIMIZE, ``dataChange=false``) in the range
    adds no data: its rewritten files hold rows already counted, and the originals it
    removed are still read (vacuum keeps them until they are validated, see
    ``riverdelta.ops.maintenance``). Not the difference of two snapshots: a compaction
    would make it empty or whole. Not delta-rs's history either: 1.6 numbers a pinned
    table's commits down from the pinned version even when the table moved on.
    """
    try:
        meta = storage.delta_table(path, version=to_version).metadata()
    except Exception as exc:  # log cleaned up, unreadable store, ...
        return None, f"cannot read version {to_version}: {exc}"
    if meta.partition_columns:
        return None, "partitioned table"
    if meta.configuration.get("delta.columnMapping.mode", "none") != "none":
        return None, "column mapping"
    added: list[str] = []
    for version in range(from_version + 1, to_version + 1):
        try:
            actions = storage.commit_actions(path, version)
        except FileNotFoundError:
            return None, f"commit {version} is no longer in the log"
        op, mode, output = _commit_info(actions)
        adds = storage.data_files_added(actions)
        if any("remove" in a and a["remove"].get("dataChange", True) for a in actions):
            return None, f"version {version} is {op} ({mode}): it removes rows"
        if not adds or op in _METADATA_OPERATIONS:
            continue  # compaction, checkpoint-only or metadata commits carry no new rows
        if op not in _APPEND_OPERATIONS or mode != "Append" or output != "Append":
            return None, f"version {version} is {op} ({mode}), not a blind append"
        added += adds
    if any("://" in f or f.startswith("/") for f in added):
        return None, "files outside the table directory"
    # Paths relative to the table, as the log holds them (both engines resolve them).
    return [unquote(f) for f in added], "incremental"


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


def _periodic_full_due(table: str, to_version: int) -> str | None:
    every_versions = _env_number("RIVERDELTA_FULL_EVERY_VERSIONS", 500)
    every_hours = _env_number("RIVERDELTA_FULL_EVERY_HOURS", 24)
    last = last_full_validation(table)
    if last is None:
        return "no full validation on record"
    if to_version - last["to_version"] >= every_versions:
        return f"last full validation is {to_version - last['to_version']} versions old"
    age = datetime.now(UTC) - last["validated_at"]
    if age >= timedelta(hours=every_hours):
        return f"last full validation is {age.total_seconds() / 3600:.1f} hours old"
    return None


def decide_full(
    ref: TableRef, to_version: int, requested: bool, since: int | None = None
) -> tuple[bool, str, int | None]:
    """(full?, why, the version the increment starts after)."""
    if requested:
        return True, "requested", None
    pub = publication(ref.table)
    if since is None and pub and pub["path"] == ref.path and pub["validated_version"] == to_version:
        return False, "up to date", to_version  # gold included: nothing new to check
    if ref.layer not in APPEND_ONLY_LAYERS:
        return True, "gold windows are rewritten in place", None
    if since is not None and since <= to_version:
        return False, "incremental", since  # an audit of this very path vouches for <= since
    if pub is None or pub["path"] != ref.path:
        return True, "first validation of this table", None
    if pub["validated_version"] > to_version:
        return True, "validated version is ahead of the table (restored or recreated?)", None
    due = _periodic_full_due(ref.table, to_version)
    if due:
        return True, due, None
    return False, "incremental", int(pub["validated_version"])


def rows_to_check(
    ref: TableRef, to_version: int, full: bool, since: int | None = None
) -> tuple[bool, str, int | None, list[str] | None]:
    """(full?, why, the version the increment starts after, the increment's files).

    The files are None for a full run and for one with nothing new (the increment
    starts at ``to_version``); ``[]`` when the new commits added no rows (compaction,
    checkpoint or metadata). An increment that is not exact turns into a full run.
    """
    is_full, reason, from_version = decide_full(ref, to_version, full, since)
    if is_full or from_version == to_version:
        return is_full, reason, from_version, None
    assert from_version is not None
    files, why = increment_files(ref.path, from_version, to_version)
    if files is None:
        return True, why, None, None
    return False, reason, from_version, files
