"""The quality DAGs gate real Delta tables: dag.test() with real Spark, Delta and GX.

Silver rows are written directly with Spark into a per-test lake (the helpers of
test_quality.py), then the ``quality_transactions`` gate runs as Airflow runs it.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.integration.test_quality import SILVER, append, txn

# airflow_db comes from tests/integration/conftest.py, lake_env from tests/conftest.py.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("airflow_db", "lake_env")]


def run_gate(**conf):
    """One run of the ``quality_transactions`` gate: (run state, its verdict task, its XCom)."""
    from riverdelta.airflow.quality_dags import quality_dag

    dr = quality_dag("transactions").test(run_conf=conf)
    ti = dr.get_task_instance("report_verdict")
    return dr.state, ti, ti.xcom_pull(task_ids="report_verdict")


def run_quality(table: str, **conf):
    """The gate on one table: (run state, the verdict task's instance, the table's result)."""
    state, ti, result = run_gate(tables=[table], **conf)
    return state, ti, (result or {"results": {}})["results"].get(table)


def validated_ids(table: str) -> list[str]:
    from riverdelta.quality import read

    return sorted(read.read_validated(table, engine="polars")["event_id"].to_list())


def ids(rows: list[dict]) -> list[str]:
    return sorted(r["event_id"] for r in rows)


def test_good_data_is_validated_and_published(spark):
    from riverdelta.ops import state as ops
    from riverdelta.quality.gx import data_docs_index
    from riverdelta.quality.publications import publication

    first = [txn(i) for i in range(20)]
    append(spark, SILVER, first)
    state, ti, result = run_quality(SILVER)
    assert (state, ti.state) == ("success", "success")
    assert result["success"] and result["engine"] == "pandas"
    assert (result["full"], result["full_reason"]) == (True, "first validation of this table")
    assert (result["from_version"], result["to_version"], result["rows_checked"]) == (None, 0, 20)
    assert publication(SILVER)["validated_version"] == result["validated_version"] == 0
    assert validated_ids(SILVER) == ids(first)

    second = [txn(i, batch=1) for i in range(20, 27)]
    append(spark, SILVER, second)
    state, _, result = run_quality(SILVER)
    assert state == "success"
    # Incremental: only the 7 rows of version 1 were checked.
    assert (result["from_version"], result["to_version"], result["rows_checked"]) == (0, 1, 7)
    assert result["full"] is False and result["validated_version"] == 1
    assert publication(SILVER)["validated_version"] == 1
    assert validated_ids(SILVER) == ids(first + second)

    # full=true from the trigger form re-reads the whole table at the same version.
    state, _, result = run_quality(SILVER, full=True)
    assert state == "success"
    assert (result["full"], result["full_reason"]) == (True, "requested")
    assert (result["from_version"], result["to_version"], result["rows_checked"]) == (None, 1, 27)
    assert result["data_docs"] == str(data_docs_index())

    events = ops.history("transactions", "validation")
    assert [(e["outcome"], e["detail"]["rows_checked"]) for e in events] == [
        ("ok", 20),
        ("ok", 7),
        ("ok", 27),
    ]
    assert ops.history("transactions", "page") == []


def test_bad_increment_fails_the_run_pages_and_is_held_back(spark):
    from riverdelta.ops import state as ops
    from riverdelta.quality.history import last_validation
    from riverdelta.quality.publications import publication

    good = [txn(i) for i in range(10)]
    append(spark, SILVER, good)
    assert run_quality(SILVER)[0] == "success"
    assert publication(SILVER)["validated_version"] == 0

    bad = [txn(10, batch=1, amount=Decimal("-5.00")), txn(11, batch=1, event_id=None)]
    append(spark, SILVER, bad)
    state, ti, result = run_quality(SILVER)
    assert (state, ti.state) == ("failed", "failed")
    assert result is None

    # The pointer did not move: readers still get exactly the good rows.
    assert publication(SILVER)["validated_version"] == 0
    assert validated_ids(SILVER) == ids(good)

    last = last_validation(SILVER)
    assert (last["success"], last["from_version"], last["to_version"], last["rows_checked"]) == (
        False,
        0,
        1,
        2,
    )
    assert {(f["expectation"], f["column"]) for f in last["failed"]} == {
        ("expect_column_values_to_be_between", "amount"),
        ("expect_column_values_to_not_be_null", "event_id"),
    }

    [fail] = [e for e in ops.history("transactions", "validation") if e["outcome"] == "fail"]
    assert fail["detail"]["to_version"] == 1
    # The page carries the task's error: each failed expectation with its observed value.
    [alert] = ops.history("transactions", "page")
    detail = alert["detail"]
    assert (detail["dag_id"], detail["task_id"]) == ("quality_transactions", "report_verdict")
    message = detail["message"]
    assert "transactions_silver failed validation at versions 0..1, 2 rows checked" in message
    assert "validated version stays 0" in message
    assert (
        "expect_column_values_to_be_between on column amount: "
        "observed 1 unexpected (50.00%), e.g. ['-5.00']"
    ) in message
    assert (
        "expect_column_values_to_not_be_null on column event_id: observed 1 unexpected (50.00%)"
    ) in message


def test_a_stream_with_no_tables_yet_is_a_quiet_no_op():
    from riverdelta.ops import state as ops
    from riverdelta.quality.publications import publication

    state, ti, result = run_gate()
    assert (state, ti.state) == ("success", "success")
    # In the gate's order: what analysts read (silver, gold) before bronze and quarantine.
    names = [f"transactions_{t}" for t in ("silver", "gold_user_5m", "bronze", "quarantine")]
    assert result == {"results": {}, "needs_spark": [], "missing": names, "triggered_by": {}}
    assert publication(SILVER) is None
    assert ops.history("transactions") == []


def test_tables_that_need_spark_are_handed_to_the_pool_task(spark, monkeypatch):
    """Above the row bound the pandas task validates nothing and the Spark task does it."""
    from riverdelta.config.settings import settings
    from riverdelta.quality.publications import publication

    monkeypatch.setenv("RIVERDELTA_VALIDATION_PANDAS_MAX_ROWS", "5")
    settings.cache_clear()
    rows = [txn(i) for i in range(12)]
    append(spark, SILVER, rows)
    from riverdelta.airflow.quality_dags import quality_dag

    dr = quality_dag("transactions").test(run_conf={"tables": [SILVER]})
    assert dr.state == "success"
    first = dr.get_task_instance("validate_increments").xcom_pull(task_ids="validate_increments")
    assert first["results"] == {} and first["needs_spark"] == [SILVER]
    assert dr.get_task_instance("validate_with_spark").state == "success"
    result = dr.get_task_instance("report_verdict").xcom_pull(task_ids="report_verdict")
    assert result["results"][SILVER]["engine"] == "spark"
    assert result["results"][SILVER]["rows_checked"] == 12
    assert publication(SILVER)["validated_version"] == 0
    assert validated_ids(SILVER) == ids(rows)
