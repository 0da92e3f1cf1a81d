"""The quality gate, generated from the stream registry: one ``quality_<stream>`` per stream.

A gate run validates the stream's tables in one process (each table at its own
pinned version, with its own publication, history and Data Docs) when any of them
gets a new Delta version, and on a time schedule as a fallback:

- ``validate_increments`` validates every table whose run needs no JVM (GX's pandas
  engine over delta-rs, up to the row bound) and holds no Spark pool slot;
- ``validate_with_spark`` takes the tables whose run needs Spark (large increments,
  full validations of large tables, stores delta-rs cannot open) and holds one;
- ``report_verdict`` fails the run, and pages once, when a table or a task failed.

What starts a run: the ``versions`` asset of the stream, whose watcher
(``riverdelta.quality.trigger``, in Airflow's triggerer) polls the tables' logs every
couple of seconds; the stream DAG's announcements of each table's asset (every 3
minutes, a second path); and the fallback cron. Runs of one stream never overlap:
the validated pointers only move forward, and two validations of the same
increment would only race to publish it.

DAG files import this module: heavy libraries are imported inside the tasks.
"""

from __future__ import annotations

import zlib
from typing import Any

from airflow.sdk import (
    DAG,
    Asset,
    AssetAny,
    AssetOrTimeSchedule,
    AssetWatcher,
    CronTriggerTimetable,
    Param,
    task,
)

from riverdelta.airflow import dag_ids
from riverdelta.airflow.env import SPARK_POOL
from riverdelta.airflow.stream_dags import DAG_DEFAULTS, table_asset
from riverdelta.config.registry import StreamSpec, load_registry
from riverdelta.ops.alerts import page
from riverdelta.quality.trigger import NewTableVersionsTrigger, default_poll_seconds

# The watcher normally starts a run within seconds of a new version; the cron only
# bounds how stale the validated versions can get when it does not (triggerer down).
FALLBACK_EVERY_MINUTES = 30


def fallback_cron(name: str) -> str:
    """Every 30 minutes, at a minute of its own: the fallbacks of all streams do not
    start in the same minute and queue behind each other (crc32: stable across
    processes, unlike ``hash``)."""
    minute = zlib.crc32(name.encode()) % FALLBACK_EVERY_MINUTES
    minutes = range(minute, 60, FALLBACK_EVERY_MINUTES)
    return f"{','.join(map(str, minutes))} * * * *"


SUMMARY_KEYS = (
    "from_version",
    "to_version",
    "rows_checked",
    "success",
    "validated_version",
    "full",
    "full_reason",
    "engine",
    "run_id",
    "data_docs",
)


def versions_asset(stream: str) -> Asset:
    """The stream's tables as one watched asset: an event whenever any of them moves."""
    return Asset(
        name=f"riverdelta.{stream}.versions",
        uri=f"riverdelta://streams/{stream}/versions",
        watchers=[
            AssetWatcher(
                name=f"watch_{stream}_versions",
                trigger=NewTableVersionsTrigger(stream=stream, poll_seconds=default_poll_seconds()),
            )
        ],
    )


def quality_schedule(spec: StreamSpec) -> AssetOrTimeSchedule:
    announced = [table_asset(t) for t in spec.table_names().values()]
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(fallback_cron(spec.name), timezone="UTC"),
        assets=AssetAny(versions_asset(spec.name), *announced),
    )


def triggering_versions(context: dict[str, Any]) -> dict[str, int]:
    """Table -> the highest version the asset events behind this run name."""
    found: dict[str, int] = {}
    for events in (context.get("triggering_asset_events") or {}).values():
        for e in events:
            extra = e.extra or {}
            # A watcher's event carries its payload; an announcement names one table.
            named = (extra.get("payload") or {}).get("versions") or {}
            if extra.get("table") is not None and extra.get("version") is not None:
                named = {extra["table"]: extra["version"]}
            for table, version in named.items():
                found[table] = max(int(version), found.get(table, -1))
    return found


def _doc_md(spec: StreamSpec) -> str:
    tables = ", ".join(f"`{t}`" for t in spec.table_names().values())
    return (
        f"### Quality gate of stream `{spec.name}`\n\n"
        f"Validates {tables}, each with its suite (derived from the stream's contract, "
        "refined by `expectations/<table>.json` if present; `riverdelta suites --show "
        "TABLE` prints it) and publishes each validated version analysts read. Each "
        "table pins its latest version when its turn comes; only the rows added since its "
        "validated version are checked (incremental), unless a full validation is due or "
        "asked for.\n\n"
        "- **Triggered** within seconds of a new version by the watcher of the "
        f"`riverdelta.{spec.name}.versions` asset (Airflow's triggerer polls the tables' "
        "logs), by the stream DAG's announcements, and by a fallback schedule "
        f"(`{fallback_cron(spec.name)}`, UTC). Runs do not overlap; versions committed "
        "during a run are covered by the next one.\n"
        "- **`validate_increments`** checks every table that needs no JVM (GX pandas over "
        "delta-rs), **`validate_with_spark`** the rest (large increments, full runs of "
        "large tables) with one Spark pool slot; it is skipped when there are none. "
        "**`report_verdict`** fails the run (and pages) if any table failed.\n"
        "- **Params**: `tables` (default: all of the stream's) and `full` (default false: "
        "validate every row, e.g. after fixing data or a suite).\n"
        "- **Result** (`report_verdict`'s XCom): per table, from/to version, rows checked, "
        "success, validated version, engine, Data Docs index.\n"
        "- **On failure** the failing table's validated version stays where it was (the "
        "others still publish), the task's error lists each failed expectation with its "
        "column and observed value and the failed-rows command, and on-call is paged. See "
        "the runbook, *Failed validation*."
    )


def _summary(outcome: dict[str, Any]) -> dict[str, Any]:
    return {t: {k: r.get(k) for k in SUMMARY_KEYS} for t, r in outcome["results"].items()}


def verdict(increments: dict[str, Any] | None, with_spark: dict[str, Any] | None) -> dict[str, Any]:
    """Both validation tasks' outcomes as one result; raises if a table failed or a task
    did not finish (the run's leaf: its failure fails the run and pages, once)."""
    from riverdelta.quality.gate import ValidationFailedError

    if increments is None:
        raise RuntimeError("validate_increments did not finish: see its task log")
    if increments["needs_spark"] and with_spark is None:
        raise RuntimeError(
            f"validate_with_spark did not finish for {', '.join(increments['needs_spark'])}: "
            "see its task log"
        )
    results = {**increments["results"], **((with_spark or {}).get("results") or {})}
    failed = {**increments["failed"], **((with_spark or {}).get("failed") or {})}
    if failed:
        message = "\n\n".join(failed[t] for t in sorted(failed))
        raise ValidationFailedError(message, results)
    keep = ("needs_spark", "missing", "triggered_by")
    return {"results": results, **{k: increments[k] for k in keep}}


def quality_dag(stream: str) -> DAG:
    return _quality_dag(load_registry().get(stream))


def _params(names: list[str]) -> dict[str, Param]:
    """What a manual run may ask: a subset of the stream's tables, a full validation."""
    return {
        "tables": Param(
            [],
            type="array",
            items={"type": "string", "enum": names},
            title="Tables",
            description="Validate only these tables of the stream (empty: all of them).",
        ),
        "full": Param(
            False,
            type="boolean",
            title="Full validation",
            description=(
                "Validate every row of the tables instead of only the rows added since "
                "their validated versions."
            ),
        ),
    }


def _quality_dag(spec: StreamSpec) -> DAG:
    stream = spec.name
    with DAG(
        dag_id=dag_ids.quality(stream),
        schedule=quality_schedule(spec),
        **DAG_DEFAULTS,
        tags=["riverdelta", "quality", stream],
        params=_params(list(spec.table_names().values())),
        # Only report_verdict pages: it fails whenever a table or a task did.
        default_args={"retries": 0},
        doc_md=_doc_md(spec),
    ) as dag:

        @task(task_id="validate_increments")
        def validate_increments(**context: Any) -> dict[str, Any]:
            from riverdelta.quality import gate as quality

            params = context["params"]
            outcome = quality.validate_stream(
                stream,
                tables=list(params["tables"] or []),
                full=bool(params["full"]),
                spark_allowed=False,
            )
            # No raise on a failed table: report_verdict does, after the Spark task ran.
            return {
                "results": _summary(outcome),
                "failed": outcome["failed"],
                "needs_spark": outcome["needs_spark"],
                "missing": outcome["missing"],
                "triggered_by": triggering_versions(context),
            }

        @task(task_id="validate_with_spark", pool=SPARK_POOL)
        def validate_with_spark(increments: dict[str, Any], **context: Any) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowSkipException

            from riverdelta.quality import gate as quality

            if not increments["needs_spark"]:
                raise AirflowSkipException("every table was validated without a JVM")
            outcome = quality.validate_stream(
                stream, tables=increments["needs_spark"], full=bool(context["params"]["full"])
            )
            return {"results": _summary(outcome), "failed": outcome["failed"]}

        @task(task_id="report_verdict", trigger_rule="all_done", on_failure_callback=page)
        def report_verdict(**context: Any) -> dict[str, Any]:
            ti = context["ti"]
            return verdict(
                ti.xcom_pull(task_ids="validate_increments"),
                ti.xcom_pull(task_ids="validate_with_spark"),
            )

        increments = validate_increments()
        increments >> validate_with_spark(increments) >> report_verdict()
    return dag


def quality_dags() -> dict[str, DAG]:
    return {dag_ids.quality(s.name): _quality_dag(s) for s in load_registry().streams.values()}
