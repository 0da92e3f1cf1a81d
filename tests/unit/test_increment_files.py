"""An increment is read from the commits in its own range, even when the table moved on
(delta-rs numbers a pinned table's history from the pinned version: a trap)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def _write(path: str, value: int, mode: str = "append") -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(path, pa.table({"a": [value]}), mode=mode)


def test_the_range_is_judged_by_its_own_commits_not_by_later_ones(tmp_path):
    from riverdelta.quality.increments import increment_files

    path = str(tmp_path / "t")
    for i in range(3):
        _write(path, i)  # v0..v2: blind appends
    _write(path, 3, mode="overwrite")  # v3: not an append
    _write(path, 4)  # v4
    files, why = increment_files(path, 0, 2)
    assert why == "incremental" and len(files) == 2
    files, why = increment_files(path, 2, 4)
    assert files is None and why.startswith("version 3 is WRITE (Overwrite)")
    files, why = increment_files(path, 3, 4)
    assert why == "incremental" and len(files) == 1


def test_a_compaction_in_the_range_adds_no_rows_and_the_originals_are_still_read(tmp_path):
    from deltalake import DeltaTable

    from riverdelta.quality.engine import estimated_rows, pandas_rows
    from riverdelta.quality.increments import increment_files

    path = str(tmp_path / "t")
    for i in range(4):
        _write(path, i)  # v0..v3
    DeltaTable(path).optimize.compact()  # v4: dataChange=false, removes v0..v3's files
    _write(path, 10)  # v5
    files, why = increment_files(path, 1, 5)
    assert why == "incremental" and len(files) == 3  # v2, v3 and v5: not the compacted file
    # v2's and v3's files left the snapshot with the compaction; they are read by path.
    assert estimated_rows(path, 5, files) == 3
    rows = pandas_rows(path, 5, files)
    assert sorted(rows.df["a"].tolist()) == [2, 3, 10]
    files, why = increment_files(path, 3, 4)
    assert (files, why) == ([], "incremental")  # the compaction alone: nothing to check
