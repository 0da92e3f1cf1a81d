"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
import yaml

from riverdelta.config.settings import SHIPPED_STREAMS


@pytest.fixture(scope="module")
def shipped() -> dict:
    """The shipped registry as plain data, for tests to copy and break."""
    return yaml.safe_load(SHIPPED_STREAMS.read_text())
