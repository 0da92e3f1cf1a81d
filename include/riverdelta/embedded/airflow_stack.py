"""Embedded Airflow 3: SQLite, LocalExecutor, one process per component.

Its configuration comes from ``airflow_env.airflow_env`` (the product module the
DAGs and the CLI share) and its REST client is ``airflow_api.ApiClient``; this
module only migrates, starts, checks and stops the local components.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from riverdelta.airflow.env import (
    ADMIN_USER,
    SPARK_POOL,
    SPARK_POOL_SLOTS,
    SPARK_POOL_WHY,
    AirflowError,
    admin_password,
    airflow_env,
    api_url,
    passwords_file,
)
from riverdelta.config.settings import settings
from riverdelta.launch import procs

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def login_line() -> str:
    """The login to show: with the password the first time, then only where it is kept."""
    shown = passwords_file().with_name(".shown")
    where = f"password in {passwords_file()} (mode 0600)"
    if shown.exists():
        return f"login {ADMIN_USER}, {where}"
    shown.touch()
    return f"login {ADMIN_USER} / {admin_password()} (shown once; {where})"


def _airflow_bin() -> str:
    path = Path(sys.executable).parent / "airflow"
    found = str(path) if path.exists() else shutil.which("airflow")
    if not found:
        raise AirflowError("the `airflow` command is not installed: run `make setup`")
    return found


def ensure_pool() -> None:
    """Create or resize the Spark pool (cheap, idempotent; run at every start)."""
    log = settings().log_dir / "airflow-pool.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        rc = subprocess.run(
            [_airflow_bin(), "pools", "set", SPARK_POOL, str(SPARK_POOL_SLOTS), SPARK_POOL_WHY],
            env=airflow_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc != 0:
        raise AirflowError(
            f"`airflow pools set {SPARK_POOL}` failed. Tail of {log}:\n{procs.tail(log)}"
        )


def migrate() -> None:
    s = settings()
    stamp = s.airflow_home / ".migrated"
    if stamp.exists():
        return
    log = s.log_dir / "airflow-migrate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        rc = subprocess.run(
            [_airflow_bin(), "db", "migrate"],
            env=airflow_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc != 0:
        raise AirflowError(f"`airflow db migrate` failed. Tail of {log}:\n{procs.tail(log)}")
    stamp.touch()


def health() -> dict | None:
    try:
        with urllib.request.urlopen(f"{api_url()}/api/v2/monitor/health", timeout=3) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(data: dict | None) -> bool:
    if not data:
        return False
    wanted = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all(data.get(k, {}).get("status") == "healthy" for k in wanted)


def start(*, wait_seconds: float = 180.0) -> None:
    s = settings()
    running = [c for c in COMPONENTS if procs.running(f"airflow-{c}")]
    if len(running) == len(COMPONENTS) and _healthy(health()):
        return
    if not running and procs.port_in_use(s.airflow_port):
        raise AirflowError(
            f"port {s.airflow_port} is already taken by another process, so the Airflow API "
            f"server cannot listen there. Stop it or set RIVERDELTA_AIRFLOW_PORT."
        )
    migrate()
    ensure_pool()
    env = airflow_env()
    for comp in COMPONENTS:
        name = f"airflow-{comp}"
        if procs.running(name):
            continue
        cmd = [_airflow_bin(), comp]
        if comp == "api-server":
            cmd += ["--port", str(s.airflow_port)]
        procs.start_detached(name, cmd, log=s.log_dir / f"{name}.log", env=env, cwd=s.airflow_home)
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait_seconds:
        dead = [c for c in COMPONENTS if not procs.running(f"airflow-{c}")]
        if dead:
            log = s.log_dir / f"airflow-{dead[0]}.log"
            raise AirflowError(
                f"Airflow {dead[0]} exited during start-up. Tail of {log}:\n{procs.tail(log)}"
            )
        if _healthy(health()):
            return
        time.sleep(2)
    raise AirflowError(
        f"Airflow did not become healthy within {wait_seconds:.0f}s (health: {health()}). "
        f"Logs are in {s.log_dir}/airflow-*.log"
    )


def stop() -> list[str]:
    stopped = []
    for comp in reversed(COMPONENTS):
        if procs.stop(f"airflow-{comp}", timeout=30):
            stopped.append(comp)
    return stopped
