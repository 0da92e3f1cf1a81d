"""Fixtures of the unit tests."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from riverdelta.config.settings import SHIPPED_STREAMS


@pytest.fixture(scope="module")
def shipped() -> dict:
    """The shipped registry as plain data, for tests to copy and break."""
    return yaml.safe_load(SHIPPED_STREAMS.read_text())


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The waits the test's own thread asked for, without waiting.

    Only this thread's: a Spark session left by an earlier test has py4j threads that
    sleep in loops, and a global stand-in filled the list with theirs without end (on
    CI, pytest then pretty-printed the growing list until the run's timeout).
    """
    waits: list[float] = []
    test_thread = threading.get_ident()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.get_ident() == test_thread:
            waits.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr("time.sleep", sleep)
    return waits
