"""The embedded Airflow's secrets: made once, kept in 0600 files, never shown twice."""

from __future__ import annotations

import os
import stat

import pytest

pytestmark = pytest.mark.unit


def test_the_embedded_airflow_gets_a_stable_fernet_key_from_a_private_file():
    from cryptography.fernet import Fernet

    from riverdelta.airflow.env import airflow_env
    from riverdelta.config.settings import settings

    key = airflow_env()["AIRFLOW__CORE__FERNET_KEY"]
    token = Fernet(key.encode()).encrypt(b"connection password")
    assert Fernet(airflow_env()["AIRFLOW__CORE__FERNET_KEY"].encode()).decrypt(token)
    mode = os.stat(settings().airflow_home / "fernet_key").st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_the_admin_password_is_shown_once_then_only_where_it_is_kept():
    from riverdelta.airflow import env as airflow_env
    from riverdelta.embedded import airflow_stack

    shown = airflow_env.passwords_file().with_name(".shown")
    shown.unlink(missing_ok=True)
    first = airflow_stack.login_line()
    assert airflow_env.admin_password() in first and "shown once" in first
    again = airflow_stack.login_line()
    assert airflow_env.admin_password() not in again
    assert again == f"login admin, password in {airflow_env.passwords_file()} (mode 0600)"


def _connection(monkeypatch, extra: dict, **fields: str) -> None:
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "extra": extra, **fields})
    )


def test_a_task_connects_with_the_kafka_default_connection_not_the_settings(monkeypatch):
    """An Airflow user's kafka_default wins inside the task, and only there."""
    from riverdelta.airflow.env import kafka_connection
    from riverdelta.config.settings import settings

    monkeypatch.setenv("RIVERDELTA_KAFKA_BOOTSTRAP", "from-settings:9092")
    monkeypatch.delenv("RIVERDELTA_KAFKA_SASL_PASSWORD", raising=False)
    _connection(
        monkeypatch,
        {
            "bootstrap.servers": "from-connection:9093",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
        },
        login="carol",
        password="conn-secret-42",
    )
    settings.cache_clear()
    try:
        with kafka_connection() as cfg:
            assert cfg.bootstrap == "from-connection:9093" and cfg.username == "carol"
            assert (cfg.protocol, cfg.mechanism, cfg.password) == (
                "SASL_PLAINTEXT",
                "SCRAM-SHA-256",
                "conn-secret-42",
            )
            # A process the task starts (a driver, a replay) inherits the same settings.
            assert os.environ["RIVERDELTA_KAFKA_BOOTSTRAP"] == "from-connection:9093"
            assert settings().kafka_security_protocol == "SASL_PLAINTEXT"
        assert settings().kafka_bootstrap == "from-settings:9092"
        assert settings().kafka_security_protocol == "PLAINTEXT"
        assert "RIVERDELTA_KAFKA_SASL_PASSWORD" not in os.environ
    finally:
        settings.cache_clear()


def test_without_a_kafka_default_connection_the_settings_stay(monkeypatch):
    from riverdelta.airflow.env import kafka_connection
    from riverdelta.config.settings import settings

    monkeypatch.delenv("AIRFLOW_CONN_KAFKA_DEFAULT", raising=False)
    monkeypatch.setenv("RIVERDELTA_KAFKA_BOOTSTRAP", "from-settings:9092")
    settings.cache_clear()
    try:
        with kafka_connection() as cfg:
            assert cfg.bootstrap == "from-settings:9092"
    finally:
        settings.cache_clear()


@pytest.mark.parametrize(
    ("extra", "fields", "message"),
    [
        (
            {"security.protocol": "PLAINTEXT"},
            {},
            r"^Airflow connection 'kafka_default' has no bootstrap.servers in its extra: add",
        ),
        (
            {
                "bootstrap.servers": "h:1",
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "PLAIN",
            },
            {"login": "dan"},
            r"^Airflow connection 'kafka_default' uses SASL but holds no password, .*set the "
            r"connection's password$",
        ),
    ],
    ids=["no-bootstrap", "sasl-without-password"],
)
def test_a_kafka_default_connection_that_cannot_work_is_refused_in_one_line(
    monkeypatch, extra, fields, message
):
    from riverdelta.airflow.env import kafka_connection
    from riverdelta.config.settings import ConfigError, settings

    monkeypatch.delenv("RIVERDELTA_KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.delenv("RIVERDELTA_KAFKA_SASL_PASSWORD_FILE", raising=False)
    _connection(monkeypatch, extra, **fields)
    settings.cache_clear()
    with pytest.raises(ConfigError, match=message) as err, kafka_connection():
        pass
    assert "\n" not in str(err.value)
