"""A ``file://`` storage root end to end: every path comes from the root, every client reads it.

The same code paths serve ``s3a://`` and ``hdfs://`` roots (``riverdelta.storage.roots``);
what differs per scheme is checked in tests/unit/test_storage.py.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.ingest_helpers import assert_invariants, read, spec_on_topic

pytestmark = pytest.mark.integration


@pytest.fixture()
def file_root(tmp_path):
    from riverdelta.config.settings import settings

    saved = dict(os.environ)
    os.environ["RIVERDELTA_LAKE"] = f"file://{tmp_path}/lake"
    os.environ.pop("RIVERDELTA_CONTROL", None)
    settings.cache_clear()
    yield tmp_path / "lake"
    os.environ.clear()
    os.environ.update(saved)
    settings.cache_clear()


def test_file_uri_root(spark, kafka, topic, file_root):
    from riverdelta.config.settings import settings
    from riverdelta.embedded.generator import produce
    from riverdelta.ops import health
    from riverdelta.ops import state as ops
    from riverdelta.quality.publications import publish
    from riverdelta.quality.read import read_validated
    from riverdelta.quality.tables import latest_version
    from riverdelta.stream.ingest import start_query, stop_gold
    from riverdelta.stream.job import make_job

    spec = spec_on_topic("transactions", topic)
    summary = produce(spec, 400, bootstrap=kafka, seed=11, poison_rate=0.05, duplicate_rate=0.05)

    job = make_job(spec, "replay")  # no explicit path: all from the storage root
    root = f"file://{file_root}"
    assert job.checkpoint == f"{root}/_checkpoints/transactions/replay"
    assert all(p.startswith(f"{root}/tables/") for p in job.tables.paths.values())
    assert job.batches_path == f"{root}/_ops/ingest_batches"
    query = start_query(spark, job, starting="earliest")
    query.awaitTermination()
    assert query.exception() is None
    stop_gold(job)  # as the replay driver does at its end

    counts = assert_invariants(spark, spec, job, summary)
    assert counts["bronze"] == summary["sent"] == 400
    # Really on that disk, where the root says.
    assert (file_root / "tables" / "transactions_bronze" / "_delta_log").is_dir()
    assert (file_root / "_checkpoints" / "transactions" / "replay" / "commits").is_dir()

    # Health reads the file:// checkpoint: it committed up to the topic's end.
    state = health.read_checkpoint(job.checkpoint)
    assert state is not None and state.last_committed_batch is not None
    assert state.end_offsets == health.end_offsets(kafka, topic)
    assert sum(state.end_offsets.values()) == 400

    # Control files sit on the POSIX directory beside the tables; delta-rs tables under the root.
    assert settings().control == file_root / "_ops"
    ops.record("transactions", "storage_check", detail_root=root)
    assert [e["event"] for e in ops.history("transactions")] == ["storage_check"]
    version = latest_version(job.tables["silver"])
    assert version is not None and version >= 0
    publish("transactions_silver", version, path=job.tables["silver"], by="test")
    assert (file_root / "_ops" / "publications" / "transactions_silver.json").exists()
    validated = read_validated("transactions_silver", engine="polars")
    assert validated.height == read(spark, job.tables["silver"]).count() == counts["silver"]
