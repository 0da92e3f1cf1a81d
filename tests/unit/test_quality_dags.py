"""Every table in the registry gets a quality DAG, triggered by its asset with a time fallback."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_every_stream_gets_one_gate_started_by_its_watcher_announcements_or_a_fallback():
    from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable

    from riverdelta.airflow import dag_ids
    from riverdelta.airflow.env import SPARK_POOL
    from riverdelta.airflow.quality_dags import fallback_cron, quality_dags, versions_asset
    from riverdelta.airflow.stream_dags import table_asset
    from riverdelta.config.registry import load_registry
    from riverdelta.ops.alerts import page
    from riverdelta.quality.trigger import NewTableVersionsTrigger

    streams = load_registry().streams
    dags = quality_dags()
    assert sorted(dags) == sorted(dag_ids.quality(s) for s in streams)
    for name, spec in streams.items():
        dag = dags[dag_ids.quality(name)]
        timetable = dag.timetable
        assert isinstance(timetable, AssetOrTimeSchedule)
        condition = timetable.asset_condition
        assert isinstance(condition, AssetAny)
        tables = list(spec.table_names().values())
        # The stream's watched asset and its own tables' announcements, nobody else's.
        assert list(condition.objects) == [versions_asset(name), *map(table_asset, tables)]
        [watcher] = condition.objects[0].watchers
        assert isinstance(watcher.trigger, NewTableVersionsTrigger)
        assert watcher.trigger.serialize() == (
            "riverdelta.quality.trigger.NewTableVersionsTrigger",
            {"stream": name, "poll_seconds": 2.0},
        )
        assert isinstance(timetable.timetable, CronTriggerTimetable)
        assert timetable.timetable.expression == fallback_cron(name)
        assert (dag.catchup, dag.max_active_runs) == (False, 1)
        assert dict(dag.params) == {"tables": [], "full": False}
        assert dag.params.get_param("tables").schema["items"]["enum"] == tables
        increments, with_spark, verdict = (
            dag.get_task(t)
            for t in ("validate_increments", "validate_with_spark", "report_verdict")
        )
        # Only the Spark task holds a pool slot; the verdict runs whatever happened before
        # and is the one task that pages.
        assert increments.pool != SPARK_POOL and with_spark.pool == SPARK_POOL
        assert with_spark.upstream_task_ids == {"validate_increments"}
        assert verdict.upstream_task_ids == {"validate_with_spark"}
        assert verdict.trigger_rule == "all_done" and [t.task_id for t in dag.leaves] == [
            "report_verdict"
        ]
        assert verdict.on_failure_callback == [page]
        assert not increments.on_failure_callback and not with_spark.on_failure_callback
    # Every 30 minutes, not all in the same minute.
    minutes = [fallback_cron(s).split()[0].split(",") for s in streams]
    assert all(len(m) == 2 and int(m[1]) - int(m[0]) == 30 for m in minutes)
    assert len({m[0] for m in minutes}) == len(streams)


def test_unknown_stream_is_refused_with_the_known_ones():
    from riverdelta.airflow.quality_dags import quality_dag
    from riverdelta.config.registry import UnknownStreamError

    with pytest.raises(UnknownStreamError, match="unknown stream 'nope'; known streams: "):
        quality_dag("nope")


def test_a_quality_page_lands_under_the_gates_stream():
    from riverdelta.ops.alerts import _stream_of

    assert _stream_of("quality_transactions") == "transactions"
    assert _stream_of("stream_page_views") == "page_views"
    assert _stream_of("backfill_transactions") == "transactions"


def test_the_verdict_fails_for_a_failed_table_or_an_unfinished_task():
    from riverdelta.airflow.quality_dags import verdict
    from riverdelta.quality.gate import ValidationFailedError

    ok = {"results": {"a": {"success": True}}, "failed": {}, "needs_spark": [], "missing": ["b"]}
    ok["triggered_by"] = {"a": 3}
    assert verdict(ok, None) == {
        "results": {"a": {"success": True}},
        "needs_spark": [],
        "missing": ["b"],
        "triggered_by": {"a": 3},
    }
    with pytest.raises(RuntimeError, match="validate_increments did not finish"):
        verdict(None, None)
    handed = {**ok, "needs_spark": ["c"]}
    with pytest.raises(RuntimeError, match="validate_with_spark did not finish for c"):
        verdict(handed, None)
    spark_failed = {"results": {"c": {"success": False}}, "failed": {"c": "c failed validation"}}
    with pytest.raises(ValidationFailedError, match="c failed validation") as err:
        verdict(handed, spark_failed)
    assert err.value.result == {"a": {"success": True}, "c": {"success": False}}


def test_triggering_versions_are_the_highest_per_table_from_watcher_and_announcements():
    from types import SimpleNamespace

    from riverdelta.airflow.quality_dags import triggering_versions, versions_asset
    from riverdelta.airflow.stream_dags import table_asset

    def event(extra):
        return SimpleNamespace(extra=extra)

    events = {
        versions_asset("transactions"): [
            event({"from_trigger": True, "payload": {"versions": {"transactions_silver": 9}}}),
            event({"from_trigger": True, "payload": {"versions": {"transactions_bronze": 3}}}),
        ],
        table_asset("transactions_silver"): [
            event({"table": "transactions_silver", "version": 4}),
            event({}),
        ],
    }
    found = triggering_versions({"triggering_asset_events": events})
    assert found == {"transactions_silver": 9, "transactions_bronze": 3}
    assert triggering_versions({}) == {}


def test_announcements_do_not_wait_for_a_healthy_stream():
    from riverdelta.airflow.stream_dags import stream_dags

    for dag in stream_dags().values():
        health = dag.get_task("check_health")
        assert health.upstream_task_ids == {"apply_action"}
        announcers = [t for t in dag.tasks if t.task_id.startswith("announce_")]
        assert len(announcers) == 4
        for t in announcers:
            # Not downstream of check_health, and run whatever apply_action's outcome.
            assert t.upstream_task_ids == {"apply_action"} and t.trigger_rule == "all_done"
        # A failed health check still fails the run: it is a leaf.
        assert "check_health" in {t.task_id for t in dag.leaves}
