"""Desired state, reconciled: deploy, stop, restart and watch a stream.

Airflow tasks are finite and streams are not, so no task waits on a driver:
``deploy`` launches a detached driver and returns; ``reconcile`` (every few
minutes) compares the desired state with what runs and acts. Everything it
does is written to the ops history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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
    if not state.deployment or state.deployment.get("app_id"):
        return state.deployment
    return _launcher(state.deployment).refresh(_deployment(state.deployment)).to_dict()


def launch(stream: str) -> dict[str, Any]:
    from riverdelta.airflow.env import ensure_airflow_env
    from riverdelta.launch.submit import build_command, ingest_args, submit_env

    spec = _spec(stream)
    ensure_airflow_env()  # the hook resolves the Spark connection from AIRFLOW_CONN_SPARK_DEFAULT
    from riverdelta.storage.lake import stream_location

    where = stream_location(spec.name)
    args = ingest_args(
        spec.name, "live", checkpoint=where["checkpoint"], tables_root=where["tables_root"]
    )
    cmd = build_command(args, name=f"riverdelta-{spec.name}-live")
    log = settings().log_dir / f"stream-{spec.name}.log"
    dep = _launcher().launch(spec.name, cmd, submit_env(), log)
    return dep.to_dict()


def _stop_deployment(state: ops.StreamState) -> bool:
    dep = _deployment(state.deployment)
    if dep is None:
        return False
    launcher = _launcher(state.deployment)
    was_running = launcher.status(dep) == "RUNNING"
    if was_running:
        launcher.stop(dep)
    state.deployment = None
    return was_running


def deployment_change(expected: dict[str, Any] | None, new: dict[str, Any] | None):
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


def stop_deployment(stream: str, deployment: dict[str, Any] | None) -> bool:
    """Stop ``deployment`` and forget it in the state, unless another was recorded since."""
    stopped = _stop_deployment(ops.StreamState(stream, deployment=deployment))
    ops.update_state(stream, deployment_change(deployment, None))
    return stopped


def deploy(stream: str, actor: str = "") -> dict[str, Any]:
    name = _spec(stream).name
    state = ops.load_state(name)
    started = actual_state(state) != "RUNNING"
    # Slow and one-off: outside the state change, which may be applied more than once.
    launched = launch(stream) if started else None

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
    stopped = stop_deployment(name, ops.update_state(name, desire_stopped))
    ops.record(stream, "stop", actor=actor, stopped=stopped)
    return {"stream": stream, "action": "stop", "stopped": stopped}


def restart(stream: str, actor: str = "", reason: str = "operator") -> dict[str, Any]:
    name = _spec(stream).name
    old = ops.load_state(name).deployment
    _stop_deployment(ops.StreamState(name, deployment=old))
    launched = launch(stream)

    def change(s: ops.StreamState) -> None:
        s.desired, s.crash_loop, s.deployment = ops.RUNNING, False, launched

    ops.update_state(name, change)
    ops.record(stream, "restart", actor=actor, reason=reason, deployment=launched)
    return {"stream": stream, "action": "restart", "reason": reason, "deployment": launched}


def reconcile(stream: str, actor: str = "", now: float | None = None) -> dict[str, Any]:
    """Bring the stream to its desired state; restart with back-off; stop at a crash loop."""
    from riverdelta.ops.health import compute_health, is_stuck

    spec = _spec(stream)
    now = time.time() if now is None else now
    state = ops.load_state(spec.name)
    if state.paused_by:
        # A rebuild is switching the stream to its new tables; acting now would race it.
        return {
            "stream": stream,
            "desired": state.desired,
            "action": "none",
            "reason": f"hand-over in progress ({state.paused_by})",
        }
    filled = refreshed_deployment(state)
    if filled != state.deployment:
        ops.update_state(spec.name, deployment_change(state.deployment, filled))
        state.deployment = filled
    actual = actual_state(state)
    result: dict[str, Any] = {
        "stream": stream,
        "desired": state.desired,
        "actual": actual,
        "action": "none",
    }

    if state.desired == ops.STOPPED:
        if actual == "RUNNING":
            stop_deployment(spec.name, state.deployment)
            ops.record(stream, "stop", actor=actor, reason="desired state is STOPPED")
            result["action"] = "stopped"
        return result

    if state.crash_loop:
        raise CrashLoopError(_crash_loop_message(spec, state))

    if actual == "UNKNOWN":
        # The driver may be alive where we cannot see it (another host, cluster API down):
        # a second driver on the same checkpoint would be worse than waiting.
        raise HealthBreachError(
            f"stream {spec.name}: the state of its driver is UNKNOWN ({state.deployment}); not "
            "restarting it blindly. Check the cluster manager, then trigger action=restart."
        )
    reason = None
    if actual != "RUNNING":
        reason = "driver dead"
    else:
        from riverdelta.storage.lake import live_checkpoint

        health = compute_health(
            live_checkpoint(spec.name), settings().kafka_bootstrap, spec.source, now=now
        )
        if is_stuck(health, spec.health["max_batch_age_seconds"]):
            reason = f"stuck: last batch {health.last_batch_age_seconds:.0f}s ago while lag is {health.lag_records}"
    if reason is None:
        return result

    policy = RestartPolicy.for_stream(spec)
    recent = [t for t in state.restarts if now - t < policy.window_seconds]
    if len(recent) >= policy.max_restarts:
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
    wait = policy.backoff(len(recent))
    if recent and now - recent[-1] < wait:
        result.update(
            action="backoff", retry_in_seconds=round(wait - (now - recent[-1]), 1), reason=reason
        )
        return result
    last_error = _driver_error(state)
    _stop_deployment(state)
    launched = launch(stream)
    state.deployment, state.restarts, state.last_error = launched, [*recent, now], last_error

    def restarted(s: ops.StreamState) -> None:
        # Recorded whatever happened meanwhile: a driver that runs must be known. If an
        # operator stopped the stream during the launch, the next reconcile stops it.
        s.deployment, s.restarts, s.last_error = launched, state.restarts, last_error

    ops.update_state(spec.name, restarted)
    ops.record(
        stream,
        "restart",
        actor=actor,
        reason=reason,
        attempt=len(state.restarts),
        last_error=last_error,
    )
    result.update(action="restarted", reason=reason, attempt=len(state.restarts))
    return result


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
