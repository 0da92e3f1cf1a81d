"""Maintenance compacts without adding rows, and vacuum keeps what the validated version
and unvalidated increments need (real Delta tables written with delta-rs)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def _append(path: str, values: list[int]) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(path, pa.table({"a": values}), mode="append")


def _files_on_disk(path: str) -> int:
    from pathlib import Path

    return len(list(Path(path).glob("*.parquet")))


def test_vacuum_keeps_the_validated_snapshot_and_the_increments_originals(tmp_path):
    from riverdelta.ops.maintenance import maintain_table
    from riverdelta.quality.engine import pandas_rows
    from riverdelta.quality.increments import increment_files

    path = str(tmp_path / "t")
    for i in range(4):
        _append(path, [i])  # v0..v3; say v1 is validated
    kept = maintain_table("t", path, retention_hours=0, keep_version=1, floor_hours=0)
    assert kept.error is None and kept.compacted["files_removed"] == 4
    assert kept.vacuumed == 0 and _files_on_disk(path) == 5  # v1's snapshot and v2, v3 kept
    files, why = increment_files(path, 1, 4)
    assert why == "incremental"
    assert sorted(pandas_rows(path, 4, files).df["a"].tolist()) == [2, 3]

    gone = maintain_table("t", path, retention_hours=0, keep_version=None, floor_hours=0)
    assert gone.error is None and gone.vacuumed == 4 and _files_on_disk(path) == 1
    assert gone.checkpoint_version == 4  # nothing left to compact: no new commit


def test_the_floor_keeps_files_of_commits_still_in_flight(tmp_path):
    from riverdelta.ops.maintenance import maintain_table

    path = str(tmp_path / "t")
    _append(path, [1])
    _append(path, [2])
    report = maintain_table("t", path, retention_hours=0, keep_version=None)
    assert report.retention_hours == 1.0 and report.vacuumed == 0


@pytest.fixture()
def stream_tables(tmp_path, monkeypatch):
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.storage.lake import TableSet

    monkeypatch.setenv("RIVERDELTA_LAKE", str(tmp_path / "lake"))
    settings.cache_clear()
    spec = load_registry().get("page_views")
    paths = TableSet.for_stream(spec)
    for layer in spec.table_names():
        _append(paths[layer], [1])
        _append(paths[layer], [2])
    yield spec, paths
    settings.cache_clear()


def test_gold_is_never_compacted_and_a_running_backfill_holds_vacuum_and_quarantine(
    stream_tables,
):
    from riverdelta.backfill import replay as backfill
    from riverdelta.ops.maintenance import maintain_stream

    spec, _ = stream_tables
    result = maintain_stream(spec.name)
    by_layer = dict(zip(spec.table_names(), result["tables"], strict=True))
    assert not result["backfill_running"]
    assert [layer for layer, r in by_layer.items() if r.compacted] == [
        "bronze",
        "silver",
        "quarantine",
    ]
    assert all(r.error is None and r.retention_hours == 168.0 for r in by_layer.values())

    backfill.acquire_lock(spec.name, "run-1")
    result = maintain_stream(spec.name)
    by_layer = dict(zip(spec.table_names(), result["tables"], strict=True))
    assert result["backfill_running"]
    assert all("vacuum" in r.skipped and r.retention_hours is None for r in by_layer.values())
    assert "compaction" in by_layer["quarantine"].skipped
    assert "backfill run-1 is running" in by_layer["quarantine"].skipped
    backfill.release_lock(spec.name, "run-1")


def test_maintenance_settings_are_checked_before_anything_runs(tmp_path):
    import yaml

    from riverdelta.config.registry import ContractError, load_registry
    from riverdelta.config.settings import settings

    data = yaml.safe_load(settings().streams_file.read_text())
    cases = {
        "schedule": ({"schedule": "daily"}, "maintenance.schedule must be a 5-field cron"),
        "layer": ({"zorder": {"gold": ["user_id"]}}, "maintenance.zorder: layer 'gold'"),
        "column": ({"zorder": {"silver": ["nope"]}}, r"\['nope'\] are not contract fields"),
        "key": ({"every": 1}, r"maintenance: unknown keys \['every'\]"),
        "retention": ({"retention": "a week"}, "retention"),
    }
    for name, (maintenance, message) in cases.items():
        stream = {**data["streams"]["transactions"], "maintenance": maintenance}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**data, "streams": {"transactions": stream}}))
        with pytest.raises(ContractError, match=message):
            load_registry(path)


def test_old_table_sets_go_after_the_retention_unless_live_or_published(tmp_path, monkeypatch):
    import time

    import yaml

    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.ops.maintenance import remove_old_table_sets
    from riverdelta.quality.publications import publish
    from riverdelta.storage.lake import TableSet, lake_root, set_stream_location

    data = yaml.safe_load(settings().streams_file.read_text())
    data["streams"]["page_views"]["maintenance"] = {"retention": "1 seconds"}
    registry = tmp_path / "streams.yaml"
    registry.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("RIVERDELTA_STREAMS", str(registry))
    monkeypatch.setenv("RIVERDELTA_LAKE", str(tmp_path / "lake"))
    settings.cache_clear()
    try:
        spec = load_registry().get("page_views")
        first = TableSet.for_stream(spec)  # the live root, tables/
        for path in first.paths.values():
            _append(path, [1])
        _append(TableSet.for_stream(load_registry().get("transactions"))["silver"], [1])
        rebuilt_root = f"{lake_root()}/tables@r1"
        for path in TableSet.for_stream(spec, rebuilt_root).paths.values():
            _append(path, [1])
        set_stream_location("page_views", rebuilt_root, str(tmp_path / "cp"), by="r1")
        publish("page_views_silver", 0, path=first["silver"], by="test")

        [listed] = remove_old_table_sets("page_views", dry_run=True)
        assert listed["root"].endswith("/tables") and len(listed["tables"]) == 4
        assert (listed["removable"], listed["kept_because"]) == (
            False,
            "a publication still points at it",
        )
        publish("page_views_silver", 0, path=rebuilt_root + "/page_views_silver", by="t")
        time.sleep(1.2)
        [done] = remove_old_table_sets("page_views", dry_run=False)
        assert done["removed"] is True
        from pathlib import Path

        left = sorted(p.name for p in (Path(lake_root()) / "tables").iterdir())
        assert left == ["transactions_silver"]  # another stream's table stays
        assert len(list((Path(lake_root()) / "tables@r1").iterdir())) == 4  # the live set stays
        assert remove_old_table_sets("page_views", dry_run=True) == []
    finally:
        settings.cache_clear()


def test_the_soak_counts_files_with_and_without_maintenance(tmp_path):
    from deltalake import DeltaTable

    from riverdelta.bench.soak import table_files

    path = str(tmp_path / "t")
    assert table_files(path) is None
    for i in range(5):
        _append(path, [i])
    DeltaTable(path).optimize.compact()
    assert table_files(path) == {"version": 5, "files_now": 1, "files_without_maintenance": 5}
