"""Fixtures of the integration tests that drive Airflow DAGs against real services."""

from __future__ import annotations

import uuid

import pytest
import yaml


@pytest.fixture(scope="module")
def airflow_db():
    from riverdelta.embedded import airflow_stack

    airflow_stack.migrate()


@pytest.fixture()
def stream_registry(tmp_path, kafka, monkeypatch):
    """A registry holding one transactions-like stream with a name and topic of its own.

    ``make(...)`` returns the stream name; the registry file is ``RIVERDELTA_STREAMS``
    (a test may rewrite it, e.g. to change the contract).
    """
    from riverdelta.config.settings import settings
    from riverdelta.kafka import client as kafka_client

    def make(
        restart: dict | None = None, health: dict | None = None, extra: dict | None = None
    ) -> str:
        data = yaml.safe_load(settings().streams_file.read_text())
        name = f"tx{uuid.uuid4().hex[:6]}"
        stream = {**data["streams"]["transactions"], "topic": f"rd.{name}", "trigger": "2 seconds"}
        if restart:
            stream["restart"] = restart
        if health:
            stream["health"] = health
        stream.update(extra or {})
        data["streams"] = {name: stream}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("RIVERDELTA_STREAMS", str(path))
        settings.cache_clear()
        kafka_client.create_topics({stream["topic"]: 3})
        return name

    yield make
    settings.cache_clear()
