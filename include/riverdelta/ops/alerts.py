"""The paging hook: every failed health check, crash loop or validation ends here.

It logs at ERROR, appends a ``page`` event to the ops history and, when
``RIVERDELTA_PAGER_COMMAND`` names a program, runs it with the alert as JSON on
stdin (argument list, no shell), so any pager can be wired without code.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from datetime import UTC, datetime
from typing import Any

from riverdelta.airflow import dag_ids

log = logging.getLogger("riverdelta.ops.alerts")


def page(context: dict[str, Any]) -> None:
    """Airflow ``on_failure_callback``."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    alert = {
        "at": datetime.now(UTC).isoformat(),
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None),
        "message": str(exc) if exc else "task failed",
    }
    send(alert, stream=(context.get("params") or {}).get("stream") or _stream_of(alert["dag_id"]))


def send(alert: dict[str, Any], stream: str = "") -> None:
    log.error("PAGE %s", json.dumps(alert, sort_keys=True))
    try:
        from riverdelta.ops import state as ops

        ops.record(stream or "-", "page", outcome="alert", **alert)
    except Exception:  # the pager must never mask the original failure
        log.exception("could not record the page in the ops history")
    command = os.environ.get("RIVERDELTA_PAGER_COMMAND")
    if command:
        subprocess.run(
            shlex.split(command), input=json.dumps(alert), text=True, check=False, timeout=30
        )


def _stream_of(dag_id: str | None) -> str:
    for prefix in (dag_ids.STREAM_PREFIX, dag_ids.BACKFILL_PREFIX, dag_ids.QUALITY_PREFIX):
        if dag_id and dag_id.startswith(prefix):
            return dag_id.removeprefix(prefix)
    return ""
