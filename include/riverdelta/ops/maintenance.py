"""Table maintenance: compaction, the Delta log's checkpoints, and vacuum that never
removes a file a reader or the quality gate still needs.

A live stream commits every few seconds, one small file per table per batch. Left
alone, a table grows thousands of files and log entries a day, and every reader
lists them. Per table, ``maintain_table``:

1. **compacts** (delta-rs ``optimize.compact``, or ``z_order`` on the columns the
   registry's ``maintenance.zorder`` names for the layer). The commit has
   ``dataChange=false``: the quality gate sees no new rows in it, and blind appends
   (the live stream's bronze and silver writes, delta-rs's ``_ops`` appends) commit
   beside it without conflict. Gold is not compacted: the refresher rewrites its
   windows with ``replaceWhere``, which reads the files it replaces and would fail
   against a compaction that removed them; its files are replaced anyway.
   Quarantine is not compacted while a backfill of its stream runs (a range
   backfill MERGEs into it).
2. **checkpoints** the log (``create_checkpoint``), so readers start from one
   Parquet file instead of replaying JSON commits.
3. **vacuums** files removed more than ``retention`` ago (registry, default 7 days)
   and never one removed after the validated version's commit: readers time-travel
   to the validated version, and the gate reads an increment's original files even
   after a compaction rewrote them. Nothing is vacuumed while a backfill of the
   stream runs.

delta-rs, not Spark: maintenance needs no JVM (a task starts in a second, and
needs no Spark pool slot), and delta-rs's OPTIMIZE/VACUUM are the same protocol
operations Spark's are.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from riverdelta.storage import roots as storage

log = logging.getLogger(__name__)

# A commit that lands between planning and committing the compaction makes delta-rs
# retry the commit itself; these are whole attempts after a conflict it gave up on.
ATTEMPTS = 3


@dataclass
class TableReport:
    table: str
    path: str
    compacted: dict[str, Any] | None = None
    checkpoint_version: int | None = None
    vacuumed: int = 0
    retention_hours: float | None = None
    skipped: list[str] = field(default_factory=list)
    error: str | None = None


def _commit_seconds_ago(path: str, version: int) -> float | None:
    """Age of a version's commit, from its commitInfo (None if its entry is gone)."""
    try:
        actions = storage.commit_actions(path, version)
    except FileNotFoundError:
        return None
    made = storage.commit_seconds(actions)
    return time.time() - made if made is not None else None


def vacuum_retention_hours(
    path: str, retention_hours: float, keep_version: int | None, floor_hours: float = 1.0
) -> float:
    """The configured retention, stretched to keep every file removed after ``keep_version``.

    A file leaves the snapshot at the commit that removes it, and vacuum deletes it
    once that commit is older than the retention. Keeping every file removed after
    ``keep_version``'s commit keeps ``keep_version``'s snapshot whole (readers of the
    validated version) and every unvalidated row's original file (the gate).
    """
    # A floor of an hour: a batch's files are written before its commit lands, and a
    # vacuum must never take the files of a commit still in flight.
    retention_hours = max(retention_hours, floor_hours)
    if keep_version is None:
        return retention_hours
    age = _commit_seconds_ago(path, keep_version)
    if age is None:
        # The validated version's log entry is gone: its age is unknown; keep it all.
        return max(retention_hours, 24.0 * 365)
    return max(retention_hours, age / 3600.0 + 1.0)


def maintain_table(
    table: str,
    path: str,
    *,
    retention_hours: float,
    keep_version: int | None,
    compact: bool = True,
    vacuum: bool = True,
    zorder: tuple[str, ...] = (),
    floor_hours: float = 1.0,
) -> TableReport:
    """Compact, checkpoint and vacuum one Delta table; a failure is reported, not raised."""
    report = TableReport(table, path)
    if not storage.is_delta_table(path):
        report.skipped.append("no Delta table yet")
        return report
    try:
        if compact:
            report.compacted = _compact(path, zorder)
        else:
            report.skipped.append("compaction")
        dt = storage.delta_table(path)
        dt.create_checkpoint()
        report.checkpoint_version = dt.version()
        if vacuum:
            hours = vacuum_retention_hours(path, retention_hours, keep_version, floor_hours)
            report.retention_hours = round(hours, 2)
            removed = dt.vacuum(
                retention_hours=math.ceil(hours),
                dry_run=False,
                enforce_retention_duration=False,
            )
            report.vacuumed = len(removed)
        else:
            report.skipped.append("vacuum")
    except Exception as exc:
        log.exception("maintenance of %s failed", table)
        report.error = f"{type(exc).__name__}: {exc}"
    return report


def _compact(path: str, zorder: tuple[str, ...]) -> dict[str, Any]:
    last: Exception | None = None
    for _ in range(ATTEMPTS):
        dt = storage.delta_table(path)
        try:
            metrics = dt.optimize.z_order(list(zorder)) if zorder else dt.optimize.compact()
        except Exception as exc:  # a concurrent commit delta-rs could not rebase over
            if "conflict" not in str(exc).lower() and "commit" not in str(exc).lower():
                raise
            last = exc
            continue
        return {
            "files_added": int(metrics.get("numFilesAdded", 0)),
            "files_removed": int(metrics.get("numFilesRemoved", 0)),
            "zorder": list(zorder),
        }
    raise RuntimeError(f"compaction kept conflicting with other writers: {last}")


def maintain_stream(stream: str) -> dict[str, Any]:
    """Maintain every table of a stream's live set; the validated versions are kept."""
    from riverdelta.backfill.replay import running_backfill
    from riverdelta.config.registry import load_registry, parse_duration
    from riverdelta.quality.publications import publication
    from riverdelta.storage.lake import TableSet

    spec = load_registry().get(stream)
    maint = spec.maintenance
    hours = parse_duration(maint.retention).total_seconds() / 3600.0
    backfill = running_backfill(stream)
    paths = TableSet.for_stream(spec)
    reports = []
    for layer, table in spec.table_names().items():
        pub = publication(table)
        keep = int(pub["validated_version"]) if pub and pub["path"] == paths[layer] else None
        compact = not layer.startswith("gold") and not (layer == "quarantine" and backfill)
        report = maintain_table(
            table,
            paths[layer],
            retention_hours=hours,
            keep_version=keep,
            compact=compact,
            vacuum=backfill is None,
            zorder=tuple(maint.zorder.get(layer, ())),
        )
        if backfill and not compact:
            report.skipped.append(f"backfill {backfill.get('run_id')} is running")
        reports.append(report)
    return {"stream": stream, "backfill_running": backfill is not None, "tables": reports}


def maintain_ops(retention_hours: float = 7 * 24.0) -> list[TableReport]:
    """The shared ``_ops`` tables: delta-rs blind appends only, so always compactable."""
    from riverdelta.storage.lake import ops_path

    names = ("ops_history", "validation_history", "ingest_batches", "failed_rows")
    return [
        maintain_table(n, ops_path(n), retention_hours=retention_hours, keep_version=None)
        for n in names
    ]


# --------------------------------------------------------------------------- old table sets


def _roots(lake: str) -> list[str]:
    """``tables`` and every ``tables@<run>`` root under the lake."""
    fs, base = storage.filesystem(lake)
    if not fs.exists(base):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)]
    return sorted(storage.join(lake, n) for n in names if n == "tables" or n.startswith("tables@"))


def _last_commit_seconds_ago(path: str) -> float | None:
    try:
        [last] = storage.delta_table(path).history(1)
    except Exception:
        return None
    return time.time() - float(last["timestamp"]) / 1000.0


def old_table_sets(stream: str) -> list[dict[str, Any]]:
    """Every set of the stream's tables that is not live: where, how old, removable or why not.

    A set is the stream's table directories under one root (the live root, or a
    rebuild's ``tables@<run>``). It is kept while the stream's location or any of its
    tables' publications points into it, and for ``maintenance.retention`` after its
    last commit (nobody writes a retired set, so that is when it was retired).
    """
    from riverdelta.config.registry import load_registry, parse_duration
    from riverdelta.quality.publications import publication
    from riverdelta.storage.lake import lake_root, stream_location

    spec = load_registry().get(stream)
    retention = parse_duration(spec.maintenance.retention).total_seconds()
    live = stream_location(stream)["tables_root"].rstrip("/")
    published = {
        (pub["path"] or "").rstrip("/").rsplit("/", 1)[0]
        for t in spec.table_names().values()
        if (pub := publication(t))
    }
    fs, _ = storage.filesystem(lake_root())
    sets = []
    for root in _roots(lake_root()):
        tables = [
            storage.join(root, t)
            for t in spec.table_names().values()
            if fs.exists(storage.filesystem(storage.join(root, t))[1])
        ]
        if root.rstrip("/") == live or not tables:
            continue
        ages = [a for t in tables if (a := _last_commit_seconds_ago(t)) is not None]
        age = min(ages) if ages else None
        reason = None
        if root.rstrip("/") in published:
            reason = "a publication still points at it"
        elif age is None or age < retention:
            reason = f"retired less than {spec.maintenance.retention} ago"
        sets.append(
            {
                "root": root,
                "tables": tables,
                "age_hours": None if age is None else round(age / 3600.0, 2),
                "removable": reason is None,
                "kept_because": reason,
            }
        )
    return sets


def remove_old_table_sets(stream: str, dry_run: bool = True) -> list[dict[str, Any]]:
    """Remove the removable sets of ``old_table_sets`` (only list them with ``dry_run``).

    Re-checked right before removing: a set that became live or published since the
    listing is kept. A ``tables@<run>`` root left empty goes too; the shared
    ``tables`` root stays (other streams' tables live there).
    """
    sets = old_table_sets(stream)
    if dry_run:
        return sets
    for s in sets:
        if not s["removable"]:
            continue
        for table in s["tables"]:
            fs, path = storage.filesystem(table)
            fs.rm(path, recursive=True)
        fs, root = storage.filesystem(s["root"])
        if s["root"].rstrip("/").rsplit("/", 1)[-1].startswith("tables@") and not fs.ls(root):
            fs.rm(root, recursive=True)
        s["removed"] = True
    return sets
