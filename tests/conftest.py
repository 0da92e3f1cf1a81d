"""Shared fixtures.

The test session gets its own runtime home and its own free ports, so it never
touches a stack started by `make up`; the jar cache is shared (read-only).
These variables are set at import time, before anything reads settings.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if "RIVERDELTA_TEST_HOME" not in os.environ:
    os.environ.setdefault(
        "RIVERDELTA_CACHE",
        str(Path(os.environ.get("RIVERDELTA_HOME", ROOT / ".riverdelta")) / "cache"),
    )
    os.environ["RIVERDELTA_TEST_HOME"] = tempfile.mkdtemp(prefix="riverdelta-test-")
    os.environ["RIVERDELTA_HOME"] = os.environ["RIVERDELTA_TEST_HOME"]
    os.environ["RIVERDELTA_KAFKA_PORT"] = str(_free_port())
    os.environ["RIVERDELTA_KAFKA_CONTROLLER_PORT"] = str(_free_port())
    os.environ["RIVERDELTA_AIRFLOW_PORT"] = str(_free_port())
    os.environ.setdefault("RIVERDELTA_SPARK_MASTER", "local[2]")
    # Airflow reads its configuration when first imported: give it the test home now.
    from riverdelta.airflow.env import airflow_env

    os.environ.update(airflow_env())


# tests/e2e's demo fixture runs `riverdelta demo` (its own limit 1800 s) and then
# `down` (300 s) in the set-up and tear-down of its module's tests, which
# pytest-timeout charges to them: more than pyproject's 900 s per test.
E2E_TIMEOUT = 2400


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT))


@pytest.fixture(scope="session")
def spark():
    from riverdelta.launch.spark import get_spark

    session = get_spark("riverdelta-tests", ui=False)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def kafka():
    """A real KRaft broker for the session, started and stopped by the tests."""
    from riverdelta.embedded import kafka_broker

    kafka_broker.start()
    yield kafka_broker.bootstrap()
    kafka_broker.stop()


@pytest.fixture()
def topic(kafka, request):
    """A fresh 3-partition topic per test."""
    import uuid

    from riverdelta.kafka import client as kafka_client

    name = f"t-{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
    kafka_client.create_topics({name: 3})
    return name


@pytest.fixture()
def lake(tmp_path) -> Path:
    path = tmp_path / "lake"
    path.mkdir()
    return path


@pytest.fixture()
def lake_env(tmp_path, monkeypatch):
    """A lake of the test's own (``RIVERDELTA_LAKE``), with the settings re-read around it."""
    from riverdelta.config.settings import settings

    monkeypatch.setenv("RIVERDELTA_LAKE", str(tmp_path / "lake"))
    settings.cache_clear()
    yield tmp_path / "lake"
    monkeypatch.undo()
    settings.cache_clear()
