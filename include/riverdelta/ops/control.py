"""Desired state, reconciled: deploy, stop, restart and watch a stream.

Airflow tasks are finite and streams are not, so no task waits on a driver:
``deploy`` launches a detached driver and returns; ``reconcile`` (every few
minutes) compares the desired state with what runs and acts. Everything it
does is written to the ops history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NoReturn

from riverdelta.config.registry import StreamSpec, load_registry
from riverdelta.config.settings import settings
from riverdelta.errors import RiverdeltaError
from riverdelta.ops import state as ops


class CrashLoopError(RiverdeltaError, RuntimeError):
    """The stream keeps dying; restarts are suspended until an operator acts."""


class HealthBreachError(RiverdeltaError, RuntimeError):
    pass


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 3
    window_seconds: float = 900.0
    backoff_seconds: float = 15.0

    @classmethod
    def for_stream(cls, spec: StreamSpec) -> RestartPolicy:
        raw = getattr(spec, "restart", None) or {}
        return cls(
            **{k: raw[k] for k in ("max_restarts", "window_seconds", "backoff_seconds") if k in raw}
        )

    def backoff(self, recent: int) -> float:
        """Wait before the next restart: 0 for the first, then doubling."""
        return 0.0 if recent == 0 else self.backoff_seconds * 2 ** (recent - 1)


def _spec(stream: str) -> StreamSpec:
    return load_registry().get(stream)


def _launcher(dep: dict[str, Any] | None = None):
    from riverdelta.launch.launchers import launcher_for

    name = (dep or {}).get("launcher")
    return launcher_for(settings().spark_master, name)


def _deployment(dep: dict[str, Any] | None):
    from riverdelta.launch.launchers import Deployment

    return Deployment.from_dict(dep) if dep else None


def actual_state(state: ops.StreamState) -> str:
    dep = _deployment(state.deployment)
    if dep is None:
        return "DEAD"
    return _launcher(state.deployment).status(dep)


def refreshed_deployment(state: ops.StreamState) -> dict[str, Any] | None:
    """The deployment with what the launcher learnt since (e.g. the Spark app id from the log)."""
    if not state.deployment or _deployment(state.deployment).spark_app_id:
        return state.deployment
    return _launcher(state.deployment).refresh(_deployment(state.deployment)).to_dict()


def _launch(stream: str) -> dict[str, Any]:
    from riverdelta.airflow.env import ensure_airflow_env
    from riverdelta.launch.submit import build_command, ingest_args, submit_env

    spec = _spec(stream)
    ensure_airflow_env()  # the hook resolves the Spark connection from AIRFLOW_CONN_SPARK_DEFAULT
    from riverdelta.storage.lake import stream_location
    from riverdelta.stream.job import IngestMode

    where = stream_location(spec.name)
    args = ingest_args(
        spec.name,
        IngestMode.LIVE,
        checkpoint=where["checkpoint"],
        tables_root=where["tables_root"],
    )
    cmd = build_command(args, name=f"riverdelta-{spec.name}-{IngestMode.LIVE}")
    log = settings().log_dir / f"stream-{spec.name}.log"
    dep = _launcher().launch(spec.name, cmd, submit_env(), log)
    return dep.to_dict()


def _stop_driver(state: ops.StreamState) -> bool:
    dep = _deployment(state.deployment)
    if dep is None:
        return False
    launcher = _launcher(state.deployment)
    was_running = launcher.status(dep) == "RUNNING"
    if was_running:
        launcher.stop(dep)
    state.deployment = None
    return was_running


def _deployment_change(expected: dict[str, Any] | None, new: dict[str, Any] | None):
    """A state change: ``new`` replaces the deployment if it is still ``expected``.

    A writer that stopped or started a driver records it only over the deployment it
    acted on; if another writer recorded a different one meanwhile, that one stays.
    """

    def change(state: ops.StreamState) -> bool:
        if state.deployment != expected:
            return False
        state.deployment = new
        return True

    return change


def _stop_deployment(stream: str, deployment: dict[str, Any] | None) -> bool:
    """Stop ``deployment`` and forget it in the state, unless another was recorded since."""
    stopped = _stop_driver(ops.StreamState(stream, deployment=deployment))
    ops.update_state(stream, _deployment_change(deployment, None))
    return stopped


# --------------------------------------------------------------------------- hand-over
# A backfill moves the live stream onto rebuilt tables through these three. Every save
# is a compare-and-swap of one field group: an operator's stop during the hand-over
# (desired STOPPED) is not undone by the hand-over's saves.


class Paused:
    """The stream's driver stopped and reconcile holding off, until the ``with`` block ends.

    ``was_running``: the driver ran when it was stopped; ``paused_at``: when reconcile
    started to leave the stream alone (for the hand-over's pause time).
    """

    def __init__(self, stream: str, by: str) -> None:
        self.stream, self.by = stream, by
        self.was_running = False
        self.paused_at = 0.0

    def __enter__(self) -> Paused:
        def mark(s: ops.StreamState) -> dict[str, Any] | None:
            s.paused_by = self.by  # reconcile leaves the stream alone meanwhile
            return s.deployment

        deployment = ops.update_state(self.stream, mark)
        self.paused_at = time.time()
        try:
            self.was_running = _stop_deployment(self.stream, deployment)
        except BaseException:
            self._unpause()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._unpause()

    def _unpause(self) -> None:
        def unpause(s: ops.StreamState) -> None:
            s.paused_by = None

        ops.update_state(self.stream, unpause)


def pause(stream: str, by: str) -> Paused:
    """``with pause(stream, run_id) as paused:`` the driver is down and reconcile waits."""
    return Paused(stream, by)


def move(stream: str, tables_root: str, checkpoint: str, by: str) -> bool:
    """Point the stream at other tables and checkpoint; whether it should run (desired RUNNING)."""
    from riverdelta.storage.lake import set_stream_location

    set_stream_location(stream, tables_root, checkpoint, by=by)

    def fresh_tables(s: ops.StreamState) -> bool:
        s.announced_versions = {}  # versions of the new tables start afresh
        return s.desired == ops.RUNNING

    return ops.update_state(stream, fresh_tables)


def resume(stream: str) -> dict[str, Any]:
    """Start a driver at the stream's location and record it; the new deployment."""
    deployment = _launch(stream)
    ops.update_state(stream, _deployment_change(None, deployment))
    return deployment


def deploy(stream: str, actor: str = "") -> dict[str, Any]:
    name = _spec(stream).name
    state = ops.load_state(name)
    started = actual_state(state) != "RUNNING"
    # Slow and one-off: outside the state change, which may be applied more than once.
    launched = _launch(stream) if started else None

    def change(s: ops.StreamState) -> dict[str, Any] | None:
        s.desired, s.desired_at, s.desired_by = ops.RUNNING, time.time(), actor
        # An operator's deploy is the acknowledgement that ends a crash loop.
        s.crash_loop, s.restarts, s.last_error = False, [], None
        s.paused_by = None  # nor does a hand-over that died half-way keep it paused
        if launched is not None:
            s.deployment = launched
        return s.deployment

    deployment = ops.update_state(name, change)
    ops.record(stream, "deploy", actor=actor, started=started, deployment=deployment)
    return {"stream": stream, "action": "deploy", "started": started, "deployment": deployment}


def stop(stream: str, actor: str = "") -> dict[str, Any]:
    name = _spec(stream).name

    def desire_stopped(s: ops.StreamState) -> dict[str, Any] | None:
        s.desired, s.desired_at, s.desired_by = ops.STOPPED, time.time(), actor
        return s.deployment

    # The wish first: a reconcile that reads the state from now on leaves the stream down.
    stopped = _stop_deployment(name, ops.update_state(name, desire_stopped))
    ops.record(stream, "stop", actor=actor, stopped=stopped)
    return {"stream": stream, "action": "stop", "stopped": stopped}


def restart(stream: str, actor: str = "", reason: str = "operator") -> dict[str, Any]:
    name = _spec(stream).name
    old = ops.load_state(name).deployment
    _stop_driver(ops.StreamState(name, deployment=old))
    launched = _launch(stream)

    def change(s: ops.StreamState) -> None:
        s.desired, s.crash_loop, s.deployment = ops.RUNNING, False, launched

    ops.update_state(name, change)
    ops.record(stream, "restart", actor=actor, reason=reason, deployment=launched)
    return {"stream": stream, "action": "restart", "reason": reason, "deployment": launched}


def reconcile(stream: str, actor: str = "", now: float | None = None) -> dict[str, Any]:
    """Bring the stream to its desired state; restart with back-off; stop at a crash loop."""
    spec = _spec(stream)
    now = time.time() if now is None else now
    state = ops.load_state(spec.name)
    if state.paused_by:
        # A rebuild is switching the stream to its new tables; acting now would race it.
        reason = f"hand-over in progress ({state.paused_by})"
        return {"stream": stream, "desired": state.desired, "action": "none", "reason": reason}
    _refresh_deployment(spec.name, state)
    actual = actual_state(state)
    result: dict[str, Any] = {
        "stream": stream,
        "desired": state.desired,
        "actual": actual,
        "action": "none",
    }
    if state.desired == ops.STOPPED:
        if actual == "RUNNING":
            _stop_deployment(spec.name, state.deployment)
            ops.record(stream, "stop", actor=actor, reason="desired state is STOPPED")
            result["action"] = "stopped"
        return result
    if state.crash_loop:
        raise CrashLoopError(_crash_loop_message(spec, state))
    reason = _restart_reason(spec, state, actual, now)
    if reason is None:
        return result
    policy = RestartPolicy.for_stream(spec)
    recent = [t for t in state.restarts if now - t < policy.window_seconds]
    if len(recent) >= policy.max_restarts:
        _enter_crash_loop(stream, spec, state, recent, actor)
    wait = policy.backoff(len(recent))
    if recent and now - recent[-1] < wait:
        retry_in = round(wait - (now - recent[-1]), 1)
        result.update(action="backoff", retry_in_seconds=retry_in, reason=reason)
        return result
    attempt = _restart_driver(stream, spec, state, [*recent, now], actor, reason)
    result.update(action="restarted", reason=reason, attempt=attempt)
    return result


def _refresh_deployment(name: str, state: ops.StreamState) -> None:
    """Record what the launcher learnt about the driver since (over the same deployment only)."""
    filled = refreshed_deployment(state)
    if filled != state.deployment:
        ops.update_state(name, _deployment_change(state.deployment, filled))
        state.deployment = filled


def _restart_reason(
    spec: StreamSpec, state: ops.StreamState, actual: str, now: float
) -> str | None:
    """Why the driver of a stream that should run needs a restart; None if it is fine."""
    if actual == "UNKNOWN":
        # The driver may be alive where we cannot see it (another host, cluster API down):
        # a second driver on the same checkpoint would be worse than waiting.
        raise HealthBreachError(
            f"stream {spec.name}: the state of its driver is UNKNOWN ({state.deployment}); not "
            "restarting it blindly. Check the cluster manager, then trigger action=restart."
        )
    if actual != "RUNNING":
        return "driver dead"
    from riverdelta.ops.health import driver_up_seconds, is_stuck
    from riverdelta.ops.status import live_health

    health = live_health(spec, now)
    started_at = (state.deployment or {}).get("started_at")
    up = driver_up_seconds(started_at, health.query_started_at, now)
    if is_stuck(health, spec.health["max_batch_age_seconds"], up):
        return f"stuck: last batch {health.last_batch_age_seconds:.0f}s ago while lag is {health.lag_records}"
    return None


def _enter_crash_loop(
    stream: str, spec: StreamSpec, state: ops.StreamState, recent: list[float], actor: str
) -> NoReturn:
    """Too many restarts in the window: suspend restarts, alert, raise."""
    state.crash_loop = True
    state.last_error = _driver_error(state)

    def crash_looped(s: ops.StreamState) -> None:
        s.crash_loop, s.last_error = True, state.last_error

    ops.update_state(spec.name, crash_looped)
    ops.record(
        stream,
        "crash_loop",
        outcome="alert",
        actor=actor,
        restarts=len(recent),
        last_error=state.last_error,
    )
    raise CrashLoopError(_crash_loop_message(spec, state))


def _restart_driver(
    stream: str,
    spec: StreamSpec,
    state: ops.StreamState,
    restarts: list[float],
    actor: str,
    reason: str,
) -> int:
    """Stop what is left of the driver, start a new one and record it; the attempt number."""
    last_error = _driver_error(state)
    _stop_driver(state)
    launched = _launch(stream)
    state.deployment, state.restarts, state.last_error = launched, restarts, last_error

    def restarted(s: ops.StreamState) -> None:
        # Recorded whatever happened meanwhile: a driver that runs must be known. If an
        # operator stopped the stream during the launch, the next reconcile stops it.
        s.deployment, s.restarts, s.last_error = launched, restarts, last_error

    ops.update_state(spec.name, restarted)
    ops.record(
        stream,
        "restart",
        actor=actor,
        reason=reason,
        attempt=len(restarts),
        last_error=last_error,
    )
    return len(restarts)


def _driver_error(state: ops.StreamState) -> str | None:
    """The last error line of the driver's log, for the alert."""
    log = (state.deployment or {}).get("log")
    if not log:
        return None
    from riverdelta.launch.procs import tail

    lines = [
        ln
        for ln in tail(log, 200).splitlines()
        if "error" in ln.lower() or "exception" in ln.lower()
    ]
    return lines[-1][:500] if lines else None


def _crash_loop_message(spec: StreamSpec, state: ops.StreamState) -> str:
    policy = RestartPolicy.for_stream(spec)
    log = (state.deployment or {}).get("log") or settings().log_dir / f"stream-{spec.name}.log"
    return (
        f"stream {spec.name} is in a crash loop: {policy.max_restarts} restarts within "
        f"{policy.window_seconds:.0f}s did not keep it alive; restarts are suspended. "
        f"Last error: {state.last_error or 'see the driver log'}. Driver log: {log}. "
        f"Fix the cause, then trigger stream_{spec.name} with action=deploy (or `riverdelta deploy {spec.name}`)."
    )
