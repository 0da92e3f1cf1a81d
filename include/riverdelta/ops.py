"""Operational state and history, kept in the lake's ``_ops`` area.

- ``_ops/state/<stream>.json``: desired state (RUNNING | STOPPED), the current
  deployment, restart times, crash-loop flag and the table versions already
  announced as asset events. One small document per stream, replaced
  atomically, so two streams' reconcilers never contend.
- ``_ops/ops_history``: an append-only Delta table (delta-rs, no JVM) of every
  deploy, stop, restart, health breach, backfill and validation; analysts query
  it like any table.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from riverdelta import storage
from riverdelta.lake import control_dir, ops_path

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


def _state_file(stream: str) -> Path:
    return control_dir("state") / f"{stream}.json"


def load_state(stream: str) -> StreamState:
    path = _state_file(stream)
    if not path.exists():
        return StreamState(stream)
    data = json.loads(path.read_text())
    return StreamState(**{k: v for k, v in data.items() if k in StreamState.__dataclass_fields__})


def save_state(state: StreamState) -> None:
    state.updated_at = time.time()
    path = _state_file(state.stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True))
    tmp.replace(path)


def history_path() -> str:
    return ops_path(HISTORY)


_HISTORY_COLUMNS = ("at", "stream", "event", "outcome", "actor", "detail")


def record(stream: str, event: str, *, outcome: str = "ok", actor: str = "", **detail: Any) -> None:
    """Append one event to the ops history."""
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
            "detail": [json.dumps(detail, default=str, sort_keys=True)],
        }
    )
    # Blind appends never conflict in Delta, so concurrent writers need no lock.
    storage.write_delta(history_path(), table, mode="append")


def history(stream: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
    if not storage.is_delta_table(history_path()):
        return []
    rows = storage.delta_table(history_path()).to_pyarrow_table().to_pylist()
    rows = [
        r
        for r in rows
        if (stream is None or r["stream"] == stream) and (event is None or r["event"] == event)
    ]
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
    return sorted(rows, key=lambda r: r["at"])
