"""Every table in the registry gets a quality DAG, triggered by its asset with a time fallback."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_every_table_gets_an_asset_triggered_dag_with_a_time_fallback():
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    from riverdelta.alerts import page
    from riverdelta.dag_factory import table_asset
    from riverdelta.quality_dags import fallback_cron, quality_dags
    from riverdelta.registry import load_registry

    tables = [t for s in load_registry().streams.values() for t in s.table_names().values()]
    assert len(tables) == 8
    dags = quality_dags()
    assert sorted(dags) == sorted(f"quality_{t}" for t in tables)
    for table in tables:
        dag = dags[f"quality_{table}"]
        assert dag.dag_id == f"quality_{table}"
        timetable = dag.timetable
        assert isinstance(timetable, AssetOrTimeSchedule)
        # Exactly the table's own asset: another table's new version must not trigger it.
        assert timetable.asset_condition == table_asset(table)
        assert isinstance(timetable.timetable, CronTriggerTimetable)
        assert timetable.timetable.expression == fallback_cron(table)
        assert (dag.catchup, dag.max_active_runs) == (False, 1)
        assert dict(dag.params) == {"full": False}
        assert dag.params.get_param("full").schema["type"] == "boolean"
        assert [t.task_id for t in dag.tasks] == ["validate_table"]
        assert dag.tasks[0].on_failure_callback == [page]
        assert "pins the table's latest version when it starts" in dag.doc_md
    # Every 30 minutes, not all in the same minute.
    minutes = [fallback_cron(t).split()[0].split(",") for t in tables]
    assert all(len(m) == 2 and int(m[1]) - int(m[0]) == 30 for m in minutes)
    assert len({m[0] for m in minutes}) >= 6


def test_unknown_table_is_refused_with_the_known_ones():
    from riverdelta.quality_dags import quality_dag

    with pytest.raises(KeyError, match="unknown table 'nope'; known tables: page_views_bronze"):
        quality_dag("nope")


def test_a_quality_page_lands_under_the_tables_stream():
    from riverdelta.alerts import _stream_of

    assert _stream_of("quality_transactions_gold_user_5m") == "transactions"
    assert _stream_of("quality_page_views_silver") == "page_views"
    assert _stream_of("stream_transactions") == "transactions"


def test_announced_version_is_the_highest_of_the_tables_triggering_events():
    from types import SimpleNamespace

    from riverdelta.dag_factory import table_asset
    from riverdelta.quality_dags import _announced_version

    def event(extra):
        return SimpleNamespace(extra=extra)

    events = {
        table_asset("transactions_silver"): [
            event({"table": "transactions_silver", "version": 4}),
            event({"table": "transactions_silver", "version": 7}),
            event({}),
        ],
        table_asset("transactions_bronze"): [event({"version": 99})],
    }
    context = {"triggering_asset_events": events}
    assert _announced_version("transactions_silver", context) == 7
    assert _announced_version("transactions_quarantine", context) is None
    assert _announced_version("transactions_silver", {}) is None


def test_announcements_do_not_wait_for_a_healthy_stream():
    from riverdelta.dag_factory import stream_dags

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
