"""Validated freshness is computed from the tables themselves: each row's Kafka time against
its version's commit and the first publication covering that version (real Delta tables)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.unit


def _append(path: str, stamps: list[datetime]) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    table = pa.table({"kafka_timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC"))})
    write_deltalake(path, table, mode="append")


def test_each_row_is_measured_against_its_commit_and_the_first_publication_covering_it(tmp_path):
    from riverdelta.bench.freshness import freshness, publication_times, version_commits

    silver = str(tmp_path / "silver")
    base = datetime.now(UTC) - timedelta(seconds=30)
    _append(silver, [base, base + timedelta(seconds=1)])  # v0
    _append(silver, [base + timedelta(seconds=2)])  # v1
    _append(silver, [base + timedelta(seconds=3)])  # v2: never published
    commits = version_commits(silver)
    assert sorted(commits) == [0, 1, 2] and [len(f) for _, f in commits.values()] == [1, 1, 1]
    c0, c1 = commits[0][0], commits[1][0]

    def event(table, to_version, at, outcome="ok"):
        detail = {"table": table, "to_version": to_version}
        return {"outcome": outcome, "detail": detail, "at": datetime.fromtimestamp(at, UTC)}

    events = [
        event("silver", 0, c0 + 4),
        event("other", 5, c0 + 1),  # another table's publication counts for nothing
        event("silver", 2, c1 + 2, outcome="fail"),  # nor does a failed validation
        event("silver", 1, c1 + 6),
    ]
    pubs = publication_times(events, "silver")
    assert pubs == [(0, c0 + 4), (1, c1 + 6)]
    measured = freshness(silver, pubs)
    assert (measured["rows"], measured["rows_unpublished"], measured["publications"]) == (4, 1, 2)
    ts = [base.timestamp() + i for i in range(4)]
    validated = sorted([c0 + 4 - ts[0], c0 + 4 - ts[1], c1 + 6 - ts[2]])
    assert measured["validated"]["max_seconds"] == round(validated[-1], 3)
    assert measured["validated"]["p50_seconds"] == round(validated[1], 3)
    ingest = sorted([c0 - ts[0], c0 - ts[1], c1 - ts[2], commits[2][0] - ts[3]])
    assert measured["ingest"]["p50_seconds"] == round(ingest[1], 3)
    assert measured["ingest"]["p95_seconds"] == round(ingest[3], 3)
