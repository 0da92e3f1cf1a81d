"""Quality DAGs generated from the stream registry: one ``quality_<table>`` per table.

Each validates its table with ``riverdelta.quality.validate_table`` when the
stream DAG announces a new Delta version of it (the table's asset event), and
on a time schedule as a fallback, so a table is validated even when an
announcement is missed (stream DAG paused, scheduler down at the time). Runs of
one table never overlap: the validated pointer only moves forward, and two
validations of the same increment would only race to publish it.

DAG files import this module: heavy libraries are imported inside the task.
"""

from __future__ import annotations

import zlib
from typing import Any

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from riverdelta.airflow_stack import SPARK_POOL
from riverdelta.alerts import page
from riverdelta.dag_factory import DAG_DEFAULTS, table_asset
from riverdelta.registry import load_registry

# Announcements normally trigger a run within seconds of a new version; the cron
# only bounds how stale the validated version can get when they do not come.
FALLBACK_EVERY_MINUTES = 30


def fallback_cron(table: str) -> str:
    """Every 30 minutes, at a minute of its own: the fallbacks of all tables do not
    start in the same minute and queue behind each other (crc32: stable across
    processes, unlike ``hash``)."""
    minute = zlib.crc32(table.encode()) % FALLBACK_EVERY_MINUTES
    minutes = range(minute, 60, FALLBACK_EVERY_MINUTES)
    return f"{','.join(map(str, minutes))} * * * *"


SUMMARY_KEYS = (
    "table",
    "from_version",
    "to_version",
    "rows_checked",
    "success",
    "validated_version",
    "full",
    "full_reason",
    "run_id",
    "data_docs",
)


def quality_schedule(table: str) -> AssetOrTimeSchedule:
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(fallback_cron(table), timezone="UTC"),
        assets=table_asset(table),
    )


def _announced_version(table: str, context: dict[str, Any]) -> int | None:
    """The highest version announced by the asset events that triggered this run."""
    events = (context.get("triggering_asset_events") or {}).get(table_asset(table), [])
    versions = [
        int(e.extra["version"]) for e in events if (e.extra or {}).get("version") is not None
    ]
    return max(versions) if versions else None


def _table_missing(table: str) -> bool:
    """True only when the table's live location is known to hold no Delta table yet."""
    from riverdelta.quality import latest_version, resolve_table

    try:
        # The live location, as validate_table resolves it: a rebuild may have moved it.
        return latest_version(resolve_table(table).path) is None
    except Exception:
        # A location delta-rs cannot open (s3a://): let the validation find out with Spark.
        return False


def _doc_md(table: str, stream: str, layer: str) -> str:
    return (
        f"### Quality gate of `{table}`\n\n"
        f"Validates `{table}` ({layer} of stream `{stream}`) with its suite (derived from "
        f"the stream's contract, refined by `expectations/{table}.json` if present; "
        f"`riverdelta suites --show {table}` prints it) and, if it passes, publishes the "
        "validated version analysts read. Increments up to the row bound are validated "
        "in the task's own process (GX pandas over delta-rs, no JVM); larger ones with "
        "Spark.\n\n"
        f"- **Triggered** by the asset event `stream_{stream}` emits for each new Delta "
        f"version of the table, with a fallback schedule (`{fallback_cron(table)}`, UTC). Runs do "
        "not overlap (`max_active_runs=1`); announcements that arrive during a run are "
        "covered by the next one.\n"
        "- **Which version**: the task pins the table's latest version when it starts, which "
        "is the announced version or a later one; `to_version` in its result says which. "
        "Only the rows added since the validated version are checked (incremental), unless a "
        "full validation is due or asked for.\n"
        "- **Params**: `full` (default false) forces a full validation of the whole table, "
        "e.g. after fixing data or the suite.\n"
        "- **Result** (XCom `return_value`): table, from/to version, rows checked, success, "
        "validated version and the Data Docs index.\n"
        "- **On failure** the validated version stays where it was, the task's error lists "
        "each failed expectation with its column and observed value, and on-call is paged. "
        "See the runbook, *Failed validation*."
    )


def _owners() -> dict[str, tuple[str, str]]:
    """Table -> (stream, layer) for every table in the registry."""
    return {
        name: (spec.name, layer)
        for spec in load_registry().streams.values()
        for layer, name in spec.table_names().items()
    }


def quality_dag(table: str) -> DAG:
    owners = _owners()
    if table not in owners:
        raise KeyError(f"unknown table {table!r}; known tables: {', '.join(sorted(owners))}")
    return _quality_dag(table, *owners[table])


def _quality_dag(table: str, stream: str, layer: str) -> DAG:
    with DAG(
        dag_id=f"quality_{table}",
        schedule=quality_schedule(table),
        **DAG_DEFAULTS,
        tags=["riverdelta", "quality", stream],
        params={
            "full": Param(
                False,
                type="boolean",
                title="Full validation",
                description=(
                    "Validate every row of the table instead of only the rows added since "
                    "the validated version."
                ),
            )
        },
        default_args={"retries": 0, "on_failure_callback": page},
        doc_md=_doc_md(table, stream, layer),
    ) as dag:

        @task(task_id="validate_table", pool=SPARK_POOL)
        def validate(**context: Any) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowSkipException

            from riverdelta import quality

            announced = _announced_version(table, context)
            if announced is None and _table_missing(table):
                # The fallback schedule reaches tables no stream has written yet: not a page.
                raise AirflowSkipException(f"{table}: no Delta table yet, nothing to validate")
            # A ValidationFailedError propagates: its message lists the failed expectations.
            result = quality.validate_table(table, full=bool(context["params"]["full"]))
            summary = {k: result.get(k) for k in SUMMARY_KEYS}
            summary["announced_version"] = announced
            return summary

        validate()
    return dag


def quality_dags() -> dict[str, DAG]:
    return {
        f"quality_{table}": _quality_dag(table, stream, layer)
        for table, (stream, layer) in _owners().items()
    }
