"""What on-call sees: per stream, desired vs actual state, lag, batch age, rates, errors."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from riverdelta.config.registry import load_registry
from riverdelta.config.settings import settings
from riverdelta.ops import state as ops

if TYPE_CHECKING:
    from riverdelta.config.registry import StreamSpec
    from riverdelta.ops.health import Health


def stream_status(stream: str, now: float | None = None) -> dict[str, Any]:
    from riverdelta.launch.launchers import Deployment
    from riverdelta.ops import control

    spec = load_registry().get(stream)
    state = ops.load_state(spec.name)
    now = time.time() if now is None else now
    actual = control.actual_state(state)
    health = live_health(spec, now)
    # A read: the Spark app id is filled in here for display only; reconcile stores it.
    dep = control.refreshed_deployment(state) or {}
    window = control.RestartPolicy.for_stream(spec).window_seconds
    return {
        "stream": spec.name,
        "source": str(spec.source),
        # What is read now: a pattern's topics are the ones the cluster has at this check.
        "topics": sorted({t for t, _ in health.topic_end_offsets}) or list(spec.topics),
        "desired": state.desired,
        "actual": actual,
        "crash_loop": state.crash_loop,
        "launcher": dep.get("launcher"),
        "pid": dep.get("pid"),
        # The deployment's id, under the key the status report has always used.
        "app_id": Deployment.from_dict(dep).deployment_id if dep else None,
        "log": dep.get("log"),
        "started_at": dep.get("started_at"),
        "restarts_in_window": len([t for t in state.restarts if now - t < window]),
        "last_error": health.last_exception or state.last_error,
        "thresholds": dict(spec.health),
        **health.to_dict(),
    }


def progress_file(stream: str):
    return settings().run_dir / "progress" / f"{stream}.json"


def live_health(spec: StreamSpec, now: float) -> Health:
    """The live query's health: its checkpoint, its topics and its driver's progress file."""
    from riverdelta.ops.health import compute_health
    from riverdelta.storage.lake import live_checkpoint

    return compute_health(
        live_checkpoint(spec.name),
        settings().kafka_bootstrap,
        spec.source,
        now=now,
        progress_file=progress_file(spec.name),
    )


def breaches(report: dict[str, Any]) -> list[str]:
    from riverdelta.ops.health import Health, check_thresholds, driver_up_seconds, starting

    if report["desired"] != ops.RUNNING:
        return []
    t = report["thresholds"]
    health = Health.from_dict(report)
    up = driver_up_seconds(report.get("started_at"), health.query_started_at, time.time())
    if starting(up, t["max_batch_age_seconds"]):
        # A driver that has just (re)started has had no chance to commit a batch yet.
        return []
    return check_thresholds(health, t["max_lag_seconds"], t["max_batch_age_seconds"])


def raise_on_breach(report: dict[str, Any], actor: str = "") -> None:
    from riverdelta.ops.control import HealthBreachError

    found = breaches(report)
    if not found:
        return
    ops.record(report["stream"], "health_breach", outcome="alert", actor=actor, breaches=found)
    raise HealthBreachError(f"stream {report['stream']} is unhealthy: " + " | ".join(found))


def table_version(path: str) -> int | None:
    from riverdelta.storage import roots as storage

    if not storage.is_delta_table(path):
        return None
    return storage.delta_table(path).version()


def new_version(stream: str, layer: str) -> int | None:
    """The table's latest version if it was not announced yet (and remember it)."""
    from riverdelta.storage.lake import TableSet

    spec = load_registry().get(stream)
    version = table_version(TableSet.for_stream(spec)[layer])
    if version is None:
        return None

    def announce(state: ops.StreamState) -> int | None:
        if state.announced_versions.get(layer, -1) >= version:
            return None
        state.announced_versions[layer] = version
        return version

    return ops.update_state(spec.name, announce)


def format_table(reports: list[dict[str, Any]]) -> str:
    cols = [
        ("stream", "stream"),
        ("desired", "desired"),
        ("actual", "actual"),
        ("pid/app", lambda r: str(r.get("pid") or r.get("app_id") or "-")),
        ("batch age", lambda r: _secs(r.get("last_batch_age_seconds"))),
        ("lag rec", lambda r: str(r.get("lag_records", "-"))),
        ("lag s", lambda r: _secs(r.get("lag_seconds"))),
        ("in/s", lambda r: _rate(r.get("input_rows_per_second"))),
        ("done/s", lambda r: _rate(r.get("processed_rows_per_second"))),
        (
            "restarts",
            lambda r: (
                str(r.get("restarts_in_window", 0)) + (" CRASH-LOOP" if r.get("crash_loop") else "")
            ),
        ),
        ("last error", lambda r: (r.get("last_error") or "-")[:60]),
    ]
    rows = [[c[0] for c in cols]]
    for r in reports:
        rows.append([str(r.get(f, "-")) if isinstance(f, str) else f(r) for _, f in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows
    )


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}s"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"
