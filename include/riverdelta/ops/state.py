"""Operational state and history, kept in the lake's ``_ops`` area.

- ``_ops/state/<stream>.json``: desired state (RUNNING | STOPPED), the current
  deployment, restart times, crash-loop flag and the table versions already
  announced as asset events. One small document per stream, so two streams'
  reconcilers never contend. Parallel writers of one stream (the stream DAG's
  tasks, an operator's CLI, a backfill's hand-over) never lose an update: every
  save is a compare-and-swap on the document's ``revision`` (``update_state``
  re-reads and re-applies a change that lost the race). The lock behind the swap
  is held for the read-compare-rename only, never across a driver start, so a
  hand-over that holds the stream paused for minutes blocks nobody.
- ``_ops/ops_history``: an append-only Delta table (delta-rs, no JVM) of every
  deploy, stop, restart, health breach, backfill and validation; analysts query
  it like any table.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from riverdelta.errors import RiverdeltaError
from riverdelta.storage import files
from riverdelta.storage import roots as storage
from riverdelta.storage.lake import control_dir, ops_path

HISTORY = "ops_history"
RUNNING = "RUNNING"
STOPPED = "STOPPED"


@dataclass
class StreamState:
    stream: str
    desired: str = STOPPED
    desired_at: float = 0.0
    desired_by: str = ""
    deployment: dict[str, Any] | None = None
    restarts: list[float] = field(default_factory=list)
    crash_loop: bool = False
    last_error: str | None = None
    announced_versions: dict[str, int] = field(default_factory=dict)
    paused_by: str | None = None  # a backfill hand-over owns the stream for now
    updated_at: float = 0.0
    revision: int = 0  # bumped by every save: the compare in compare-and-swap


class StaleStateError(RiverdeltaError, RuntimeError):
    """The state changed on disk since it was loaded: re-read and re-apply the change."""


T = TypeVar("T")


def _state_file(stream: str) -> Path:
    return control_dir("state") / f"{stream}.json"


def load_state(stream: str) -> StreamState:
    path = _state_file(stream)
    if not path.exists():
        return StreamState(stream)
    data = json.loads(path.read_text())
    return StreamState(**{k: v for k, v in data.items() if k in StreamState.__dataclass_fields__})


@contextlib.contextmanager
def _swap_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _revision_on_disk(path: Path) -> int:
    return int(json.loads(path.read_text()).get("revision", 0)) if path.exists() else 0


def save_state(state: StreamState) -> None:
    """Write ``state`` if nobody saved since it was loaded; else ``StaleStateError``."""
    path = _state_file(state.stream)
    with _swap_lock(path):
        on_disk = _revision_on_disk(path)
        if on_disk != state.revision:
            raise StaleStateError(
                f"state of {state.stream} is at revision {on_disk}, this copy was loaded at "
                f"{state.revision}: re-read it (ops.update_state does)"
            )
        state.revision += 1
        state.updated_at = time.time()
        files.write_atomic(path, json.dumps(asdict(state), indent=2, sort_keys=True))


def update_state(stream: str, change: Callable[[StreamState], T], attempts: int = 50) -> T:
    """Apply ``change`` to the freshest state and save it; re-apply if another writer won.

    ``change`` mutates the state it is given and may run more than once: keep slow or
    one-off work (starting a driver) outside it and pass in its result.
    """
    for _ in range(attempts):
        state = load_state(stream)
        out = change(state)
        try:
            save_state(state)
            return out
        except StaleStateError:
            time.sleep(0.01)
    raise StaleStateError(f"state of {stream}: {attempts} writers in a row won the race")


def history_path() -> str:
    return ops_path(HISTORY)


_HISTORY_COLUMNS = ("at", "stream", "event", "outcome", "actor", "detail")


# scheme://user:password@host -> scheme://user:***@host (a storage root, a database URL
# in an error message): the history is read by analysts, like any table.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^/\s:@]*:)[^/\s@]+@")


def mask_urls(text: str) -> str:
    """Every URL's embedded password replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def record(stream: str, event: str, *, outcome: str = "ok", actor: str = "", **detail: Any) -> None:
    """Append one event to the ops history (URLs' embedded passwords masked)."""
    import pyarrow as pa

    table = pa.table(
        {
            "at": pa.array([datetime.now(UTC)], pa.timestamp("us", tz="UTC")),
            "stream": [stream],
            "event": [event],
            "outcome": [outcome],
            "actor": [
                actor
                or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
                or f"cli:{os.getenv('USER', '')}"
            ],
            "detail": [mask_urls(json.dumps(detail, default=str, sort_keys=True))],
        }
    )
    # Blind appends never conflict in Delta, so concurrent writers need no lock.
    storage.write_delta(history_path(), table, mode="append")


def history(
    stream: str | None = None, event: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Events, oldest first. The filters go into the Parquet scan (row groups whose
    statistics rule them out are not read), so a narrow question stays cheap as the
    history grows; ``maintain_ops`` keeps its files compacted."""
    import pyarrow.compute as pc

    if not storage.is_delta_table(history_path()):
        return []
    conditions = []
    if stream is not None:
        conditions.append(pc.field("stream") == stream)
    if event is not None:
        conditions.append(pc.field("event") == event)
    if since is not None:
        conditions.append(pc.field("at") >= since)
    where = None
    for c in conditions:
        where = c if where is None else where & c
    dataset = storage.delta_table(history_path()).to_pyarrow_dataset()
    rows = dataset.to_table(filter=where).to_pylist()
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
    return sorted(rows, key=lambda r: r["at"])
