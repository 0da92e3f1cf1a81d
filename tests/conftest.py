"""Shared fixtures: one Spark session for the whole test run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    from riverdelta.spark import get_spark

    session = get_spark("riverdelta-tests", ui=False)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
