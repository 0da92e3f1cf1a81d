"""Maintenance DAGs generated from the stream registry: ``maintain_<stream>`` per stream
and ``maintain_ops`` for the shared ``_ops`` tables (see ``riverdelta.ops.maintenance``).

DAG files import this module: heavy libraries are imported inside the tasks.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, task

from riverdelta.airflow import dag_ids
from riverdelta.airflow.stream_dags import DAG_DEFAULTS
from riverdelta.config.registry import StreamSpec, load_registry
from riverdelta.ops.alerts import page

OPS_SCHEDULE = "50 3 * * *"


def _raise_on_errors(reports: list[dict[str, Any]]) -> None:
    errors = [f"{r['table']}: {r['error']}" for r in reports if r["error"]]
    if errors:
        raise RuntimeError("maintenance failed for " + "; ".join(errors))


def maintain_dag(spec: StreamSpec) -> DAG:
    m = spec.maintenance
    with DAG(
        dag_id=dag_ids.maintain(spec.name),
        schedule=CronTriggerTimetable(m.schedule, timezone="UTC"),
        **DAG_DEFAULTS,
        tags=["riverdelta", "maintenance", spec.name],
        default_args={"retries": 0, "on_failure_callback": page},
        doc_md=(
            f"### Maintenance of stream `{spec.name}`\n\n"
            f"`{m.schedule}` (UTC; registry `maintenance.schedule`). Compacts bronze, silver "
            "and quarantine (Z-order: "
            + (", ".join(f"{k} on {', '.join(v)}" for k, v in m.zorder.items()) or "none")
            + "), checkpoints every table's log and vacuums files removed more than "
            f"{m.retention} ago, never one the validated version or an unvalidated "
            "increment still needs. Runs beside the live stream; while a backfill of the "
            "stream runs it skips vacuum and the quarantine's compaction. Gold is not "
            "compacted (the refresher rewrites its windows). No JVM.\n\n"
            "Then lists the stream's old table sets (left by rebuilds; `list_old_table_sets` "
            "is the dry run: what would go and why the rest stays) and removes those retired "
            f"more than {m.retention} ago that neither the stream nor a publication points "
            "at (`remove_old_table_sets`)."
        ),
    ) as dag:

        @task(task_id="maintain_tables")
        def maintain_tables() -> dict[str, Any]:
            from riverdelta.ops import maintenance
            from riverdelta.ops import state as ops

            result = maintenance.maintain_stream(spec.name)
            reports = [asdict(r) for r in result["tables"]]
            ops.record(
                spec.name,
                "maintenance",
                outcome="fail" if any(r["error"] for r in reports) else "ok",
                backfill_running=result["backfill_running"],
                tables=reports,
            )
            _raise_on_errors(reports)
            return {**result, "tables": reports}

        @task(task_id="list_old_table_sets")
        def list_old_table_sets() -> list[dict[str, Any]]:
            from riverdelta.ops import maintenance

            return maintenance.remove_old_table_sets(spec.name, dry_run=True)

        @task(task_id="remove_old_table_sets")
        def remove_old_table_sets(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
            from airflow.sdk.exceptions import AirflowSkipException

            from riverdelta.backfill.replay import running_backfill
            from riverdelta.ops import maintenance
            from riverdelta.ops import state as ops

            if not any(s["removable"] for s in listed):
                raise AirflowSkipException("no old table set is due for removal")
            if running_backfill(spec.name):
                raise AirflowSkipException("a backfill of the stream is running")
            # Listed again inside: what became live or published since is kept.
            done = maintenance.remove_old_table_sets(spec.name, dry_run=False)
            removed = [s["root"] for s in done if s.get("removed")]
            ops.record(spec.name, "table_sets_removed", roots=removed)
            return done

        maintain_tables() >> remove_old_table_sets(list_old_table_sets())
    return dag


def maintain_ops_dag() -> DAG:
    with DAG(
        dag_id="maintain_ops",
        schedule=CronTriggerTimetable(OPS_SCHEDULE, timezone="UTC"),
        **DAG_DEFAULTS,
        tags=["riverdelta", "maintenance"],
        default_args={"retries": 0, "on_failure_callback": page},
        doc_md=(
            "### Maintenance of the `_ops` tables\n\nCompacts, checkpoints and vacuums the "
            "ops history, validation history, ingest batches and failed rows (delta-rs "
            "blind appends from many processes: a compaction never conflicts with them)."
        ),
    ) as dag:

        @task(task_id="maintain_tables")
        def maintain_tables() -> list[dict[str, Any]]:
            from riverdelta.ops import maintenance

            reports = [asdict(r) for r in maintenance.maintain_ops()]
            _raise_on_errors(reports)
            return reports

        maintain_tables()
    return dag


def maintenance_dags() -> dict[str, DAG]:
    dags = {dag_ids.maintain(s.name): maintain_dag(s) for s in load_registry().streams.values()}
    dags["maintain_ops"] = maintain_ops_dag()
    return dags
