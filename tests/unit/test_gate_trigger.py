"""The gate's watcher fires once per new version of a stream's tables, and after a restart
for what is not validated yet (real Delta tables written with delta-rs; no services)."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture()
def silver(tmp_path, monkeypatch):
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.storage.lake import TableSet

    monkeypatch.setenv("RIVERDELTA_LAKE", str(tmp_path / "lake"))
    settings.cache_clear()
    yield TableSet.for_stream(load_registry().get("transactions"))["silver"]
    settings.cache_clear()


def _append(path: str, n: int) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(path, pa.table({"event_id": [f"e-{i}" for i in range(n)]}), mode="append")


def test_fires_once_per_new_version_and_remembers_across_restarts_by_the_pointer(silver):
    from riverdelta.quality.publications import publish
    from riverdelta.quality.trigger import new_versions

    seen: dict = {}
    assert new_versions("transactions", seen) == {}  # no table yet
    _append(silver, 3)
    assert new_versions("transactions", seen) == {"transactions_silver": 0}
    assert new_versions("transactions", seen) == {}  # nothing new: no second event
    _append(silver, 2)
    _append(silver, 2)
    assert new_versions("transactions", seen) == {"transactions_silver": 2}

    # A restarted watcher starts from the validated version: v2 is not validated yet.
    assert new_versions("transactions", {}) == {"transactions_silver": 2}
    publish("transactions_silver", 2, path=silver, by="test")
    assert new_versions("transactions", {}) == {}


def test_the_trigger_yields_the_stream_and_its_versions(silver, monkeypatch):
    from riverdelta.quality.trigger import NewTableVersionsTrigger

    _append(silver, 1)

    async def first_event():
        gen = NewTableVersionsTrigger("transactions", poll_seconds=0.01).run()
        try:
            return await asyncio.wait_for(anext(gen), timeout=30)
        finally:
            await gen.aclose()

    event = asyncio.run(first_event())
    assert event.payload == {"stream": "transactions", "versions": {"transactions_silver": 0}}
