"""Embedded Airflow 3: SQLite, LocalExecutor, one process per component.

``airflow_env`` is the single source of Airflow's configuration (used by
``make up``, the tests' ``dag.test()`` runs and the CLI). Connections are
defined by environment (``AIRFLOW_CONN_*``); the admin password and the JWT
secret are generated once and kept in 0600 files under the Airflow home.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from riverdelta import kafka_client, procs
from riverdelta.settings import PROJECT_ROOT, settings

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
ADMIN_USER = "admin"


class AirflowError(RuntimeError):
    pass


def _secret_file(name: str, make: str) -> tuple[Path, str]:
    path = settings().airflow_home / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Create with 0600 from the start: never world-readable, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make)
    return path, path.read_text()


def passwords_file() -> Path:
    path, _ = _secret_file(
        "simple_auth_manager_passwords.json",
        json.dumps({ADMIN_USER: secrets.token_urlsafe(12)}),
    )
    return path


def admin_password() -> str:
    return json.loads(passwords_file().read_text())[ADMIN_USER]


def login_line() -> str:
    """The login to show: with the password the first time, then only where it is kept."""
    shown = passwords_file().with_name(".shown")
    where = f"password in {passwords_file()} (mode 0600)"
    if shown.exists():
        return f"login {ADMIN_USER}, {where}"
    shown.touch()
    return f"login {ADMIN_USER} / {admin_password()} (shown once; {where})"


def api_url() -> str:
    return settings().airflow_url


def airflow_env(base: dict[str, str] | None = None) -> dict[str, str]:
    s = settings()
    home = s.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    _, jwt_secret = _secret_file("jwt_secret", secrets.token_urlsafe(32))
    # Connections' passwords and extras are encrypted in Airflow's database with it.
    _, fernet_key = _secret_file("fernet_key", base64.urlsafe_b64encode(os.urandom(32)).decode())
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Generated stream DAGs must run as soon as they appear; pausing is an operator's choice.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file()),
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__BASE_URL": api_url(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url()}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__CORE__FERNET_KEY": fernet_key,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            # Security (protocol, mechanism, user, CA) in the extra, where the Airflow Kafka
            # provider reads it; the password stays in the settings' file or variable.
            "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps(kafka_client.connection_of_settings(s)),
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(
                {"conn_type": "spark", "host": s.spark_master, "extra": {"deploy-mode": "client"}}
            ),
            # The riverdelta settings travel with the components.
            "RIVERDELTA_HOME": str(s.home),
            "RIVERDELTA_CACHE": str(s.cache),
            "RIVERDELTA_ENV": s.env,
        }
    )
    if s.env != "embedded":
        # On a real deployment Airflow's own configuration (PostgreSQL, its folders and
        # URLs, set by docker-compose.yml) wins; only the connections come from here.
        for key in (
            "AIRFLOW_HOME",
            "AIRFLOW__CORE__DAGS_FOLDER",
            "AIRFLOW__CORE__PLUGINS_FOLDER",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__API__BASE_URL",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER",
        ):
            if (base if base is not None else os.environ).get(key):
                env[key] = (base if base is not None else os.environ)[key]
    return env


def ensure_airflow_env() -> None:
    """Fill in Airflow's configuration for this process where it is not set already."""
    for key, value in airflow_env().items():
        os.environ.setdefault(key, value)


def _airflow_bin() -> str:
    path = Path(sys.executable).parent / "airflow"
    found = str(path) if path.exists() else shutil.which("airflow")
    if not found:
        raise AirflowError("the `airflow` command is not installed: run `make setup`")
    return found


# Tasks that start a Spark JVM (quality validations, backfill steps) share this pool:
# on a small machine a burst of asset events must not start eight JVMs at once.
SPARK_POOL = "riverdelta_spark"
SPARK_POOL_SLOTS = int(os.environ.get("RIVERDELTA_SPARK_POOL_SLOTS", "2"))
SPARK_POOL_WHY = "Airflow tasks that run a Spark session (quality validations, backfills)"


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


class ApiClient:
    """A minimal Airflow REST API v2 client (JWT from the simple auth manager)."""

    def __init__(
        self, base: str | None = None, user: str = ADMIN_USER, password: str | None = None
    ):
        self.base = base or api_url()
        body = json.dumps({"username": user, "password": password or admin_password()}).encode()
        req = urllib.request.Request(
            f"{self.base}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            self.token = json.loads(resp.read())["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, attempts: int = 6) -> dict:
        req = urllib.request.Request(
            f"{self.base}/api/v2{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as exc:
                # A freshly parsed DAG or a busy SQLite answers 500 for a moment; 4xx are final.
                if exc.code < 500 or attempt == attempts - 1:
                    raise
            except urllib.error.URLError:
                if attempt == attempts - 1:
                    raise
            time.sleep(2 * (attempt + 1))
        raise AssertionError("unreachable")

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", f"/dags/{dag_id}")
                return
            except urllib.error.HTTPError:
                if time.monotonic() > deadline:
                    raise AirflowError(
                        f"DAG {dag_id} did not appear within {timeout:.0f}s"
                    ) from None
                time.sleep(3)

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        from datetime import UTC, datetime

        run = self.call(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {"conf": conf or {}, "logical_date": datetime.now(UTC).isoformat()},
        )
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        from urllib.parse import quote

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise AirflowError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")


def stop() -> list[str]:
    stopped = []
    for comp in reversed(COMPONENTS):
        if procs.stop(f"airflow-{comp}", timeout=30):
            stopped.append(comp)
    return stopped
