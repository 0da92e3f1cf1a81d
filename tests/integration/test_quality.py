"""The quality gate on real Delta tables: GX suites, the validated pointer, readers, Data Docs.

Tables are written directly with Spark into a per-test lake (no Kafka needed), in
the shapes the ingest writes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from riverdelta.ops import state as ops
from riverdelta.quality import read
from riverdelta.quality.benchmark import time_validation_vs_scan
from riverdelta.quality.failures import REDACTED, failed_rows
from riverdelta.quality.gate import ValidationFailedError, validate_table
from riverdelta.quality.gx import data_docs_dir, data_docs_index, gx_root
from riverdelta.quality.history import validation_history
from riverdelta.quality.publications import publication
from riverdelta.storage.lake import ops_path, table_path

pytestmark = pytest.mark.integration

SILVER = "transactions_silver"
SILVER_SCHEMA = (
    "event_id string, user_id string, action string, amount decimal(18,2), currency string, "
    "merchant string, event_time timestamp, _extra string, topic string, partition int, "
    "offset long, kafka_timestamp timestamp, _app_id string, _batch_id long"
)
BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def txn(i: int, *, batch: int = 0, app: str = "app-1", **over) -> dict:
    row = {
        "event_id": f"e-{i}",
        "user_id": f"user-{i % 3}",
        "action": "purchase",
        "amount": Decimal("10.50"),
        "currency": "EUR",
        "merchant": "Acme Grocers",
        "event_time": BASE + timedelta(seconds=20 * i),
        "_extra": None,
        "topic": "rd.transactions",
        "partition": i % 3,
        "offset": i,
        "kafka_timestamp": BASE + timedelta(seconds=20 * i),
        "_app_id": app,
        "_batch_id": batch,
    }
    row.update(over)
    return row


def append(spark, table: str, rows: list[dict], schema: str = SILVER_SCHEMA) -> None:
    cols = [c.split()[0] for c in schema.split(", ")]
    df = spark.createDataFrame([tuple(r[c] for c in cols) for r in rows], schema)
    df.coalesce(1).write.format("delta").mode("append").save(table_path(table))


def test_good_data_publishes_bad_increment_is_held_back(spark, lake_env):
    with pytest.raises(
        read.NotValidatedError, match="run `riverdelta validate transactions_silver`"
    ):
        read.read_validated(SILVER, spark=spark)

    append(spark, SILVER, [txn(i) for i in range(20)])
    first = validate_table(SILVER, spark=spark)
    assert first["success"] and first["full"] and first["failed"] == []
    assert (first["from_version"], first["to_version"], first["rows_checked"]) == (None, 0, 20)
    assert publication(SILVER)["validated_version"] == 0

    append(spark, SILVER, [txn(i, batch=1) for i in range(20, 27)])
    second = validate_table(SILVER, spark=spark)
    assert second["success"] and not second["full"]
    # Only the 7 appended rows were read and checked.
    assert (second["from_version"], second["to_version"], second["rows_checked"]) == (0, 1, 7)
    assert publication(SILVER)["validated_version"] == 1

    assert read.read_validated(SILVER, spark=spark).count() == 27
    assert read.read_validated(SILVER, engine="polars").height == 27
    assert read.read_validated(SILVER, engine="pyarrow").num_rows == 27

    bad = [
        txn(27, batch=2, amount=Decimal("-5.00")),
        txn(28, batch=2, currency="XXX"),
        txn(29, batch=2, event_id="e-29", action="steal"),
    ]
    append(spark, SILVER, bad)
    with pytest.raises(ValidationFailedError) as err:
        validate_table(SILVER, spark=spark)
    message = str(err.value)
    assert "expect_column_values_to_be_between on column amount" in message
    assert "-5.00" in message
    assert "expect_column_values_to_be_in_set on column currency" in message and "XXX" in message
    assert "expect_column_values_to_be_in_set on column action" in message and "steal" in message
    failed = err.value.result
    assert failed["rows_checked"] == 3 and (failed["from_version"], failed["to_version"]) == (1, 2)
    assert {f["column"] for f in failed["failed"]} == {"amount", "currency", "action"}

    # The pointer did not move: readers still get the last good version.
    assert publication(SILVER)["validated_version"] == 1
    assert read.read_validated(SILVER, spark=spark).count() == 27
    assert read.read_validated(SILVER, engine="polars").height == 27

    history = validation_history(SILVER)
    assert [h["success"] for h in history] == [True, True, False]
    assert [h["rows_checked"] for h in history] == [20, 7, 3]
    events = ops.history("transactions", "validation")
    assert [e["outcome"] for e in events] == ["ok", "ok", "fail"]

    index = data_docs_index()
    assert index.exists()
    html = index.read_text()
    for run in (first, second, failed):
        assert run["run_id"] in html

    report = {r["table"]: r for r in read.tables_report()}[SILVER]
    assert report["latest_version"] == 2 and report["validated_version"] == 1
    assert (report["rows_latest"], report["rows_validated"]) == (30, 27)
    assert report["last_validation"]["success"] is False

    assert SILVER in read.register_validated_views(spark)
    assert spark.sql(f"select count(*) from {SILVER}").first()[0] == 27
    # Unvalidated tables get no view.
    assert "transactions_bronze" not in read.register_validated_views(spark)


def test_duplicate_ids_and_full_validation(spark, lake_env):
    append(spark, SILVER, [txn(i) for i in range(5)])
    assert validate_table(SILVER, spark=spark)["success"]
    # A duplicate of an id from an earlier increment: invisible to the increment alone ...
    append(spark, SILVER, [txn(100, batch=1, event_id="e-1")])
    assert validate_table(SILVER, spark=spark)["rows_checked"] == 1
    # ... and caught by the (periodic or requested) full validation.
    with pytest.raises(ValidationFailedError, match="expect_column_values_to_be_unique"):
        validate_table(SILVER, spark=spark, full=True)
    assert publication(SILVER)["validated_version"] == 1


def _gold_rows(spark, rows: list[dict]):
    from pyspark.sql import functions as F

    silver = spark.createDataFrame(
        [tuple(r[c.split()[0]] for c in SILVER_SCHEMA.split(", ")) for r in rows], SILVER_SCHEMA
    )
    return (
        silver.groupBy(F.window("event_time", "5 minutes").alias("w"), "user_id")
        .agg(F.sum("amount").alias("total_amount"), F.count(F.lit(1)).alias("event_count"))
        .select(
            F.col("w.start").alias("window_start"),
            F.col("w.end").alias("window_end"),
            "user_id",
            "total_amount",
            "event_count",
            F.current_timestamp().alias("updated_at"),
        )
    )


def test_gold_must_match_silver_for_closed_windows(spark, lake_env):
    gold = "transactions_gold_user_5m"
    rows = [txn(i) for i in range(60)]  # 20 minutes of events
    append(spark, SILVER, rows)
    # The gold write carries the ingest's txn (app, batch), which says what silver it reflects.
    _gold_rows(spark, rows).write.format("delta").option("txnAppId", "app-1").option(
        "txnVersion", 0
    ).save(table_path(gold))
    ok = validate_table(gold, spark=spark)
    assert ok["success"] and ok["full"] and ok["rows_checked"] > 0

    from delta.tables import DeltaTable

    DeltaTable.forPath(spark, table_path(gold)).update(
        condition="window_start = timestamp'2025-03-01 12:00:00' and user_id = 'user-0'",
        set={"total_amount": "total_amount + 1"},
    )
    with pytest.raises(ValidationFailedError) as err:
        validate_table(gold, spark=spark)
    assert "riverdelta.gold_matches_silver" in str(err.value)
    assert "1 closed window(s) differ from silver" in str(err.value)


def test_bronze_reconciles_with_ingest_batches(spark, lake_env):
    from pyspark.sql import functions as F

    from riverdelta.stream.delta_sink import batch_counts_df

    bronze_schema = (
        "key binary, value binary, topic string, partition int, offset long, "
        "kafka_timestamp timestamp, batch_id long"
    )
    bronze = spark.createDataFrame(
        [(None, b"{}", "rd.transactions", 0, i, BASE, 0) for i in range(10)], bronze_schema
    ).withColumn("ingested_at", F.current_timestamp())
    bronze.write.format("delta").option("txnAppId", "app-1").option("txnVersion", 0).save(
        table_path("transactions_bronze")
    )
    append(spark, SILVER, [txn(i) for i in range(8)])
    counts = {
        "stream": "transactions",
        "mode": "live",
        "app_id": "app-1",
        "batch_id": 0,
        "records_in": 10,
        "bronze": 10,
        "silver": 8,
        "duplicates": 0,
        "quarantined": 2,  # but the quarantine table is missing those 2 rows
        "quarantine_by_reason": {"not_json": 2},
        "late": 0,
        "schema_drift": 0,
        "max_event_time": BASE.replace(tzinfo=None),
        "offsets": "{}",
    }
    batch_counts_df(spark, counts).write.format("delta").save(ops_path("ingest_batches"))
    quarantine_schema = (
        "key binary, value binary, topic string, partition int, offset long, "
        "kafka_timestamp timestamp, reason string, detail string, resolved boolean, "
        "resolved_at timestamp, batch_id long"
    )
    spark.createDataFrame([], quarantine_schema).write.format("delta").save(
        table_path("transactions_quarantine")
    )
    with pytest.raises(ValidationFailedError) as err:
        validate_table("transactions_bronze", spark=spark)
    assert "riverdelta.reconcile_bronze" in str(err.value)
    assert '"quarantine": [0, 2]' in str(err.value)

    spark.createDataFrame(
        [
            (None, b"x", "rd.transactions", 0, i, BASE, "not_json", "", False, None, 0)
            for i in (8, 9)
        ],
        quarantine_schema,
    ).write.format("delta").mode("append").save(table_path("transactions_quarantine"))
    assert validate_table("transactions_bronze", spark=spark)["success"]


def test_validation_vs_scan_measurement(spark, lake_env):
    append(spark, SILVER, [txn(i) for i in range(200)])
    m = time_validation_vs_scan(SILVER, spark=spark)
    assert m["rows"] == 200 and m["success"]
    # What was timed is a real full validation: it published, it is in the history, and
    # its GX part lies within its total.
    assert publication(SILVER)["validated_version"] == 0
    assert [h["full"] for h in validation_history(SILVER)] == [True]
    assert m["gx_seconds"] <= m["validation_seconds"]


# --------------------------------------------------------------------------- two engines


def _both_engines(monkeypatch, spark, table: str, **kwargs) -> dict[str, dict]:
    """The same validation with GX's pandas engine and with its Spark engine (no publishing)."""
    from riverdelta.config.settings import settings

    results = {}
    for engine in ("pandas", "spark"):
        monkeypatch.setenv("RIVERDELTA_VALIDATION_ENGINE", engine)
        settings.cache_clear()
        try:
            res = validate_table(table, spark=spark, publish_on_pass=False, **kwargs)
        except ValidationFailedError as exc:
            res = exc.result
        assert res["engine"] == engine
        results[engine] = res
    monkeypatch.delenv("RIVERDELTA_VALIDATION_ENGINE")
    settings.cache_clear()
    return results


def _verdict(res: dict) -> tuple:
    """What a person acts on: the outcome, the rows, and each failure with its bad values."""
    failed = []
    for f in res["failed"]:
        d = f["details"]
        bad = sorted(str(v) for v in d.get("partial_unexpected_list") or [])
        observed = str(f["observed_value"]).split("; first:")[0]
        failed.append(
            (f["expectation"], str(f["column"]), d.get("unexpected_count"), bad, observed)
        )
    return res["success"], res["rows_checked"], res["from_version"], sorted(failed)


def test_pandas_and_spark_engines_agree_on_planted_violations(spark, lake_env, monkeypatch):
    append(spark, SILVER, [txn(i) for i in range(20)])
    base = validate_table(SILVER, spark=spark)
    # A small table is validated without a JVM by default.
    assert base["success"] and base["engine"] == "pandas"
    bad = [
        txn(20, batch=1, amount=Decimal("-5.00")),
        txn(21, batch=1, currency="XXX"),
        txn(22, batch=1, action="steal"),
        txn(23, batch=1, user_id=None),
        txn(24, batch=1, event_time=datetime(2999, 1, 1, tzinfo=UTC)),
        txn(25, batch=1, event_id="e-3"),  # a duplicate across increments
        *(txn(i, batch=1) for i in range(26, 40)),
    ]
    append(spark, SILVER, bad)
    inc = _both_engines(monkeypatch, spark, SILVER)
    assert _verdict(inc["pandas"]) == _verdict(inc["spark"])
    success, rows, since, failed = _verdict(inc["pandas"])
    assert (success, rows, since) == (False, 20, 0)
    assert {(f[1], f[2]) for f in failed} == {
        ("amount", 1), ("currency", 1), ("action", 1), ("user_id", 1), ("event_time", 1)
    }  # fmt: skip
    full = _both_engines(monkeypatch, spark, SILVER, full=True)
    assert _verdict(full["pandas"]) == _verdict(full["spark"])
    assert ("expect_column_values_to_be_unique", "event_id", 2) in {
        f[:3] for f in _verdict(full["pandas"])[3]
    }


def test_pandas_and_spark_engines_agree_on_gold(spark, lake_env, monkeypatch):
    gold = "transactions_gold_user_5m"
    rows = [txn(i) for i in range(60)]
    append(spark, SILVER, rows)
    _gold_rows(spark, rows).write.format("delta").option("txnAppId", "app-1").option(
        "txnVersion", 0
    ).save(table_path(gold))
    ok = _both_engines(monkeypatch, spark, gold)
    assert ok["pandas"]["success"] and ok["spark"]["success"]
    assert _verdict(ok["pandas"]) == _verdict(ok["spark"])

    from delta.tables import DeltaTable

    DeltaTable.forPath(spark, table_path(gold)).update(
        condition="window_start = timestamp'2025-03-01 12:00:00' and user_id in ('user-0', 'user-1')",
        set={"event_count": "event_count + 1"},
    )
    # A silver row not yet reflected in gold (batch 1 > gold's txn 0) keeps its window
    # (12:00, user-1) out of the comparison; 12:05 onwards are still open (watermark).
    append(spark, SILVER, [txn(1000, batch=1, event_time=BASE)])
    bad = _both_engines(monkeypatch, spark, gold)
    assert _verdict(bad["pandas"]) == _verdict(bad["spark"])
    (failure,) = bad["pandas"]["failed"]
    assert failure["observed_value"].startswith("1 closed window(s) differ from silver")
    assert failure["details"]["sample"][0]["key"]["user_id"] == "user-0"


PV_SCHEMA = (
    "event_id string, session_id string, user_id string, url string, referrer string, "
    "user_agent string, event_time timestamp, _extra string, topic string, partition int, "
    "offset long, kafka_timestamp timestamp, _app_id string, _batch_id long"
)


def pv(i: int, **over) -> dict:
    row = {
        "event_id": f"p-{i}", "session_id": f"s-{i % 4}", "user_id": None, "url": f"/u/{i % 2}",
        "referrer": None, "user_agent": f"Agent/{i}", "event_time": BASE + timedelta(seconds=i),
        "_extra": None, "topic": "rd.page_views", "partition": i % 3, "offset": i,
        "kafka_timestamp": BASE + timedelta(seconds=i), "_app_id": "app-1", "_batch_id": 0,
    }  # fmt: skip
    row.update(over)
    return row


def test_failed_rows_are_named_and_sensitive_values_never_shown(spark, lake_env, monkeypatch):
    from riverdelta.quality import suites

    # A refinement on the sensitive field, so that a failure would show its values.
    folder = lake_env.parent / "suites"
    folder.mkdir()
    (folder / "page_views_silver.json").write_text(
        '{"expectations": [{"type": "expect_column_value_lengths_to_be_between",'
        ' "kwargs": {"column": "user_agent", "max_value": 12}}]}'
    )
    monkeypatch.setattr(suites, "SUITES_DIR", folder)
    secret = "SecretBrowser/99.1 (very identifying)"
    rows = [pv(i) for i in range(10)]
    rows[3]["user_agent"] = secret
    rows[7]["url"] = None
    append(spark, "page_views_silver", rows, PV_SCHEMA)
    with pytest.raises(ValidationFailedError) as err:
        validate_table("page_views_silver", spark=spark)
    res = err.value.result
    assert {(f["expectation"], f["column"]) for f in res["failed"]} == {
        ("expect_column_value_lengths_to_be_between", "user_agent"),
        ("expect_column_values_to_not_be_null", "url"),
    }
    # The rows, by their Kafka coordinates, in a table a person can query.
    named = failed_rows("page_views_silver", res["run_id"])
    assert res["failed_rows"] == len(named) == 2
    coords = {r["column"]: (r["row"]["partition"], r["row"]["offset"]) for r in named}
    assert coords == {"user_agent": (0, 3), "url": (1, 7)}
    by_column = {r["column"]: r["row"] for r in named}
    assert by_column["user_agent"]["user_agent"] == REDACTED
    assert by_column["url"]["event_id"] == "p-7"
    assert "riverdelta failed-rows page_views_silver" in str(err.value)
    # Nowhere: not the message, the history, the failed rows, nor any Data Docs page.
    assert secret not in str(err.value) and secret not in json.dumps(res, default=str)
    assert all(secret not in h["failed"] for h in validation_history("page_views_silver"))
    docs = [p.read_text(errors="replace") for p in data_docs_dir().rglob("*.html")]
    assert docs and not any(secret in page for page in docs)
    stored = [p.read_text() for p in gx_root().rglob("*.json") if "validations" in str(p)]
    assert stored and not any(secret in doc for doc in stored)
    # Data Docs say where each expectation came from.
    assert any("[contract]" in page for page in docs)
    assert any("[expectations/page_views_silver.json]" in page for page in docs)
