"""The quality gate: validate a table's new rows with its suite, then publish the version.

A run pins the table's latest version, picks the rows to check (the increment
since the validated version, or all of them: ``riverdelta.quality.increments``)
and the engine that reads them (GX pandas over delta-rs, or Spark:
``riverdelta.quality.engine``), runs the table's GX suite (``riverdelta.quality.gx``)
and its riverdelta checks (``riverdelta.quality.checks``), records the run
(``riverdelta.quality.history``, ``riverdelta.quality.failures``) and, if it passed,
moves the table's validated pointer (``riverdelta.quality.publications``), which is
what readers get (``riverdelta.quality.read``). A failing run leaves the pointer and
raises ``ValidationFailedError``.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from riverdelta.errors import RiverdeltaError
from riverdelta.quality.checks import CheckContext, run_checks
from riverdelta.quality.engine import (
    choose_engine,
    estimated_rows,
    pandas_rows,
    readable_by_delta_rs,
    spark_rows,
)
from riverdelta.quality.failures import failing_rows, failure_message, write_failed_rows
from riverdelta.quality.gx import data_docs_index, load_suite, run_suite
from riverdelta.quality.history import append_history
from riverdelta.quality.increments import rows_to_check
from riverdelta.quality.publications import publication, publish
from riverdelta.quality.tables import TableRef, latest_version, resolve_table

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class ValidationFailedError(RiverdeltaError, RuntimeError):
    """A table broke its suite; ``result`` is the full result dict of the run."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class NeedsSparkError(RiverdeltaError, RuntimeError):
    """A validation asked not to start a JVM (``spark_allowed=False``) would need one."""


def _run_id(table: str) -> str:
    dag_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prefix = f"{dag_run}-" if dag_run else ""
    return f"{prefix}{table}-{stamp}-{uuid.uuid4().hex[:6]}"


def _choose_engine(
    ref: TableRef, version: int, files: list[str] | None, suite_doc: dict[str, Any]
) -> tuple[str, str]:
    """By the rows the run will read: the table's (or increment's), and silver's for gold = silver."""
    estimates, paths = [estimated_rows(ref.path, version, files)], [ref.path]
    if any(c["check"] == "gold_matches_silver" for c in suite_doc.get("riverdelta_checks", [])):
        silver = ref.tables["silver"]
        s_version = latest_version(silver) if readable_by_delta_rs(silver) else None
        estimates.append(estimated_rows(silver, s_version) if s_version is not None else None)
        paths.append(silver)
    return choose_engine(estimates, paths)


def _spark() -> SparkSession:
    from riverdelta.launch.spark import get_spark

    return get_spark("riverdelta-quality")


def validate_table(
    table_name: str,
    *,
    full: bool = False,
    spark: SparkSession | None = None,
    path: str | None = None,
    publish_on_pass: bool = True,
    since_version: int | None = None,
    spark_allowed: bool = True,
) -> dict[str, Any]:
    """Validate ``table_name`` at its latest version; publish it if it passes.

    ``publish_on_pass=False`` audits without publishing (a rebuild validates its fresh
    tables first and publishes them all together at hand-over). ``spark_allowed=False``
    raises ``NeedsSparkError`` before reading anything when the run would need Spark
    (the gate's first task holds no Spark pool slot).

    Returns ``{table, from_version, to_version, rows_checked, suite, success, failed,
    duration_seconds, data_docs, ...}``; ``from_version`` is the version the checked
    rows were added after (None for a full validation). Raises
    ``ValidationFailedError`` (carrying that dict) when an expectation or check fails.
    """
    started = time.monotonic()
    ref = resolve_table(table_name, path)
    suite_doc = load_suite(table_name)
    to_version, spark = _pin_version(ref, spark, spark_allowed)
    result = _new_result(ref, suite_doc, _run_id(table_name), to_version)
    is_full, reason, from_version, files = rows_to_check(ref, to_version, full, since_version)
    if not is_full and from_version == to_version:
        # Nothing committed since the last validation: nothing to check or publish.
        return _nothing_checked(result, started, from_version, "up to date")
    if files == []:
        # Compaction, checkpoint or metadata commits only: the rows are the validated
        # ones, rewritten. The pointer follows without a check (nothing to check).
        if publish_on_pass:
            _publish(result)
        return _nothing_checked(result, started, from_version, "no new rows", engine=None)
    engine, engine_why = _choose_engine(ref, to_version, files, suite_doc)
    if engine == "spark" and not spark_allowed:
        raise NeedsSparkError(f"{table_name}: {engine_why}")
    count, failed, timings = _check_rows(
        ref, suite_doc, engine, to_version, files, is_full, spark, result["run_id"]
    )
    failing = failing_rows(failed)
    if failing:
        write_failed_rows(table_name, result["run_id"], failing)
    duration = time.monotonic() - started
    result.update(
        failed_rows=len(failing), from_version=from_version, rows_checked=count, engine=engine,
        engine_reason=engine_why, success=not failed, failed=failed, full=is_full,
        full_reason=reason if is_full else "incremental", duration_seconds=round(duration, 3),
        data_docs=str(data_docs_index()), timings={k: round(v, 3) for k, v in timings.items()},
    )  # fmt: skip
    return _conclude(result, ref, duration, publish_on_pass)


def _pin_version(
    ref: TableRef, spark: SparkSession | None, spark_allowed: bool
) -> tuple[int, SparkSession | None]:
    """The table's latest version, and the Spark session that found it if delta-rs could not."""
    try:
        # delta-rs answers without a JVM: a run with nothing new never starts Spark.
        to_version = latest_version(ref.path)
    except Exception as exc:
        if not spark_allowed:
            raise NeedsSparkError(f"{ref.table}: delta-rs cannot open {ref.path}") from exc
        spark = spark or _spark()
        to_version = latest_version(ref.path, spark)
    if to_version is None:
        raise FileNotFoundError(f"{ref.table}: no Delta table at {ref.path} yet")
    return to_version, spark


def _new_result(
    ref: TableRef, suite_doc: dict[str, Any], run_id: str, to_version: int
) -> dict[str, Any]:
    pub = publication(ref.table)
    return {
        "table": ref.table,
        "path": ref.path,
        "run_id": run_id,
        "suite": suite_doc["name"],
        "to_version": to_version,
        "validated_version": pub["validated_version"] if pub and pub["path"] == ref.path else None,
    }


def _nothing_checked(
    result: dict[str, Any], started: float, from_version: int | None, reason: str, **extra: Any
) -> dict[str, Any]:
    result.update(
        from_version=from_version, rows_checked=0, success=True, failed=[], full=False,
        full_reason=reason, duration_seconds=round(time.monotonic() - started, 3),
        data_docs=str(data_docs_index()), timings={}, **extra,
    )  # fmt: skip
    return result


def _publish(result: dict[str, Any]) -> None:
    publish(result["table"], result["to_version"], path=result["path"], by=result["run_id"])
    result["validated_version"] = result["to_version"]


def _check_rows(
    ref: TableRef,
    suite_doc: dict[str, Any],
    engine: str,
    to_version: int,
    files: list[str] | None,
    full: bool,
    spark: SparkSession | None,
    run_id: str,
) -> tuple[int, list[dict[str, Any]], dict[str, float]]:
    """(rows checked, failures, seconds per phase): the rows read, GX's suite, our checks."""
    timings: dict[str, float] = {}
    t = time.monotonic()
    if engine == "pandas":
        rows = pandas_rows(ref.path, to_version, files)
    else:
        spark = spark or _spark()
        rows = spark_rows(spark, ref.path, to_version, files)
    try:
        timings["read"] = time.monotonic() - t
        t = time.monotonic()
        failed = run_suite(ref, suite_doc, rows, run_id)
        timings["gx"] = time.monotonic() - t
        t = time.monotonic()
        failed += run_checks(CheckContext(ref, rows, to_version, full, spark), suite_doc)
        timings["checks"] = time.monotonic() - t
    finally:
        rows.release()
    return rows.count, failed, timings


def _conclude(
    result: dict[str, Any], ref: TableRef, duration: float, publish_on_pass: bool
) -> dict[str, Any]:
    """Record the run; publish it if it passed, else raise ``ValidationFailedError``."""
    from riverdelta.ops import state as ops

    append_history(
        {
            "table": result["table"],
            "from_version": result["from_version"],
            "to_version": result["to_version"],
            "suite": result["suite"],
            "success": result["success"],
            "failed": json.dumps(result["failed"], default=str),
            "rows_checked": result["rows_checked"],
            "duration": duration,
            "full": result["full"],
            "full_reason": result["full_reason"],
            "validated_at": datetime.now(UTC),
            "run_id": result["run_id"],
        }
    )
    keys = ("table", "from_version", "to_version", "rows_checked", "run_id", "full", "engine")
    detail = {k: result[k] for k in keys}
    if result["success"]:
        if publish_on_pass:
            _publish(result)
        ops.record(ref.spec.name, "validation", outcome="ok", **detail)
        return result
    ops.record(
        ref.spec.name,
        "validation",
        outcome="fail",
        failed=[f"{f['expectation']}({f['column']})" for f in result["failed"]],
        **detail,
    )
    raise ValidationFailedError(failure_message(result), result)


def validate_stream(
    stream: str,
    *,
    tables: list[str] | None = None,
    full: bool = False,
    spark_allowed: bool = True,
) -> dict[str, Any]:
    """Validate a stream's tables (all, or ``tables``) in one process: the quality gate.

    Each table keeps its own pinned version, publication, history and Data Docs, and
    a failing table never holds back another's publication. One process pays GX's
    import (about 7 s here) once for all of them, where one task per table paid it
    for each. Returns ``{stream, results, failed, needs_spark, missing}``: ``failed``
    maps a table to its failure message; ``needs_spark`` lists the tables left for a
    Spark run when ``spark_allowed`` is False; ``missing`` those with no table yet.
    """
    from riverdelta.config.registry import load_registry

    layers = load_registry().get(stream).table_names()
    # What analysts read first: silver and gold publish before bronze and quarantine.
    rank = {"silver": 0, "bronze": 2, "quarantine": 3}
    names = [layers[k] for k in sorted(layers, key=lambda layer: rank.get(layer, 1))]
    unknown = sorted(set(tables or []) - set(names))
    if unknown:
        raise KeyError(
            f"{', '.join(unknown)}: not tables of stream {stream!r} ({', '.join(names)})"
        )
    out: dict[str, Any] = {
        "stream": stream, "results": {}, "failed": {}, "needs_spark": [], "missing": []
    }  # fmt: skip
    for table in [n for n in names if not tables or n in tables]:
        try:
            out["results"][table] = validate_table(table, full=full, spark_allowed=spark_allowed)
        except NeedsSparkError:
            out["needs_spark"].append(table)
        except FileNotFoundError:
            out["missing"].append(table)
        except ValidationFailedError as exc:
            out["results"][table] = exc.result
            out["failed"][table] = str(exc)
    return out


__all__ = ["NeedsSparkError", "ValidationFailedError", "validate_stream", "validate_table"]
