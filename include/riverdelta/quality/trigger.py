"""The quality gate's watcher: an event trigger that fires when a stream's tables get new versions.

Airflow's triggerer runs it (``AssetWatcher`` on the stream's ``versions`` asset):
it polls the Delta log of each of the stream's tables every couple of seconds and
emits one event per poll in which some table moved past what it last saw, so the
``quality_<stream>`` gate starts within seconds of a commit instead of waiting for
the stream DAG's 3-minute announcements (which stay, as a second path).

Polling the log (a listing and a small read per table) is how Delta readers learn of
new versions; there is no notification to subscribe to. When the triggerer
restarts, the first poll compares against the published (validated) versions, so
versions committed while it was down still start a gate run.

DAG files import this module: only the trigger base class at module level.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0


def default_poll_seconds() -> float:
    return float(os.environ.get("RIVERDELTA_GATE_POLL_SECONDS") or POLL_SECONDS)


def _baseline(table: str, path: str) -> int:
    """What a fresh watcher treats as seen: the validated version of this very path."""
    from riverdelta.quality.publications import publication

    pub = publication(table)
    return int(pub["validated_version"]) if pub and pub["path"] == path else -1


def new_versions(stream: str, seen: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Table -> latest version, for the tables of ``stream`` past what ``seen`` holds.

    ``seen`` (table -> (path, version)) is updated in place; a table whose log cannot
    be read this time is skipped, not fatal: the next poll tries again.
    """
    from riverdelta.config.registry import load_registry
    from riverdelta.quality.tables import latest_version
    from riverdelta.storage.lake import TableSet

    spec = load_registry().get(stream)
    found: dict[str, int] = {}
    # The live set, as the gate resolves it: a rebuild may have moved it.
    paths = TableSet.for_stream(spec)
    for layer, table in spec.table_names().items():
        path = paths[layer]
        try:
            version = latest_version(path)
        except Exception as exc:  # a store delta-rs cannot open, a log being written
            log.debug("%s: cannot read the log at %s: %s", table, path, exc)
            continue
        if version is None:
            continue
        last_path, last = seen.get(table, (path, None))
        if last is None or last_path != path:
            last = _baseline(table, path)
        if version > last:
            found[table] = version
        seen[table] = (path, max(version, last))
    return found


class NewTableVersionsTrigger(BaseEventTrigger):
    """Fires ``{"stream", "versions": {table: version}}`` whenever a table of the stream moves."""

    def __init__(self, stream: str, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__()
        self.stream = stream
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"stream": self.stream, "poll_seconds": self.poll_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        seen: dict[str, tuple[str, int]] = {}
        while True:
            try:
                # Off the event loop: the triggerer runs every trigger on one loop.
                versions = await asyncio.to_thread(new_versions, self.stream, seen)
            except Exception:
                log.exception("%s: polling the tables' versions failed", self.stream)
                versions = {}
            if versions:
                yield TriggerEvent({"stream": self.stream, "versions": versions})
            await asyncio.sleep(self.poll_seconds)
