"""The validated pointer: which version of each table readers get.

``_ops/publications/<table>.json``: ``{table, path, validated_version,
published_at, by}``, replaced atomically (write + rename) under a lock. One small
document per table, like ``_ops/state``: readers need neither a JVM nor Delta to
find it, and two tables' validations never contend. A passing run moves it
forward; a failing run leaves it (``riverdelta.quality.gate``). Because the
document carries the path, validating and publishing a rebuilt table set
(``path=``) switches readers to it.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from riverdelta.errors import RiverdeltaError
from riverdelta.quality.locks import file_lock
from riverdelta.quality.tables import resolve_table
from riverdelta.storage import files
from riverdelta.storage.lake import control_dir

PUBLICATIONS = "publications"


class NotValidatedError(RiverdeltaError, LookupError):
    """A table has no validated version yet."""


def _publications_dir() -> Path:
    return control_dir(PUBLICATIONS)


def publication(table: str) -> dict[str, Any] | None:
    """The validated pointer of ``table``, or None if it was never validated."""
    path = _publications_dir() / f"{table}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def publications() -> dict[str, dict[str, Any]]:
    """Every table's pointer, read as one snapshot (a multi-table publish is never half-seen)."""
    folder = _publications_dir()
    if not folder.exists():
        return {}
    with file_lock(folder / ".lock", shared=True):
        return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _write_publication(
    folder: Path, table: str, version: int, path: str, by: str, force: bool
) -> dict[str, Any]:
    current = publication(table)
    if current and not force and current["path"] == path and current["validated_version"] > version:
        raise ValueError(
            f"{table}: validated version is already {current['validated_version']}; "
            f"refusing to move it back to {version} (force=True to do so)"
        )
    doc = {
        "table": table,
        "path": path,
        "validated_version": int(version),
        "published_at": datetime.now(UTC).isoformat(),
        "by": by,
        "previous": (
            {"path": current["path"], "validated_version": current["validated_version"]}
            if current
            else None
        ),
    }
    files.write_atomic(folder / f"{table}.json", json.dumps(doc, indent=2, sort_keys=True))
    return doc


def publish(
    table: str, version: int, *, path: str | None = None, by: str = "", force: bool = False
) -> dict[str, Any]:
    """Move ``table``'s validated pointer to ``version`` of ``path``.

    Refuses to move it backwards on the same path (a slow run finishing after a
    newer one) unless ``force``.
    """
    return publish_many({table: (path or resolve_table(table).path, version)}, by=by, force=force)[
        table
    ]


def publish_many(
    entries: dict[str, tuple[str, int]], *, by: str = "", force: bool = False
) -> dict[str, dict[str, Any]]:
    """Move several tables' pointers under one exclusive lock (a rebuild's hand-over).

    Each file is replaced atomically and ``publications()`` reads under the shared
    lock, so a reader of several tables sees all old or all new pointers.
    """
    folder = _publications_dir()
    with file_lock(folder / ".lock"):
        return {
            table: _write_publication(folder, table, version, path, by, force)
            for table, (path, version) in entries.items()
        }
