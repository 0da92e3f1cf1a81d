from __future__ import annotations

import json

import pytest

from riverdelta.stream import listener
from riverdelta.stream.listener import (
    append_series,
    idle_point,
    lag_at_planning,
    progress_record,
    read_record,
    read_series,
    series_point,
    summarize_exception,
    terminated_record,
    write_atomic,
)

pytestmark = pytest.mark.unit

# StreamingQueryProgress.json of a Kafka -> foreachBatch query (Spark 4.1).
PROGRESS = json.loads(
    """{
  "id" : "7d1f0a4e-3c55-4a8e-9d7e-1b2c3d4e5f60",
  "runId" : "b2a9c1d0-5e4f-4a3b-8c7d-6e5f4a3b2c1d",
  "name" : "riverdelta-orders-live",
  "timestamp" : "2025-06-01T10:05:00.000Z",
  "batchId" : 42,
  "batchDuration" : 1834,
  "numInputRows" : 250,
  "inputRowsPerSecond" : 25.0,
  "processedRowsPerSecond" : 136.31406761177754,
  "durationMs" : {
    "addBatch" : 1602, "commitOffsets" : 38, "getBatch" : 0, "latestOffset" : 12,
    "queryPlanning" : 9, "triggerExecution" : 1834, "walCommit" : 41
  },
  "stateOperators" : [ ],
  "sources" : [ {
    "description" : "KafkaV2[Subscribe[orders]]",
    "startOffset" : {"orders" : {"2" : 37, "1" : 35, "0" : 37}},
    "endOffset" : {"orders" : {"2" : 120, "1" : 118, "0" : 121}},
    "latestOffset" : {"orders" : {"2" : 120, "1" : 118, "0" : 121}},
    "numInputRows" : 250,
    "inputRowsPerSecond" : 25.0,
    "processedRowsPerSecond" : 136.31406761177754,
    "metrics" : {"avgOffsetsBehindLatest" : "0.0", "maxOffsetsBehindLatest" : "0", "minOffsetsBehindLatest" : "0"}
  } ],
  "sink" : {"description" : "ForeachBatchSink", "numOutputRows" : -1}
}"""
)


def test_progress_record_from_spark_progress():
    record = progress_record(PROGRESS, None)
    assert record["batch_id"] == 42
    assert record["timestamp"] == "2025-06-01T10:05:00.000Z"
    assert record["input_rows_per_second"] == 25.0
    assert record["processed_rows_per_second"] == pytest.approx(136.314, rel=1e-3)
    assert record["num_input_rows"] == 250
    assert record["query_id"] == "7d1f0a4e-3c55-4a8e-9d7e-1b2c3d4e5f60"
    assert record["run_id"] == "b2a9c1d0-5e4f-4a3b-8c7d-6e5f4a3b2c1d"
    assert record["last_exception"] is None
    json.dumps(record, allow_nan=False)


def test_progress_record_keeps_the_last_exception():
    previous = {"batch_id": 41, "last_exception": "KafkaException: boom", "last_exception_at": 1.0}
    record = progress_record(PROGRESS, previous)
    assert record["last_exception"] == "KafkaException: boom"
    assert record["last_exception_at"] == 1.0
    assert record["batch_id"] == 42


def test_progress_record_without_rates():
    # Spark leaves NaN rates out of its JSON (first batch, empty trigger).
    progress = {k: v for k, v in PROGRESS.items() if not k.endswith("RowsPerSecond")}
    progress["numInputRows"] = 0
    record = progress_record(progress, None)
    assert record["input_rows_per_second"] is None
    assert record["processed_rows_per_second"] is None
    assert record["num_input_rows"] == 0
    nan = progress_record({**PROGRESS, "inputRowsPerSecond": float("nan")}, None)
    assert nan["input_rows_per_second"] is None


# QueryTerminatedEvent.exception when a foreachBatch function raised (Spark 4.1, shortened).
FOREACH_BATCH_FAILURE = (
    "py4j.Py4JException: An exception was raised by the Python Proxy. Return Message: "
    "Traceback (most recent call last):\n"
    '  File ".venv/lib/python3.11/site-packages/pyspark/sql/utils.py", line 162, in call\n'
    "    self.func(DataFrame(jdf, wrapped_session_jdf), batch_id)\n"
    '  File "spark_apps/ingest.py", line 10, in <lambda>\n'
    "ValueError: boom in batch 2\n"
    "\n"
    "\tat py4j.Protocol.getReturnValue(Protocol.java:476)\n"
    "\tat py4j.reflection.PythonProxyHandler.invoke(PythonProxyHandler.java:108)\n"
)


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        (FOREACH_BATCH_FAILURE, "ValueError: boom in batch 2"),
        (
            "org.apache.spark.SparkException: Job aborted.\n\tat org.apache.spark.x(X.scala:1)\n"
            "Caused by: org.apache.kafka.common.errors.TimeoutException: Timeout of 60000ms expired\n"
            "\tat org.apache.kafka.y(Y.java:2)",
            "org.apache.kafka.common.errors.TimeoutException: Timeout of 60000ms expired",
        ),
        ("query stopped oddly", "query stopped oddly"),
    ],
)
def test_summarize_exception(text, summary):
    assert summarize_exception(text) == summary


def test_terminated_record():
    before = progress_record(PROGRESS, None)
    failed = terminated_record(
        before,
        query_id=before["query_id"],
        run_id=before["run_id"],
        exception=FOREACH_BATCH_FAILURE,
        now=100.0,
    )
    assert failed["last_exception"] == "ValueError: boom in batch 2"
    assert failed["last_exception_detail"] == FOREACH_BATCH_FAILURE
    assert failed["last_exception_at"] == 100.0
    assert failed["terminated_at"] == 100.0
    assert failed["batch_id"] == 42
    clean = terminated_record(failed, query_id="q", run_id="r", exception=None, now=200.0)
    assert clean["last_exception"] == "ValueError: boom in batch 2"
    # The next run's progress keeps it too: on-call sees why the previous run died.
    assert progress_record(PROGRESS, clean)["last_exception"] == "ValueError: boom in batch 2"
    fresh = terminated_record(None, query_id="q", run_id="r", exception=None, now=1)
    assert fresh["last_exception"] is None


def test_started_record_carries_the_last_error_and_marks_the_start():
    failed = terminated_record(
        progress_record(PROGRESS, None), query_id="q", run_id="r", exception="boom", now=100.0
    )
    started = listener.started_record(failed, query_id="q", run_id="r2", now=150.0)
    assert started["query_started_at"] == 150.0 and started["terminated_at"] is None
    assert started["last_exception"] == "boom" and started["run_id"] == "r2"
    # Progress events keep the start: the grace counts from it, not from the last batch.
    assert progress_record(PROGRESS, started)["query_started_at"] == 150.0


def test_write_atomic_round_trip(tmp_path):
    path = tmp_path / "progress" / "orders.json"
    write_atomic(path, {"batch_id": 1})
    write_atomic(path, {"batch_id": 2})
    assert read_record(path) == {"batch_id": 2}
    assert [p.name for p in path.parent.iterdir()] == ["orders.json"]
    assert read_record(tmp_path / "missing.json") is None


def test_lag_at_planning_is_latest_minus_end_per_partition():
    assert lag_at_planning(PROGRESS) == 0
    behind = json.loads(json.dumps(PROGRESS))
    # Spark may hand the offsets over as a JSON string; partition 1 missing from end.
    behind["sources"][0]["latestOffset"] = json.dumps({"orders": {"0": 131, "1": 118, "2": 125}})
    assert lag_at_planning(behind) == 10 + 0 + 5
    assert lag_at_planning({"sources": []}) is None


def test_series_point_carries_duration_rows_and_lag():
    point = series_point(PROGRESS, now=1000.5)
    assert point == {
        "t": 1000.5, "batch_id": 42, "duration_ms": 1834, "rows": 250, "lag_records": 0
    }  # fmt: skip


def test_series_file_is_bounded_and_survives_a_torn_line(tmp_path, monkeypatch):
    monkeypatch.setattr(listener, "SERIES_MAX_POINTS", 10)
    monkeypatch.setattr(listener, "SERIES_KEEP_SECONDS", 50)
    path = tmp_path / "s.series.jsonl"
    for t in range(100):
        append_series(path, {"t": float(t), "duration_ms": t})
    kept = read_series(path)
    assert len(kept) <= 2 * 10 * 120 // 20  # trimmed, not 100 points
    assert kept[-1]["t"] == 99.0 and all(p["t"] > 99 - 50 - 30 for p in kept)
    with path.open("a") as fh:
        fh.write('{"t": 100, "durat')  # a writer killed mid-line
    assert read_series(path)[-1]["t"] == 99.0
    assert [p["t"] for p in read_series(path, since=98)] == [98.0, 99.0]


def test_an_idle_trigger_is_a_point_with_nothing_waiting():
    assert idle_point(5.0) == {
        "t": 5.0, "batch_id": None, "duration_ms": None, "rows": 0, "lag_records": 0
    }  # fmt: skip


def test_the_listener_writes_start_progress_idle_and_end(tmp_path):
    """The callbacks Spark calls, with events shaped like Spark's (no JVM needed)."""
    from types import SimpleNamespace

    path = tmp_path / "progress.json"
    probe = listener.make_progress_listener(path)
    ids = {"id": "q-1", "runId": "r-1"}
    probe.onQueryStarted(SimpleNamespace(**ids))
    started = listener.read_record(path)
    assert started["query_id"] == "q-1" and started["query_started_at"] is not None

    progress = {"batchId": 3, "inputRowsPerSecond": 10.0, "processedRowsPerSecond": 20.0}
    probe.onQueryProgress(SimpleNamespace(progress=SimpleNamespace(json=json.dumps(progress))))
    probe.onQueryIdle(SimpleNamespace())
    assert len(listener.read_series(listener.series_file(path))) == 2

    probe.onQueryProgress(SimpleNamespace(progress=SimpleNamespace(json="not json")))  # logged
    probe.onQueryTerminated(SimpleNamespace(**ids, exception="ValueError: boom"))
    ended = listener.read_record(path)
    assert ended["last_exception"] == "ValueError: boom" and ended["terminated_at"] is not None
    assert ended["query_started_at"] == started["query_started_at"]
