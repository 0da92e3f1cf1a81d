"""Airflow's configuration, as Riverdelta's processes and tasks run with it.

``airflow_env`` is the single source of Airflow's configuration (used by
``make up``, the tests' ``dag.test()`` runs, the CLI, and the product code that
builds a spark-submit command through the Airflow Spark connection). Connections
are defined by environment (``AIRFLOW_CONN_*``); the admin password and the JWT
secret are generated once and kept in 0600 files under the Airflow home.

``kafka_connection`` is how a task reads the ``kafka_default`` connection: an
Airflow user sets Kafka there (its extra holds librdkafka keys, as the Airflow
Kafka provider reads them), and every Kafka client the task builds, and every
driver or replay it starts, connects with it.

Product code: the embedded stack (``airflow_stack``) imports from here, never the
other way.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from riverdelta.config.settings import PROJECT_ROOT, ConfigError, settings
from riverdelta.errors import RiverdeltaError
from riverdelta.kafka import client as kafka_client

ADMIN_USER = "admin"
KAFKA_CONN_ID = "kafka_default"


class AirflowError(RiverdeltaError, RuntimeError):
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
            # A deployment that defines kafka_default itself (or in a secrets backend,
            # leaving this unset) keeps it: the tasks read the connection, not the settings.
            "AIRFLOW_CONN_KAFKA_DEFAULT",
        ):
            if (base if base is not None else os.environ).get(key):
                env[key] = (base if base is not None else os.environ)[key]
    return env


@contextmanager
def kafka_connection(conn_id: str = KAFKA_CONN_ID) -> Iterator[kafka_client.KafkaClientConfig]:
    """Within the block, Kafka is what the ``conn_id`` connection says.

    The connection is applied as RIVERDELTA_KAFKA_* variables (``settings_env``), so
    the look-ups in this process and the processes it starts all read it; without the
    connection the settings stay as they are. Airflow runs each task in a process of
    its own, and the variables are restored when the block ends.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        yield kafka_client.client_config()
        return
    if not (conn.extra_dejson or {}).get("bootstrap.servers"):
        raise ConfigError(
            f"Airflow connection {conn_id!r} has no bootstrap.servers in its extra: add "
            '{"bootstrap.servers": "host:9092"} (and security.protocol, sasl.mechanism, '
            "ssl.ca.location as the cluster needs)"
        )
    try:
        cfg = kafka_client.KafkaClientConfig.from_connection(
            conn.extra_dejson, conn.login, conn.password
        )
    except ConfigError as exc:
        raise ConfigError(
            f"Airflow connection {conn_id!r} uses SASL but holds no password, and the "
            f"settings give none ({exc}): set the connection's password"
        ) from None
    saved = {k: os.environ.get(k) for k in kafka_client.settings_env(cfg)}
    try:
        _set_environ(kafka_client.settings_env(cfg))
        settings.cache_clear()
        yield kafka_client.client_config()
    finally:
        _set_environ(saved)
        settings.cache_clear()


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def ensure_airflow_env() -> None:
    """Fill in Airflow's configuration for this process where it is not set already."""
    for key, value in airflow_env().items():
        os.environ.setdefault(key, value)


# Tasks that start a Spark JVM (quality validations, backfill steps) share this pool:
# on a small machine a burst of asset events must not start eight JVMs at once.
SPARK_POOL = "riverdelta_spark"
SPARK_POOL_SLOTS = int(os.environ.get("RIVERDELTA_SPARK_POOL_SLOTS", "2"))
SPARK_POOL_WHY = "Airflow tasks that run a Spark session (quality validations, backfills)"
