from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from riverdelta.ops.health import (
    STARTUP_ALLOWANCE_SECONDS,
    CheckpointState,
    Health,
    check_thresholds,
    compute_health,
    is_stuck,
    parse_offsets_file,
    read_checkpoint,
    unprocessed_positions,
)

pytestmark = pytest.mark.unit

TOPIC = "orders"


def tps(by_partition: dict[int, object], topic: str = TOPIC) -> dict[tuple[str, int], object]:
    """{partition: v} of TOPIC -> {(topic, partition): v}, the key every look-up uses."""
    return {(topic, p): v for p, v in by_partition.items()}


NOW = 1_748_772_600.0
CONF = {
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    "spark.sql.streaming.join.stateFormatVersion": "2",
    "spark.sql.streaming.stateStore.compression.codec": "lz4",
    "spark.sql.streaming.multipleWatermarkPolicy": "min",
    "spark.sql.streaming.aggregation.stateFormatVersion": "2",
    "spark.sql.shuffle.partitions": "2",
}


def write_batch(
    cp: Path,
    batch: int,
    offsets: dict[int, int],
    *,
    committed: bool,
    commit_time: float | None = None,
    topic: str = TOPIC,
) -> None:
    """Files as Spark's HDFSMetadataLog writes them, with their .crc checksums."""
    (cp / "offsets").mkdir(parents=True, exist_ok=True)
    (cp / "commits").mkdir(parents=True, exist_ok=True)
    ts_ms = int((commit_time or NOW) * 1000) - 1500
    meta = {"batchWatermarkMs": 0, "batchTimestampMs": ts_ms, "conf": CONF}
    source = {topic: {str(p): o for p, o in sorted(offsets.items(), reverse=True)}}
    (cp / "offsets" / str(batch)).write_text(
        f"v1\n{json.dumps(meta, separators=(',', ':'))}\n{json.dumps(source, separators=(',', ':'))}"
    )
    (cp / "offsets" / f".{batch}.crc").write_bytes(b"crc\x00\x01")
    if committed:
        commit = cp / "commits" / str(batch)
        commit.write_text('v1\n{"nextBatchWatermarkMs":0}')
        (cp / "commits" / f".{batch}.crc").write_bytes(b"crc\x00\x02")
        if commit_time is not None:
            os.utime(commit, (commit_time, commit_time))


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    cp = tmp_path / "_checkpoints" / TOPIC / "live"
    (cp / "sources" / "0").mkdir(parents=True)
    (cp / "metadata").write_text('{"id":"7d1f0a4e-3c55-4a8e-9d7e-1b2c3d4e5f60"}')
    write_batch(cp, 0, {0: 10, 1: 12, 2: 9}, committed=True, commit_time=NOW - 300)
    write_batch(cp, 1, {0: 25, 1: 30, 2: 20}, committed=True, commit_time=NOW - 200)
    write_batch(cp, 2, {0: 37, 1: 35, 2: 40}, committed=True, commit_time=NOW - 90)
    # Batch 3 is planned (in flight) but not committed; a temp file is half-written.
    write_batch(cp, 3, {0: 50, 1: 35, 2: 41}, committed=False)
    (cp / "offsets" / ".4.1f2e3d4c-aaaa-bbbb-cccc-000000000000.tmp").write_text("v1\n{")
    return cp


# --------------------------------------------------------------------------- checkpoint


def test_read_checkpoint(checkpoint):
    state = read_checkpoint(checkpoint)
    assert state is not None
    assert state.last_committed_batch == 2
    assert state.end_offsets == tps({0: 37, 1: 35, 2: 40})
    assert state.committed_at == pytest.approx(NOW - 90)
    assert state.batch_timestamp_ms == int((NOW - 90) * 1000) - 1500
    assert state.latest_planned_batch == 3


def test_read_checkpoint_missing_or_empty(tmp_path):
    assert read_checkpoint(tmp_path / "nope") is None
    (tmp_path / "empty").mkdir()
    assert read_checkpoint(tmp_path / "empty") is None


def test_read_checkpoint_planned_but_never_committed(tmp_path):
    write_batch(tmp_path, 0, {0: 100}, committed=False)
    state = read_checkpoint(tmp_path)
    assert state == CheckpointState(None, {}, None, None, 0)


def test_read_checkpoint_file_uri(checkpoint):
    assert read_checkpoint(f"file:{checkpoint}").last_committed_batch == 2
    assert read_checkpoint(f"file://{checkpoint}").last_committed_batch == 2


def test_parse_offsets_file_several_sources():
    text = (
        'v1\n{"batchWatermarkMs":5,"batchTimestampMs":1000,"conf":{}}\n'
        '{"orders":{"0":7,"1":8},"payments":{"0":99}}\n-\n'
    )
    meta, offsets = parse_offsets_file(text)
    assert meta["batchTimestampMs"] == 1000
    assert offsets == {("orders", 0): 7, ("orders", 1): 8, ("payments", 0): 99}
    with pytest.raises(ValueError):
        parse_offsets_file("not a checkpoint")


# --------------------------------------------------------------------------- lag


def fake_kafka(marks: dict[int, tuple[int, int]], stamps: dict[int, float | None]):
    seen: dict[str, dict[int, int]] = {}

    def watermarks_fn(bootstrap: str, source: str):
        assert source == TOPIC
        return tps(marks)

    def timestamps_fn(bootstrap: str, positions: dict[tuple[str, int], int]):
        seen["positions"] = {p: off for (_, p), off in positions.items()}
        return {tp: stamps.get(tp[1]) for tp in positions}

    return watermarks_fn, timestamps_fn, seen


def test_compute_health_lag_and_age(checkpoint, tmp_path):
    marks = {0: (0, 52), 1: (0, 35), 2: (0, 41), 3: (5, 9)}  # partition 3 was added later
    stamps = {0: NOW - 340.0, 2: NOW - 95.0, 3: NOW - 400.0}
    wm, ts, seen = fake_kafka(marks, stamps)
    progress = tmp_path / "progress.json"
    progress.write_text(
        json.dumps(
            {
                "batch_id": 2,
                "input_rows_per_second": 12.5,
                "processed_rows_per_second": 40.0,
                "last_exception": None,
            }
        )
    )
    health = compute_health(
        checkpoint,
        "k:9092",
        TOPIC,
        now=NOW,
        progress_file=progress,
        watermarks_fn=wm,
        timestamps_fn=ts,
    )
    assert health.partition_lag == tps({0: 15, 1: 0, 2: 1, 3: 4})
    assert health.lag_records == 20
    # Partitions without lag are not read; partition 3 counts from its earliest offset.
    assert seen["positions"] == {0: 37, 2: 40, 3: 5}
    assert health.lag_seconds == pytest.approx(400.0)
    assert health.last_batch_id == 2
    assert health.latest_planned_batch_id == 3
    assert health.last_batch_age_seconds == pytest.approx(90.0)
    assert (health.input_rows_per_second, health.processed_rows_per_second) == (12.5, 40.0)
    assert health.last_exception is None
    assert health.kafka_error is None


def test_no_lag_means_zero_lag_seconds(checkpoint):
    wm, ts, seen = fake_kafka({0: (0, 37), 1: (0, 35), 2: (0, 40)}, {})
    health = compute_health(checkpoint, "k", TOPIC, now=NOW, watermarks_fn=wm, timestamps_fn=ts)
    assert (health.lag_records, health.lag_seconds) == (0, 0.0)
    assert seen["positions"] == {}
    assert health.input_rows_per_second is None  # no progress file


def test_never_committed_counts_from_earliest(tmp_path):
    write_batch(tmp_path, 0, {0: 100, 1: 100}, committed=False)
    wm, ts, seen = fake_kafka({0: (20, 100), 1: (0, 0)}, {0: NOW - 60})
    health = compute_health(tmp_path, "k", TOPIC, now=NOW, watermarks_fn=wm, timestamps_fn=ts)
    assert health.partition_lag == tps({0: 80, 1: 0})
    assert seen["positions"] == {0: 20}
    assert health.last_batch_id is None
    assert health.last_batch_age_seconds is None
    assert health.latest_planned_batch_id == 0
    assert health.lag_seconds == pytest.approx(60)


def test_expired_position_counts_from_earliest_retained():
    positions = unprocessed_positions(
        tps({0: 5, 1: 50}), tps({0: (30, 90), 1: (10, 60), 2: (0, 3)})
    )
    assert positions == tps({0: 30, 1: 50, 2: 0})


def test_a_topic_a_pattern_picks_up_later_is_lag_from_its_earliest_offset(checkpoint):
    marks = {**tps({0: (0, 37), 1: (0, 35), 2: (0, 40)}), ("orders.eu", 0): (4, 10)}

    def watermarks_fn(bootstrap, source):
        return marks

    def timestamps_fn(bootstrap, positions):
        assert positions == {("orders.eu", 0): 4}
        return {("orders.eu", 0): NOW - 30}

    health = compute_health(
        checkpoint, "k", TOPIC, now=NOW, watermarks_fn=watermarks_fn, timestamps_fn=timestamps_fn
    )
    assert (health.lag_records, health.lag_seconds) == (6, pytest.approx(30))
    assert health.partition_lag[("orders.eu", 0)] == 6
    assert health.to_dict()["partition_lag"] == {
        "orders": {"0": 0, "1": 0, "2": 0},
        "orders.eu": {"0": 6},
    }


def test_unreachable_kafka_is_reported_not_raised(checkpoint):
    def down(bootstrap, topic):
        raise RuntimeError("KafkaError{code=_TRANSPORT,str='Failed to get metadata'}")

    health = compute_health(checkpoint, "k", TOPIC, now=NOW, watermarks_fn=down)
    assert health.lag_records is None and health.lag_seconds is None
    assert "_TRANSPORT" in health.kafka_error
    assert health.last_batch_id == 2
    (msg,) = check_thresholds(health, max_lag_seconds=120, max_batch_age_seconds=300)
    assert msg.startswith("lag unknown: Kafka could not be asked")


def test_progress_file_exception_and_garbage(checkpoint, tmp_path):
    wm, ts, _ = fake_kafka({0: (0, 37)}, {})
    progress = tmp_path / "p.json"
    progress.write_text(json.dumps({"input_rows_per_second": None, "last_exception": "boom"}))
    health = compute_health(
        checkpoint, "k", TOPIC, now=NOW, progress_file=progress, watermarks_fn=wm, timestamps_fn=ts
    )
    assert health.last_exception == "boom"
    progress.write_text("{half")
    health = compute_health(
        checkpoint, "k", TOPIC, now=NOW, progress_file=progress, watermarks_fn=wm, timestamps_fn=ts
    )
    assert health.last_exception is None


def test_health_round_trips_through_a_status_report():
    health = Health(
        checked_at=NOW,
        partition_lag={**tps({0: 3, 1: 0}), ("payments", 0): 2},
        lag_records=3,
        lag_seconds=12.0,
        last_batch_id=4,
        last_batch_age_seconds=30.0,
        committed_offsets=tps({0: 7, 1: 9}),
        topic_end_offsets=tps({0: 10, 1: 9}),
    )
    report = {"stream": "orders", "desired": "RUNNING", **json.loads(json.dumps(health.to_dict()))}
    assert Health.from_dict(report) == health


# --------------------------------------------------------------------------- thresholds


def health_with(lag_records: int, lag_seconds: float | None, age: float | None) -> Health:
    return Health(
        checked_at=NOW,
        partition_lag=tps({0: lag_records}),
        lag_records=lag_records,
        lag_seconds=lag_seconds,
        last_batch_id=None if age is None else 7,
        last_batch_age_seconds=age,
    )


def test_check_thresholds_lag_breach_is_actionable():
    (msg,) = check_thresholds(health_with(500, 340.0, 20.0), 120, 300)
    assert "lag 340s exceeds max_lag_seconds=120 by 220s" in msg
    assert "500 records behind" in msg
    assert "riverdelta status" in msg


def test_check_thresholds_stuck_batch():
    found = check_thresholds(health_with(500, 60.0, 900.0), 120, 300)
    assert len(found) == 1
    assert "last batch 900s ago exceeds max_batch_age_seconds=300 by 600s" in found[0]
    assert "riverdelta restart" in found[0]


def test_check_thresholds_both_and_never_committed():
    assert len(check_thresholds(health_with(5, 400.0, 900.0), 120, 300)) == 2
    (msg,) = check_thresholds(health_with(5, 30.0, None), 120, 300)
    assert "no batch ever committed" in msg


def test_idle_stream_is_healthy():
    # No new records means no batches: an old last batch is not a problem then.
    assert check_thresholds(health_with(0, 0.0, 86_400.0), 120, 300) == []
    assert check_thresholds(health_with(3, 10.0, 20.0), 120, 300) == []


def test_lag_of_unknown_age_is_reported():
    (msg,) = check_thresholds(health_with(3, None, 20.0), 120, 300)
    assert "3 records behind" in msg


def test_is_stuck():
    assert is_stuck(health_with(10, 30.0, 301.0), 300)
    assert is_stuck(health_with(10, 30.0, None), 300)
    assert not is_stuck(health_with(10, 30.0, 299.0), 300)
    assert not is_stuck(health_with(0, 0.0, 10_000.0), 300)
    assert not is_stuck(Health(checked_at=NOW, last_batch_age_seconds=10_000.0), 300)


def test_a_driver_younger_than_the_batch_age_is_not_stuck():
    # Restarted over a backlog an hour after its last commit: give it the batch age to start.
    old_commit = health_with(60_000, 3600.0, 3600.0)
    assert not is_stuck(old_commit, 45, driver_up_seconds=30.0)
    assert not is_stuck(old_commit, 45, driver_up_seconds=45.0)
    assert is_stuck(old_commit, 45, driver_up_seconds=46.0)
    assert is_stuck(health_with(10, 30.0, None), 45, driver_up_seconds=46.0)


# --------------------------------------------------------------------------- imports


def test_modules_do_not_import_heavy_libraries():
    code = (
        "import sys, riverdelta.ops.health, riverdelta.launch.launchers, riverdelta.stream.listener\n"
        "heavy = [m for m in ('pyspark', 'confluent_kafka', 'pandas', 'polars', 'deltalake') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- watermarks


class FakeAdmin:
    """list_topics and list_offsets as confluent_kafka's AdminClient answers them."""

    def __init__(self, ends: dict[int, tuple[int, int]]) -> None:
        self.ends, self.asked = ends, []

    def list_topics(self, topic=None, timeout=-1):
        from types import SimpleNamespace

        meta = SimpleNamespace(error=None, partitions=dict.fromkeys(self.ends))
        return SimpleNamespace(topics={TOPIC: meta})

    def list_offsets(self, specs, **kwargs):
        from concurrent.futures import Future

        from confluent_kafka.admin import ListOffsetsResultInfo, OffsetSpec

        self.asked.append(({tp.partition for tp in specs}, kwargs))
        out = {}
        for tp, spec in specs.items():
            low, high = self.ends[tp.partition]
            fut: Future = Future()
            offset = low if isinstance(spec, type(OffsetSpec.earliest())) else high
            fut.set_result(ListOffsetsResultInfo(offset, -1, -1))
            out[tp] = fut
        return out


def test_watermarks_ask_both_ends_of_every_partition_at_once(monkeypatch):
    from confluent_kafka import IsolationLevel

    from riverdelta.ops.health import watermarks

    admin = FakeAdmin({0: (3, 10), 1: (0, 0)})
    monkeypatch.setattr("riverdelta.ops.health._admin", lambda bootstrap: admin)
    assert watermarks("k", TOPIC, timeout=4) == tps({0: (3, 10), 1: (0, 0)})
    assert len(admin.asked) == 2  # one request per end, not one per partition
    for parts, kwargs in admin.asked:
        assert parts == {0, 1}
        assert kwargs == {"isolation_level": IsolationLevel.READ_COMMITTED, "request_timeout": 4}


def test_driver_up_counts_from_its_query_start():
    from riverdelta.ops.health import STARTUP_ALLOWANCE_SECONDS, driver_up_seconds

    started = NOW - 200
    # The query started after this deployment: counted from the query's start.
    assert driver_up_seconds(started, NOW - 30, NOW) == 30
    # A query start from an earlier deployment does not count; the JVM gets its allowance.
    assert driver_up_seconds(started, started - 5, NOW) == 200 - STARTUP_ALLOWANCE_SECONDS
    assert driver_up_seconds(NOW - 60, None, NOW) == 0
    assert driver_up_seconds(None, NOW - 30, NOW) is None


def test_status_and_reconcile_share_the_start_grace():
    import time

    from riverdelta.ops import status

    old_commit = health_with(60_000, 3600.0, 3600.0)
    t = {"max_lag_seconds": 120, "max_batch_age_seconds": 45}

    def report(up: float) -> dict:
        started = time.time() - up
        return {
            "desired": "RUNNING",
            "thresholds": t,
            "started_at": started,
            **old_commit.to_dict(),
        }

    # A process start is charged its JVM allowance: up = now - start - allowance.
    assert status.breaches(report(STARTUP_ALLOWANCE_SECONDS + 30)) == []
    assert not is_stuck(old_commit, 45, driver_up_seconds=30.0)
    assert len(status.breaches(report(STARTUP_ALLOWANCE_SECONDS + 600))) == 2
