"""DAGs generated from the stream registry (no per-stream Python).

``stream_<name>``: every few minutes, reconcile desired and actual state, check
health against the stream's thresholds, and announce new Delta versions of the
stream's tables as asset events. Manual runs take an ``action`` from the
trigger form (deploy / stop / restart / reconcile).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from riverdelta.alerts import page
from riverdelta.registry import StreamSpec, load_registry

START = datetime(2026, 1, 1)
ACTIONS = ["reconcile", "deploy", "stop", "restart"]


def table_asset(table: str) -> Asset:
    return Asset(name=f"riverdelta.{table}", uri=f"riverdelta://tables/{table}")


def _actor(context: dict[str, Any]) -> str:
    return f"airflow:{context['dag'].dag_id}:{context['run_id']}"


def stream_dag(spec: StreamSpec) -> DAG:
    name = spec.name
    tables = spec.table_names()
    with DAG(
        dag_id=f"stream_{name}",
        schedule=timedelta(minutes=3),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        tags=["riverdelta", "stream", name],
        params={
            "action": Param(
                "reconcile",
                enum=ACTIONS,
                description="reconcile (default, what the schedule does), deploy, stop or restart the stream",
            )
        },
        default_args={"retries": 0, "on_failure_callback": page},
        doc_md=(
            f"### Stream `{name}`\n\nTopic `{spec.topic}` → tables "
            + ", ".join(f"`{t}`" for t in tables.values())
            + f".\n\nEvery 3 minutes: reconcile the desired state, check health (max lag "
            f"{spec.health['max_lag_seconds']}s, max batch age {spec.health['max_batch_age_seconds']}s), "
            "announce new table versions. Trigger with `action` to deploy, stop or restart."
        ),
    ) as dag:

        @task(task_id="apply_action")
        def apply_action(**context: Any) -> dict[str, Any]:
            from riverdelta import control

            action = context["params"]["action"]
            actor = _actor(context)
            if action == "reconcile":
                return control.reconcile(name, actor=actor)
            return getattr(control, action)(name, actor=actor)

        @task(task_id="check_health")
        def check_health(**context: Any) -> dict[str, Any]:
            from riverdelta import status

            report = status.stream_status(name)
            status.raise_on_breach(report, actor=_actor(context))
            return report

        announcers = []
        for layer, table in tables.items():

            @task(task_id=f"announce_{layer}", outlets=[table_asset(table)])
            def announce(layer: str = layer, table: str = table, **context: Any):
                from airflow.exceptions import AirflowSkipException
                from airflow.sdk import Metadata

                from riverdelta import status

                version = status.new_version(name, layer)
                if version is None:
                    raise AirflowSkipException(f"{table}: no new Delta version")
                yield Metadata(table_asset(table), {"table": table, "version": version})

            announcers.append(announce())

        applied = apply_action()
        health = check_health()
        applied >> health >> announcers
    return dag


def stream_dags() -> dict[str, DAG]:
    return {f"stream_{s.name}": stream_dag(s) for s in load_registry().streams.values()}
