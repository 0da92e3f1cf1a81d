"""DAGs generated from the stream registry (no per-stream Python).

``stream_<name>``: every few minutes, reconcile desired and actual state, check
health against the stream's thresholds, and announce new Delta versions of the
stream's tables as asset events. Manual runs take an ``action`` from the
trigger form (deploy / stop / restart / reconcile).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from riverdelta.airflow import dag_ids
from riverdelta.airflow.env import SPARK_POOL, kafka_connection
from riverdelta.config.registry import StreamSpec, load_registry
from riverdelta.ops.alerts import page

START = datetime(2026, 1, 1)
# Every generated DAG: no backfilled schedule history, one run at a time.
DAG_DEFAULTS: dict[str, Any] = {"start_date": START, "catchup": False, "max_active_runs": 1}
ACTIONS = ["reconcile", "deploy", "stop", "restart"]


def table_asset(table: str) -> Asset:
    return Asset(name=f"riverdelta.{table}", uri=f"riverdelta://tables/{table}")


def _actor(context: dict[str, Any]) -> str:
    return f"airflow:{context['dag'].dag_id}:{context['run_id']}"


def _stream_doc(spec: StreamSpec, tables: dict[str, str]) -> str:
    return (
        f"### Stream `{spec.name}`\n\nTopics `{spec.source}` → tables "
        + ", ".join(f"`{t}`" for t in tables.values())
        + f".\n\nEvery 3 minutes: reconcile the desired state, check health (max lag "
        f"{spec.health['max_lag_seconds']}s, max batch age {spec.health['max_batch_age_seconds']}s), "
        "announce new table versions (also when the health check fails, so that "
        "validation does not wait for its fallback). Trigger with `action` to deploy, "
        "stop or restart."
    )


def _announcers(name: str, tables: dict[str, str]) -> list[Any]:
    """One task per table: its new Delta version, if any, as an asset event."""
    announcers = []
    for layer, table in tables.items():
        # all_done: a failed reconcile or health check must not hold back validation
        # of what the stream did write (the run still fails through check_health).
        @task(task_id=f"announce_{layer}", outlets=[table_asset(table)], trigger_rule="all_done")
        def announce(layer: str = layer, table: str = table, **context: Any):
            from airflow.sdk import Metadata
            from airflow.sdk.exceptions import AirflowSkipException

            from riverdelta.ops import status

            version = status.new_version(name, layer)
            if version is None:
                raise AirflowSkipException(f"{table}: no new Delta version")
            yield Metadata(table_asset(table), {"table": table, "version": version})

        announcers.append(announce())
    return announcers


def _stream_tasks(name: str, tables: dict[str, str]) -> None:
    """apply_action, then check_health and the announcers, in the DAG being defined."""

    @task(task_id="apply_action")
    def apply_action(**context: Any) -> dict[str, Any]:
        from riverdelta.ops import control

        action = context["params"]["action"]
        actor = _actor(context)
        with kafka_connection():
            if action == "reconcile":
                return control.reconcile(name, actor=actor)
            return getattr(control, action)(name, actor=actor)

    @task(task_id="check_health")
    def check_health(**context: Any) -> dict[str, Any]:
        from riverdelta.ops import status

        with kafka_connection():
            report = status.stream_status(name)
        status.raise_on_breach(report, actor=_actor(context))
        return report

    announcers = _announcers(name, tables)
    applied = apply_action()
    applied >> check_health()
    applied >> announcers


def stream_dag(spec: StreamSpec) -> DAG:
    name = spec.name
    tables = spec.table_names()
    with DAG(
        dag_id=dag_ids.stream(name),
        schedule=timedelta(minutes=3),
        **DAG_DEFAULTS,
        tags=["riverdelta", "stream", name],
        params={
            "action": Param(
                "reconcile",
                enum=ACTIONS,
                description="reconcile (default, what the schedule does), deploy, stop or restart the stream",
            )
        },
        default_args={"retries": 0, "on_failure_callback": page},
        doc_md=_stream_doc(spec, tables),
    ) as dag:
        _stream_tasks(name, tables)
    return dag


def stream_dags() -> dict[str, DAG]:
    return {dag_ids.stream(s.name): stream_dag(s) for s in load_registry().streams.values()}


# --------------------------------------------------------------------------- backfills


@contextmanager
def _recording_failure(plan: dict[str, Any], step: str) -> Iterator[None]:
    """A failing step ends the backfill: outcome in the ops history, lock released."""
    from riverdelta.backfill import replay as backfill

    try:
        yield
    except Exception as exc:
        backfill.finish(plan, "failed", step=step, error=str(exc)[:2000])
        raise


def _skip(why: str) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    raise AirflowSkipException(why)


def _backfill_params() -> dict[str, Param]:
    """The trigger form of a backfill run."""
    return {
        "mode": Param(
            "range",
            enum=["range", "rebuild"],
            description="range: re-ingest an offset/time range into the live tables, skipping "
            "records already there. rebuild: replay the whole topic into fresh tables, "
            "validate, publish and move the live stream onto them.",
        ),
        "from": Param(
            "earliest",
            type="string",
            description='earliest | ISO timestamp with zone (2026-11-21T10:00:00Z) | offsets JSON {"0": 42}',
        ),
        "to": Param(
            "latest",
            type="string",
            description="latest | ISO timestamp | offsets JSON (exclusive); range mode clips it "
            "to the live stream's committed offsets",
        ),
        "max_offsets_per_trigger": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="rate limit: records per micro-batch of the replay (empty: no limit)",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="only report partitions, offset ranges, record count and time span",
        ),
    }


def _backfill_doc(spec: StreamSpec) -> str:
    name = spec.name
    return (
        f"### Backfill `{name}`\n\nTrigger with the form. Every run resolves the request into "
        "offsets per partition first (and refuses, before any write, what cannot be honoured: "
        "offsets lost to retention, to before from, unknown partitions, bad JSON, a backfill "
        f"already running), then replays `{spec.source}` with `Trigger.AvailableNow` "
        "and its own checkpoint through the live stream's transforms. `range` writes into "
        "the live tables beside the running stream; `rebuild` builds fresh tables, validates "
        "them, moves the live stream onto them (its pause is reported) and publishes them "
        "together. Outcome, range and counts land in the ops history."
    )


def _replay_tasks() -> tuple[Any, Any]:
    """replay_range and audit_tables (the latter only does work for a rebuild)."""

    @task(task_id="replay_range", pool=SPARK_POOL)
    def replay_range(plan: dict[str, Any]) -> dict[str, Any]:
        from riverdelta.backfill import replay as backfill

        if plan["dry_run"]:
            _skip("dry run: nothing replayed")
        with _recording_failure(plan, "replay"), kafka_connection():
            result = backfill.replay(plan)
        if plan["mode"] == "range":
            backfill.finish(plan, "ok", replay=result)
        return result

    @task(task_id="audit_tables", trigger_rule="none_failed", pool=SPARK_POOL)
    def audit_tables(plan: dict[str, Any]) -> dict[str, int]:
        from riverdelta.backfill import replay as backfill

        if plan["dry_run"] or plan["mode"] != "rebuild":
            _skip("only a rebuild audits fresh tables")
        with _recording_failure(plan, "audit"), kafka_connection():
            return backfill.audit(plan)

    return replay_range, audit_tables


def _hand_over_task() -> Any:
    """hand_over: a rebuild's fresh tables take the live stream's place."""

    @task(task_id="hand_over", trigger_rule="none_failed", pool=SPARK_POOL)
    def hand_over(plan: dict[str, Any], **context: Any) -> dict[str, Any]:
        from riverdelta.backfill import replay as backfill

        if plan["dry_run"] or plan["mode"] != "rebuild":
            _skip("only a rebuild hands over")
        ti = context["ti"]
        audited = ti.xcom_pull(task_ids="audit_tables") or {}
        with _recording_failure(plan, "hand_over"), kafka_connection():
            result = backfill.hand_over(plan, audited)
        backfill.finish(plan, "ok", replay=ti.xcom_pull(task_ids="replay_range"), hand_over=result)
        return result

    return hand_over


def _backfill_tasks(name: str) -> None:
    """resolve_range, then replay_range >> audit_tables >> hand_over, in the DAG being defined."""

    @task(task_id="resolve_range")
    def resolve_range(**context: Any) -> dict[str, Any]:
        from riverdelta.backfill import replay as backfill

        p = context["params"]
        with kafka_connection():
            plan = backfill.plan(
                name,
                mode=p["mode"],
                from_=p["from"],
                to=p["to"],
                max_offsets_per_trigger=p["max_offsets_per_trigger"],
                dry_run=p["dry_run"],
                run_id=context["run_id"],
                actor=_actor(context),
            )
        print(backfill.describe(plan))
        return plan

    replay_range, audit_tables = _replay_tasks()
    hand_over = _hand_over_task()
    planned = resolve_range()
    replayed = replay_range(planned)
    audited = audit_tables(planned)
    handed = hand_over(planned)
    replayed >> audited >> handed


def backfill_dag(spec: StreamSpec) -> DAG:
    name = spec.name
    with DAG(
        dag_id=dag_ids.backfill(name),
        schedule=None,
        **DAG_DEFAULTS,
        tags=["riverdelta", "backfill", name],
        params=_backfill_params(),
        default_args={"retries": 0, "on_failure_callback": page},
        doc_md=_backfill_doc(spec),
    ) as dag:
        _backfill_tasks(name)
    return dag


def backfill_dags() -> dict[str, DAG]:
    return {dag_ids.backfill(s.name): backfill_dag(s) for s in load_registry().streams.values()}
