"""A Spark driver gets the settings it needs, not Airflow's environment."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_airflow_secrets_and_connections_never_reach_a_driver():
    from riverdelta.launch.submit import submit_env

    base = {
        "PATH": "/usr/bin",
        "JAVA_HOME": "/jdk",
        "AWS_SECRET_ACCESS_KEY": "for-s3a",
        "RIVERDELTA_KAFKA_SASL_PASSWORD": "for-kafka",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:pw@db/airflow",
        "AIRFLOW__CORE__FERNET_KEY": "fernet",
        "AIRFLOW_CONN_KAFKA_DEFAULT": "{}",
        "AIRFLOW_CTX_DAG_RUN_ID": "run",
        "SOME_TOKEN": "unrelated",
    }
    env = submit_env(base)
    assert not [k for k in env if k.startswith("AIRFLOW") or k == "SOME_TOKEN"]
    assert env["JAVA_HOME"] == "/jdk" and env["AWS_SECRET_ACCESS_KEY"] == "for-s3a"
    assert env["RIVERDELTA_KAFKA_SASL_PASSWORD"] == "for-kafka"  # the driver's own, by env
    assert env["PATH"].endswith("/usr/bin") and env["RIVERDELTA_HOME"]
