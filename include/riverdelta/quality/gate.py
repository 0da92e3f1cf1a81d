"""The quality gate: Great Expectations suites over Delta tables, and the validated pointer.

Suites
    Each table's suite is derived from its stream's contract and refined by an
    optional ``expectations/<table>.json`` (see ``riverdelta.quality.suites``; ``riverdelta
    suites --show TABLE`` prints the result). A suite document is GX 1.x (``name``,
    ``expectations`` of ``{type, kwargs, meta}``) with two additions GX does not know:

    - Time placeholders, because a static file cannot hold "now". A kwarg value
      ``{"$now_plus": "1 day"}`` / ``{"$now_minus": "30 days"}`` / ``{"$timestamp":
      "2000-01-01T00:00:00Z"}`` becomes a GX ``{"$PARAMETER": ...}`` in the suite and
      is resolved to a UTC datetime when the validation runs, so the stored suite and
      its Data Docs page stay the same from run to run.
    - ``"riverdelta_checks": [{"check": "reconcile_bronze"}, {"check":
      "gold_matches_silver", "gold": "user_5m"}]``: cross-table checks GX cannot
      express on one table; they report failures in the same format as expectations.

Incremental validation
    Each table has a validated version (the pointer, below). A run pins the table's
    latest version ``to_version`` and, for the append-only layers (bronze, silver,
    quarantine), validates only the rows in Parquet files added after the validated
    version: the set difference of the two snapshots' file lists (delta-rs, metadata
    only), read as plain Parquet under the pinned version's schema: by GX's pandas
    engine through delta-rs up to the row bound of ``riverdelta.quality.engine``
    (no JVM), by Spark above it. That is exact for blind appends and reads nothing
    else. Delta's Change Data Feed would
    need ``delta.enableChangeDataFeed`` on the tables, and turning it on is a
    metadata commit that makes the live stream's concurrent append fail, so it is
    not used. The run falls back to a full validation (and says why in
    ``full_reason``) when anything in the range is not a blind append (MERGE,
    DELETE, OPTIMIZE, RESTORE, a file removed), when the table uses column mapping
    or partitions, or when the old snapshot's log is gone.

Full validation policy
    Full when asked (``full=True``), on the first validation of a table (or of a new
    path), always for gold (its touched windows are rewritten in place), and periodically: when the last
    full validation of the table is more than ``RIVERDELTA_FULL_EVERY_VERSIONS``
    versions (default 500) or ``RIVERDELTA_FULL_EVERY_HOURS`` hours (default 24)
    behind. Uniqueness expectations see only the rows they are given, so duplicates
    across increments are caught by these periodic full runs.

Validated pointer
    ``_ops/publications/<table>.json``: ``{table, path, validated_version,
    published_at, by}``, replaced atomically (write + rename) under a lock. One small
    document per table, like ``_ops/state``: readers need neither a JVM nor Delta to
    find it, and two tables' validations never contend. A passing run moves it
    forward; a failing run leaves it and raises ``ValidationFailedError``. Because the
    document carries the path, validating and publishing a rebuilt table set (``path=``)
    switches readers to it.

History and Data Docs
    Every run appends a row to the Delta table ``_ops/validation_history`` and an
    event to the ops history, and lands in the file-backed GX context under
    ``<home>/gx`` whose Data Docs site is ``<home>/gx/data_docs``. GX keeps its
    datasource in one YAML file, so a process-wide file lock serialises the GX part
    of runs on one machine.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from riverdelta.config.settings import settings
from riverdelta.errors import RiverdeltaError
from riverdelta.quality.engine import (
    Rows,
    arrow_table,
    choose_engine,
    estimated_rows,
    pandas_rows,
    readable_by_delta_rs,
    spark_rows,
)
from riverdelta.storage import files
from riverdelta.storage import roots as storage
from riverdelta.storage.lake import TableSet, control_dir, ops_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from riverdelta.config.registry import StreamSpec

log = logging.getLogger("riverdelta.quality.gate")

HISTORY_TABLE = "validation_history"
PUBLICATIONS = "publications"
INGEST_BATCHES = "ingest_batches"
DATA_DOCS_SITE = "riverdelta"
APPEND_ONLY_LAYERS = ("bronze", "silver", "quarantine")

BRONZE_COLUMNS = (
    "key", "value", "topic", "partition", "offset", "kafka_timestamp", "batch_id", "ingested_at",
    "app_id",
)  # fmt: skip
QUARANTINE_COLUMNS = (
    "key", "value", "topic", "partition", "offset", "kafka_timestamp",
    "reason", "detail", "resolved", "resolved_at", "resolved_by", "batch_id",
)  # fmt: skip
SILVER_EXTRA_COLUMNS = (
    "_extra", "topic", "partition", "offset", "kafka_timestamp", "_app_id", "_batch_id",
)  # fmt: skip

# Commits that only append data (or touch metadata only): an increment stays exact across them.
_APPEND_OPERATIONS = frozenset(
    {"WRITE", "STREAMING UPDATE", "CREATE TABLE", "CREATE OR REPLACE TABLE"}
)
_METADATA_OPERATIONS = frozenset(
    {"SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "ADD COLUMNS", "CHANGE COLUMN", "UPGRADE PROTOCOL"}
)
_PLACEHOLDERS = ("$now_plus", "$now_minus", "$timestamp")


class ValidationFailedError(RiverdeltaError, RuntimeError):
    """A table broke its suite; ``result`` is the full result dict of the run."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class NeedsSparkError(RiverdeltaError, RuntimeError):
    """A validation asked not to start a JVM (``spark_allowed=False``) would need one."""


class NotValidatedError(RiverdeltaError, LookupError):
    """A table has no validated version yet."""


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class TableRef:
    table: str
    spec: StreamSpec
    layer: str  # bronze | silver | quarantine | gold_<name>
    path: str

    @property
    def tables(self) -> TableSet:
        """The sibling tables: those next to ``path`` (a rebuilt set stays self-consistent)."""
        root = self.path.rstrip("/").rsplit("/", 1)[0]
        return TableSet.for_stream(self.spec, root)


def resolve_table(table: str, path: str | None = None) -> TableRef:
    from riverdelta.config.registry import load_registry

    registry = load_registry()
    for spec in registry.streams.values():
        for layer, name in spec.table_names().items():
            if name == table:
                return TableRef(table, spec, layer, path or TableSet.for_stream(spec)[layer])
    known = sorted(n for s in registry.streams.values() for n in s.table_names().values())
    raise KeyError(f"unknown table {table!r}; known tables: {', '.join(known)}")


def all_tables() -> list[str]:
    from riverdelta.config.registry import load_registry

    return [n for s in load_registry().streams.values() for n in s.table_names().values()]


def expected_columns(table: str) -> set[str]:
    """The columns the ingest writes to ``table`` (derived from the registry)."""
    ref = resolve_table(table)
    if ref.layer == "bronze":
        return set(BRONZE_COLUMNS)
    if ref.layer == "quarantine":
        return set(QUARANTINE_COLUMNS)
    if ref.layer == "silver":
        return {*ref.spec.field_names, *SILVER_EXTRA_COLUMNS}
    gold = _gold_spec(ref.spec, ref.layer.removeprefix("gold_"))
    return {
        "window_start",
        "window_end",
        *gold.group_by,
        *(a.name for a in gold.aggregates),
        "updated_at",
    }


def _gold_spec(spec: StreamSpec, name: str):
    for gold in spec.gold:
        if gold.name == name:
            return gold
    raise KeyError(f"stream {spec.name!r} has no gold {name!r}")


# --------------------------------------------------------------------------- suites


def load_suite(table: str) -> dict[str, Any]:
    """The effective suite of ``table``: derived from the contract, refined by its file."""
    from riverdelta.quality.suites import effective_suite, suite_file

    doc = effective_suite(table)
    for check in doc.get("riverdelta_checks", []):
        if check.get("check") not in CHECKS:
            raise ValueError(
                f"{suite_file(table)}: unknown riverdelta check {check.get('check')!r}; "
                f"known: {sorted(CHECKS)}"
            )
    return doc


def _parameter_name(placeholder: str, value: str) -> str:
    return placeholder.lstrip("$") + "_" + re.sub(r"[^A-Za-z0-9]+", "_", value).strip("_")


def _walk_placeholders(obj: Any, found: dict[str, tuple[str, str]]) -> Any:
    """Replace placeholders by GX ``$PARAMETER`` references, collecting name -> (kind, value)."""
    if isinstance(obj, dict):
        keys = [k for k in obj if k in _PLACEHOLDERS]
        if keys and len(obj) == 1:
            kind, value = keys[0], obj[keys[0]]
            name = _parameter_name(kind, str(value))
            found[name] = (kind, str(value))
            return {"$PARAMETER": name}
        return {k: _walk_placeholders(v, found) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk_placeholders(v, found) for v in obj]
    return obj


def _resolve_placeholder(kind: str, value: str, now: datetime) -> datetime:
    from riverdelta.config.registry import parse_duration

    if kind == "$now_plus":
        return now + parse_duration(value)
    if kind == "$now_minus":
        return now - parse_duration(value)
    ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def suite_parameters(doc: dict[str, Any], now: datetime | None = None) -> dict[str, datetime]:
    """Values of the suite's time placeholders at ``now`` (default: the current time)."""
    found: dict[str, tuple[str, str]] = {}
    _walk_placeholders(doc.get("expectations", []), found)
    now = now or datetime.now(UTC)
    return {name: _resolve_placeholder(kind, value, now) for name, (kind, value) in found.items()}


def build_suite(doc_or_table: dict[str, Any] | str):
    """A GX ``ExpectationSuite`` from a suite document (or a table name)."""
    import great_expectations as gx

    doc = load_suite(doc_or_table) if isinstance(doc_or_table, str) else doc_or_table
    expectations = _walk_placeholders(doc["expectations"], {})
    return gx.ExpectationSuite(
        name=doc["name"], expectations=expectations, meta=doc.get("meta") or {}
    )


def suite_columns(doc: dict[str, Any]) -> set[str]:
    """Every column a suite document names (expectations and riverdelta checks)."""
    cols: set[str] = set()
    for exp in doc.get("expectations", []):
        kwargs = exp.get("kwargs", {})
        for key in ("column", "column_A", "column_B"):
            if key in kwargs:
                cols.add(kwargs[key])
        cols.update(kwargs.get("column_list", []))
    return cols


# --------------------------------------------------------------------------- pointer


def _publications_dir() -> Path:
    return control_dir(PUBLICATIONS)


@contextlib.contextmanager
def _file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def publication(table: str) -> dict[str, Any] | None:
    """The validated pointer of ``table``, or None if it was never validated."""
    path = _publications_dir() / f"{table}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def publications() -> dict[str, dict[str, Any]]:
    """Every table's pointer, read as one snapshot (a multi-table publish is never half-seen)."""
    folder = _publications_dir()
    if not folder.exists():
        return {}
    with _file_lock(folder / ".lock", shared=True):
        return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _write_publication(
    folder: Path, table: str, version: int, path: str, by: str, force: bool
) -> dict[str, Any]:
    current = publication(table)
    if current and not force and current["path"] == path and current["validated_version"] > version:
        raise ValueError(
            f"{table}: validated version is already {current['validated_version']}; "
            f"refusing to move it back to {version} (force=True to do so)"
        )
    doc = {
        "table": table,
        "path": path,
        "validated_version": int(version),
        "published_at": datetime.now(UTC).isoformat(),
        "by": by,
        "previous": (
            {"path": current["path"], "validated_version": current["validated_version"]}
            if current
            else None
        ),
    }
    files.write_atomic(folder / f"{table}.json", json.dumps(doc, indent=2, sort_keys=True))
    return doc


def publish(
    table: str, version: int, *, path: str | None = None, by: str = "", force: bool = False
) -> dict[str, Any]:
    """Move ``table``'s validated pointer to ``version`` of ``path``.

    Refuses to move it backwards on the same path (a slow run finishing after a
    newer one) unless ``force``.
    """
    return publish_many({table: (path or resolve_table(table).path, version)}, by=by, force=force)[
        table
    ]


def publish_many(
    entries: dict[str, tuple[str, int]], *, by: str = "", force: bool = False
) -> dict[str, dict[str, Any]]:
    """Move several tables' pointers under one exclusive lock (a rebuild's hand-over).

    Each file is replaced atomically and ``publications()`` reads under the shared
    lock, so a reader of several tables sees all old or all new pointers.
    """
    folder = _publications_dir()
    with _file_lock(folder / ".lock"):
        return {
            table: _write_publication(folder, table, version, path, by, force)
            for table, (path, version) in entries.items()
        }


# --------------------------------------------------------------------------- history


def history_path() -> str:
    return ops_path(HISTORY_TABLE)


def _append_history(row: dict[str, Any]) -> None:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("table", pa.string()),
            ("from_version", pa.int64()),
            ("to_version", pa.int64()),
            ("suite", pa.string()),
            ("success", pa.bool_()),
            ("failed", pa.string()),
            ("rows_checked", pa.int64()),
            ("duration", pa.float64()),
            ("full", pa.bool_()),
            ("full_reason", pa.string()),
            ("validated_at", pa.timestamp("us", tz="UTC")),
            ("run_id", pa.string()),
        ]
    )
    data = pa.Table.from_pylist([row], schema=schema)
    # Blind appends never conflict in Delta: concurrent validations need no lock here.
    storage.write_delta(history_path(), data, mode="append")
    _write_summary(row)


# What a validation needs of the past (the last run, the last full run) is one small
# document per table beside the publication: it costs the same after 100,000 runs as
# after one, where reading the history table grows with it.
def _summary_file(table: str) -> Path:
    return control_dir("validation_summary") / f"{table}.json"


def _write_summary(row: dict[str, Any]) -> None:
    path = _summary_file(row["table"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_suffix(".lock")):
        summary = json.loads(path.read_text()) if path.exists() else {}
        entry = {**row, "validated_at": row["validated_at"].isoformat()}
        summary["last"] = entry
        if row["full"]:
            summary["last_full"] = entry
        files.write_atomic(path, json.dumps(summary, default=str))


def _summary(table: str) -> dict[str, Any] | None:
    path = _summary_file(table)
    if not path.exists():
        return None
    out = {}
    for key, entry in json.loads(path.read_text()).items():
        entry["validated_at"] = datetime.fromisoformat(entry["validated_at"])
        entry["failed"] = json.loads(entry["failed"]) if entry["failed"] else []
        out[key] = entry
    return out


def validation_history(
    table: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Past runs, oldest first; ``failed`` decoded. The filters go into the Parquet scan."""
    import pyarrow.compute as pc

    if not storage.is_delta_table(history_path()):
        return []
    where = None
    if table is not None:
        where = pc.field("table") == table
    if since is not None:
        after = pc.field("validated_at") >= since
        where = after if where is None else where & after
    rows = arrow_table(history_path(), None, None, where).to_pylist()
    for r in rows:
        r["failed"] = json.loads(r["failed"]) if r["failed"] else []
    return sorted(rows, key=lambda r: r["validated_at"])


def last_validation(table: str) -> dict[str, Any] | None:
    summary = _summary(table)
    if summary is not None:
        return summary.get("last")
    rows = validation_history(table)  # validated before summaries existed
    return rows[-1] if rows else None


def last_full_validation(table: str) -> dict[str, Any] | None:
    summary = _summary(table)
    if summary is not None:
        return summary.get("last_full")
    fulls = [r for r in validation_history(table) if r["full"]]
    return fulls[-1] if fulls else None


# --------------------------------------------------------------------------- versions


def latest_version(path: str, spark: SparkSession | None = None) -> int | None:
    """The table's current version, or None if there is no Delta table at ``path``."""
    try:
        if not storage.is_delta_table(path):
            return None
        return storage.delta_table(path).version()
    except Exception:
        if spark is None:
            raise
    # A store delta-rs cannot open (hdfs:// without libhdfs): ask Spark's Delta instead.
    from delta.tables import DeltaTable as SparkDeltaTable

    if not SparkDeltaTable.isDeltaTable(spark, path):
        return None
    return int(SparkDeltaTable.forPath(spark, path).history(1).first()["version"])


def _commit_info(actions: list[dict[str, Any]]) -> tuple[str, str, str]:
    info = storage.commit_info(actions)
    params = info.get("operationParameters") or {}
    mode = str(params.get("mode", "Append")).strip('"')
    return info.get("operation", ""), mode, str(params.get("outputMode", "Append"))


def increment_files(path: str, from_version: int, to_version: int) -> tuple[list[str] | None, str]:
    """Data files added by versions ``(from_version, to_version]``, or None and why not exact.

    Read commit by commit from the log: the files each commit added with
    ``dataChange=true``. A compaction (OPTIMIZE, ``dataChange=false``) in the range
    adds no data: its rewritten files hold rows already counted, and the originals it
    removed are still read (vacuum keeps them until they are validated, see
    ``riverdelta.ops.maintenance``). Not the difference of two snapshots: a compaction
    would make it empty or whole. Not delta-rs's history either: 1.6 numbers a pinned
    table's commits down from the pinned version even when the table moved on.
    """
    try:
        meta = storage.delta_table(path, version=to_version).metadata()
    except Exception as exc:  # log cleaned up, unreadable store, ...
        return None, f"cannot read version {to_version}: {exc}"
    if meta.partition_columns:
        return None, "partitioned table"
    if meta.configuration.get("delta.columnMapping.mode", "none") != "none":
        return None, "column mapping"
    added: list[str] = []
    for version in range(from_version + 1, to_version + 1):
        try:
            actions = storage.commit_actions(path, version)
        except FileNotFoundError:
            return None, f"commit {version} is no longer in the log"
        op, mode, output = _commit_info(actions)
        adds = storage.data_files_added(actions)
        if any("remove" in a and a["remove"].get("dataChange", True) for a in actions):
            return None, f"version {version} is {op} ({mode}): it removes rows"
        if not adds or op in _METADATA_OPERATIONS:
            continue  # compaction, checkpoint-only or metadata commits carry no new rows
        if op not in _APPEND_OPERATIONS or mode != "Append" or output != "Append":
            return None, f"version {version} is {op} ({mode}), not a blind append"
        added += adds
    if any("://" in f or f.startswith("/") for f in added):
        return None, "files outside the table directory"
    # Paths relative to the table, as the log holds them (both engines resolve them).
    return [unquote(f) for f in added], "incremental"


# --------------------------------------------------------------------------- GX context


def gx_root() -> Path:
    return settings().home / "gx"


def data_docs_dir() -> Path:
    return gx_root() / "data_docs"


def data_docs_index() -> Path:
    return data_docs_dir() / "index.html"


def _gx_context():
    # No usage statistics from an offline pipeline (and no network wait on every run).
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(settings().home))
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(data_docs_dir()),
        },
    }
    sites = ctx.list_data_docs_sites()
    # Only write the YAML when something changed: every write is a chance to race.
    if sites.get(DATA_DOCS_SITE) != site:
        if DATA_DOCS_SITE in sites:
            ctx.update_data_docs_site(DATA_DOCS_SITE, site)
        else:
            ctx.add_data_docs_site(DATA_DOCS_SITE, site)
    if "local_site" in ctx.list_data_docs_sites():
        ctx.delete_data_docs_site("local_site")
    bars = ctx.variables.progress_bars
    globally = (
        bars.get("globally", True) if isinstance(bars, dict) else getattr(bars, "globally", True)
    )
    if bars is None or globally:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.variables.save()
    return ctx


# One GX datasource per engine; a table's validation definition and checkpoint keep
# one name, so its Data Docs history is continuous whichever engine ran.
_GX_SOURCES = {"spark": "riverdelta", "pandas": "riverdelta_pandas"}


def _gx_objects(ctx, table: str, suite_doc: dict[str, Any], engine: str, index_columns: list[str]):
    import great_expectations as gx

    name = _GX_SOURCES[engine]
    try:
        source = ctx.data_sources.get(name)
    except (KeyError, LookupError, ValueError):
        add = ctx.data_sources.add_spark if engine == "spark" else ctx.data_sources.add_pandas
        source = add(name)
    try:
        asset = source.get_asset(table)
    except (KeyError, LookupError, ValueError):
        asset = source.add_dataframe_asset(table)
    try:
        batch = asset.get_batch_definition("pinned_version")
    except (KeyError, LookupError, ValueError):
        batch = asset.add_batch_definition_whole_dataframe("pinned_version")
    suite = ctx.suites.add_or_update(build_suite(suite_doc))
    definition = ctx.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=table, data=batch, suite=suite)
    )
    # No Data Docs action: sensitive values are redacted from the stored result first
    # (_publish_docs). SUMMARY plus index columns names up to 20 failing rows per
    # expectation by their Kafka coordinates, in both engines.
    return ctx.checkpoints.add_or_update(
        gx.Checkpoint(
            name=table,
            validation_definitions=[definition],
            actions=[],
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": index_columns,
            },
        )
    )


def _index_columns(ref: TableRef) -> list[str]:
    """The columns that name a row a person can look up (Kafka coordinates, ids, keys)."""
    spec = ref.spec
    if ref.layer in ("bronze", "quarantine"):
        return ["topic", "partition", "offset"]
    if ref.layer == "silver":
        return ["topic", "partition", "offset", spec.id_column]
    gold = _gold_spec(spec, ref.layer.removeprefix("gold_"))
    return ["window_start", *gold.group_by]


REDACTED = "<redacted>"


def _expectation_columns(kwargs: dict[str, Any]) -> set[str]:
    cols = {kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B")}
    return {c for c in [*cols, *(kwargs.get("column_list") or [])] if c}


def _redact_results(checkpoint_result, sensitive: frozenset[str]) -> None:
    """Sensitive fields' values out of GX's results, before they are stored or rendered."""
    if not sensitive:
        return
    for suite_result in checkpoint_result.run_results.values():
        for er in suite_result.results:
            result = er.result or {}
            if _expectation_columns(er.expectation_config.kwargs or {}) & sensitive:
                for key in ("partial_unexpected_list", "unexpected_list"):
                    if result.get(key):
                        result[key] = [REDACTED for _ in result[key]]
                for item in result.get("partial_unexpected_counts") or []:
                    item["value"] = REDACTED
            for row in result.get("partial_unexpected_index_list") or []:
                if isinstance(row, dict):
                    row.update({k: REDACTED for k in row if k in sensitive})


def _publish_docs(ctx, checkpoint_result) -> None:
    """Store the (redacted) results over GX's own copy, then render their Data Docs pages."""
    keys = list(checkpoint_result.run_results)
    for key, suite_result in checkpoint_result.run_results.items():
        ctx.validation_results_store.set(key, suite_result)
    # The suite's own page too: it shows each expectation's note ([contract] / [file]).
    suites = [key.expectation_suite_identifier for key in keys]
    ctx.build_data_docs(site_names=[DATA_DOCS_SITE], resource_identifiers=[*keys, *suites])


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _same_in_both_engines(value: Any) -> Any:
    # pandas hands back zone-aware UTC timestamps and numpy scalars, Spark naive
    # timestamps in its UTC session and Python ints: a failure reads the same
    # whichever engine found it.
    if isinstance(value, dict):
        return {k: _same_in_both_engines(v) for k, v in value.items()}
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return datetime.fromisoformat(value.isoformat())  # a plain datetime, not pandas'
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return _jsonable(result["observed_value"])
    if "unexpected_count" in result:
        examples = [str(v) for v in (result.get("partial_unexpected_list") or [])[:5]]
        pct = result.get("unexpected_percent") or 0.0
        return f"{result['unexpected_count']} unexpected ({pct:.2f}%), e.g. {examples}"
    return None


def _gx_failures(checkpoint_result) -> list[dict[str, Any]]:
    failures = []
    for suite_result in checkpoint_result.run_results.values():
        for er in suite_result.results:
            if er.success:
                continue
            config = er.expectation_config
            kwargs = {k: v for k, v in (config.kwargs or {}).items() if k != "batch_id"}
            column = kwargs.get("column") or kwargs.get("column_list")
            if column is None and "column_A" in kwargs:
                column = [kwargs["column_A"], kwargs["column_B"]]
            result = dict(er.result or {})
            for key in ("partial_unexpected_list", "partial_unexpected_index_list"):
                if result.get(key):
                    result[key] = [_same_in_both_engines(v) for v in result[key]]
            exc = (er.exception_info or {}).get("exception_message")
            failures.append(
                {
                    "expectation": config.type,
                    "column": column,
                    "observed_value": _observed(result) if not exc else f"error: {exc}",
                    "details": _jsonable(
                        {"kwargs": kwargs, **{k: result[k] for k in result if k != "details"}}
                    ),
                }
            )
    return failures


# --------------------------------------------------------------------------- custom checks


@dataclass
class CheckContext:
    ref: TableRef
    rows: Rows  # the rows validated this run
    version: int  # the pinned version of ref.path
    full: bool
    spark: SparkSession | None = None  # only when rows.engine == "spark"


def _writer_versions(path: str, version: int, txn_app_ids: list[str]) -> dict[str, int]:
    """txn app id -> last batch it committed to the table at ``version`` (Delta txn actions)."""
    dt = storage.delta_table(path, version=version)
    out = {}
    for app in txn_app_ids:
        txn = dt.transaction_version(app)
        if txn is not None:
            out[app] = int(txn)
    return out


def _grouped_counts(
    ctx: CheckContext, path: str, version: int, by: list[str], key: str, ids: list[int]
) -> dict[tuple[Any, ...], int]:
    """Rows per ``by`` among those whose ``key`` is in ``ids``, at ``version`` of ``path``."""
    if readable_by_delta_rs(path) or ctx.spark is None:
        import pyarrow.compute as pc

        table = arrow_table(path, version, by, pc.field(key).isin(ids))
        grouped = table.group_by(by).aggregate([([], "count_all")]).to_pylist()
        return {tuple(r[c] for c in by): r["count_all"] for r in grouped}
    from pyspark.sql import functions as F

    df = ctx.spark.read.format("delta").option("versionAsOf", version).load(path)
    counted = df.where(F.col(key).isin(ids)).groupBy(*by).count().collect()
    return {tuple(r[c] for c in by): r["count"] for r in counted}


def _ingest_records(stream: str, min_batch: int | None = None) -> list[dict[str, Any]] | None:
    """This stream's rows of ``_ops/ingest_batches`` (delta-rs writes it, delta-rs reads it),
    from batch ``min_batch`` on: an increment's check reads its own batches, not the
    stream's whole past (the filter goes into the Parquet scan)."""
    import pyarrow.compute as pc

    path = ops_path(INGEST_BATCHES)
    if not storage.is_delta_table(path):
        return None
    where = pc.field("stream") == stream
    if min_batch is not None:
        where = where & (pc.field("batch_id") >= min_batch)
    return arrow_table(path, None, None, where).to_pylist()


def check_reconcile_bronze(ctx: CheckContext) -> list[dict[str, Any]]:
    """Per ingest batch: bronze == records_in == silver + duplicates + quarantined.

    Counts come from ``_ops/ingest_batches`` (what the batch said it wrote) and from
    the tables (what is there). Scope: the batch ids in this run's rows. A batch
    written to bronze but not yet counted (in flight) is left out: it is the one
    whose id equals a writer's last Delta txn version without an ingest_batches row.
    Silver rows carry their app id, so silver is matched exactly; bronze and
    quarantine are matched by batch id summed over the table's writers. The other
    tables are read with delta-rs, only the batch ids in scope: no JVM either way.
    """
    ref = ctx.ref
    in_rows = ctx.rows.distinct("batch_id")
    # Batch ids only grow per writer: an increment's batches are at or after its smallest.
    records = _ingest_records(ref.spec.name, None if ctx.full or not in_rows else min(in_rows))
    if records is None:
        return [_check_failure("reconcile_bronze", None, "no _ops/ingest_batches table", {})]
    txn_app_ids = sorted({r["app_id"] for r in records})
    writers = _writer_versions(ref.path, ctx.version, txn_app_ids)
    recorded_rows = [
        {**r, "resolved": r.get("resolved") or 0} for r in records if r["app_id"] in writers
    ]
    recorded_keys = {(r["app_id"], r["batch_id"]) for r in recorded_rows}
    in_flight = {b for app, b in writers.items() if (app, b) not in recorded_keys}
    scope = in_rows - in_flight
    if ctx.full:
        # Only batches the pinned bronze version already holds: ingest_batches is read
        # at its latest version and may already count batches committed after the pin.
        scope |= {b for app, b in recorded_keys if b <= writers.get(app, -1)} - in_flight
    if not scope:
        return []
    failures: list[dict[str, Any]] = []
    keep = ("app_id", "batch_id", "records_in", "bronze", "silver", "duplicates", "quarantined")
    bad_identity = [
        {k: r[k] for k in (*keep, "resolved")}
        for r in recorded_rows
        if r["batch_id"] in scope
        and (
            # Quarantined records a range backfill resolved re-enter as silver or duplicates.
            r["records_in"] + r["resolved"] != r["silver"] + r["duplicates"] + r["quarantined"]
            or r["bronze"] != r["records_in"]
        )
    ]
    if bad_identity:
        failures.append(
            _check_failure(
                "reconcile_bronze",
                None,
                f"{len(bad_identity)} batch(es) where records_in + resolved != silver + duplicates + quarantined",
                {"batches": bad_identity[:10]},
            )
        )
    want: dict[int, dict[str, int]] = {}
    for r in recorded_rows:
        if r["batch_id"] in scope:
            w = want.setdefault(r["batch_id"], {"bronze": 0, "quarantine": 0})
            w["bronze"] += r["records_in"]
            w["quarantine"] += r["quarantined"]
    unrecorded = sorted(scope - set(want))
    if unrecorded:
        log.info("reconcile_bronze %s: batches %s have no ingest record yet", ref.table, unrecorded)
    ids = sorted(want)

    def per_batch(path: str, version: int | None) -> dict[int, int]:
        if version is None:
            return {}
        return {
            k[0]: n
            for k, n in _grouped_counts(ctx, path, version, ["batch_id"], "batch_id", ids).items()
        }

    tables = ref.tables
    have_bronze = per_batch(ref.path, ctx.version)
    have_quarantine = per_batch(
        tables["quarantine"], latest_version(tables["quarantine"], ctx.spark)
    )
    mismatches = []
    for b, w in sorted(want.items()):
        got_b, got_q = have_bronze.get(b, 0), have_quarantine.get(b, 0)
        if got_b != w["bronze"] or got_q != w["quarantine"]:
            mismatches.append(
                {
                    "batch_id": b,
                    "bronze": [got_b, w["bronze"]],
                    "quarantine": [got_q, w["quarantine"]],
                }
            )
    s_version = latest_version(tables["silver"], ctx.spark)
    if s_version is not None:
        have_silver = _grouped_counts(
            ctx, tables["silver"], s_version, ["_app_id", "_batch_id"], "_batch_id", ids
        )
        for r in recorded_rows:
            key = (r["app_id"], r["batch_id"])
            if r["batch_id"] in want and have_silver.get(key, 0) != r["silver"]:
                mismatches.append(
                    {
                        "app_id": key[0],
                        "batch_id": key[1],
                        "silver": [have_silver.get(key, 0), r["silver"]],
                    }
                )
    if mismatches:
        failures.append(
            _check_failure(
                "reconcile_bronze",
                None,
                f"{len(mismatches)} batch(es) whose table rows differ from ingest_batches "
                "([in table, recorded]); first: " + json.dumps(mismatches[0], default=str),
                {"mismatches": mismatches[:20], "batches_checked": len(want)},
            )
        )
    return failures


def _aggregate(silver: DataFrame, spec: StreamSpec, gold) -> DataFrame:
    """Gold recomputed from silver, independently of the ingest's own aggregation code."""
    from pyspark.sql import functions as F

    fns: dict[str, Callable[[Any], Any]] = {
        "sum": F.sum,
        "min": F.min,
        "max": F.max,
        "avg": F.avg,
        "count_distinct": F.count_distinct,
    }
    aggs = []
    for a in gold.aggregates:
        if a.fn == "count":
            aggs.append((F.count(F.col(a.column)) if a.column else F.count(F.lit(1))).alias(a.name))
        else:
            aggs.append(fns[a.fn](F.col(a.column)).alias(a.name))
    w = F.window(spec.event_time_column, gold.window)
    return (
        silver.groupBy(w.alias("w"), *gold.group_by)
        .agg(*aggs)
        .select(
            F.col("w.start").alias("window_start"),
            F.col("w.end").alias("window_end"),
            *gold.group_by,
            *(a.name for a in gold.aggregates),
        )
    )


def check_gold_matches_silver(ctx: CheckContext, gold: str) -> list[dict[str, Any]]:
    """Every closed gold window equals the same aggregate recomputed from silver.

    Consistency point: gold at the pinned version. The gold refresher commits with
    Delta txn (ingest app id, newest batch it covers), so a silver row is reflected in
    that gold version iff its batch id <= the gold txn version of its app. Windows
    touched by silver rows not yet reflected are skipped, and so are open windows
    (ending after the reflected silver high-water mark minus the watermark).
    """
    gspec = _gold_spec(ctx.ref.spec, gold)
    silver_path = ctx.ref.tables["silver"]
    s_version = latest_version(silver_path, ctx.spark)
    if s_version is None:
        return [
            _check_failure("gold_matches_silver", None, f"no silver table at {silver_path}", {})
        ]
    compare = _gold_diff_pandas if ctx.rows.engine == "pandas" else _gold_diff_spark
    found = compare(ctx, gspec, silver_path, s_version)
    if found is None:
        return []
    n_bad, sample, cutoff = found
    for entry in sample:  # a sensitive group key (user id) is not shown either
        entry["key"] = {k: REDACTED if k in ctx.ref.spec.sensitive_fields else v
                        for k, v in entry["key"].items()}  # fmt: skip
    return [
        _check_failure(
            "gold_matches_silver",
            [a.name for a in gspec.aggregates],
            f"{n_bad} closed window(s) differ from silver; first: " + json.dumps(sample[0]),
            {"gold": gold, "windows": n_bad, "sample": sample, "cutoff": str(cutoff)},
        )
    ]


GoldDiff = tuple[int, list[dict[str, Any]], Any]  # (windows that differ, a sample, cutoff)


def _gold_diff_spark(ctx: CheckContext, gspec, silver_path: str, s_version: int) -> GoldDiff | None:
    from pyspark.sql import functions as F

    from riverdelta.config.registry import parse_duration

    spark, spec = ctx.spark, ctx.ref.spec
    assert spark is not None
    silver = spark.read.format("delta").option("versionAsOf", s_version).load(silver_path)
    apps = [r[0] for r in silver.select("_app_id").distinct().collect()]
    merged = _writer_versions(ctx.ref.path, ctx.version, apps)
    done = F.lit(False)
    for app, b in merged.items():
        done = done | ((F.col("_app_id") == app) & (F.col("_batch_id") <= b))
    silver = silver.withColumn("_in_gold", done)
    hwm = silver.where("_in_gold").agg(F.max(spec.event_time_column)).first()[0]
    if hwm is None:
        return None
    cutoff = hwm - parse_duration(spec.watermark)
    keys = ["window_start", *gspec.group_by]
    pending = _aggregate(silver.where(~F.col("_in_gold")), spec, gspec).select(*keys).distinct()
    expected = _aggregate(silver.where("_in_gold"), spec, gspec)
    actual = ctx.rows.df.select(expected.columns)

    def closed(df: DataFrame) -> DataFrame:
        return df.where(F.col("window_end") <= F.lit(cutoff)).join(pending, keys, "left_anti")

    e, a = closed(expected).alias("e"), closed(actual).alias("a")
    cond = None
    for k in keys:
        c = F.col(f"e.{k}").eqNullSafe(F.col(f"a.{k}"))
        cond = c if cond is None else cond & c
    differs = F.lit(False)
    for agg in gspec.aggregates:
        differs = differs | ~F.col(f"e.{agg.name}").eqNullSafe(F.col(f"a.{agg.name}"))
    joined = e.join(a, cond, "full_outer")
    bad = joined.where(
        F.col("e.window_start").isNull() | F.col("a.window_start").isNull() | differs
    )
    n_bad = bad.count()
    if n_bad == 0:
        return None
    names = [*keys, *(g.name for g in gspec.aggregates)]
    picked = bad.select(
        *(F.col(f"e.{c}").alias(f"e_{c}") for c in names),
        *(F.col(f"a.{c}").alias(f"a_{c}") for c in names),
    )
    return n_bad, [_gold_sample(r.asDict(), keys, gspec) for r in picked.limit(5).collect()], cutoff


def _gold_sample(r: dict[str, Any], keys: list[str], gspec) -> dict[str, Any]:
    return {
        "key": {k: str(r[f"e_{k}"] if r[f"e_{k}"] is not None else r[f"a_{k}"]) for k in keys},
        "silver": {g.name: str(r[f"e_{g.name}"]) for g in gspec.aggregates},
        "gold": {g.name: str(r[f"a_{g.name}"]) for g in gspec.aggregates},
    }


def _gold_diff_pandas(
    ctx: CheckContext, gspec, silver_path: str, s_version: int
) -> GoldDiff | None:
    import pandas as pd

    from riverdelta.config.registry import parse_duration
    from riverdelta.quality.engine import aggregate_gold, same_value

    spec = ctx.ref.spec
    et = spec.event_time_column
    needed = {et, "_app_id", "_batch_id", *gspec.group_by}
    needed |= {a.column for a in gspec.aggregates if a.column}
    silver = arrow_table(silver_path, s_version, sorted(needed)).to_pandas()
    merged = _writer_versions(
        ctx.ref.path, ctx.version, silver["_app_id"].dropna().unique().tolist()
    )
    in_gold = silver["_batch_id"] <= silver["_app_id"].map(merged).fillna(-1)
    done = silver[in_gold]
    if done.empty:
        return None
    cutoff = done[et].max() - parse_duration(spec.watermark)
    keys = ["window_start", *gspec.group_by]
    pending = aggregate_gold(silver[~in_gold], et, gspec)[keys].drop_duplicates()
    expected = aggregate_gold(done, et, gspec)
    actual = ctx.rows.df[list(expected.columns)]

    def closed(df: pd.DataFrame) -> pd.DataFrame:
        df = df.assign(
            window_start=df["window_start"].astype("datetime64[us, UTC]"),
            window_end=df["window_end"].astype("datetime64[us, UTC]"),
        )
        df = df[df["window_end"] <= cutoff]
        p = pending.assign(window_start=pending["window_start"].astype("datetime64[us, UTC]"))
        marked = df.merge(p, on=keys, how="left", indicator="_pending")
        return marked[marked["_pending"] == "left_only"].drop(columns="_pending")

    both = closed(expected).merge(
        closed(actual), on=keys, how="outer", suffixes=("_e", "_a"), indicator="_side"
    )
    aggs = [g.name for g in gspec.aggregates]
    differs = both["_side"] != "both"
    for name in aggs:
        same = [same_value(e, a) for e, a in zip(both[f"{name}_e"], both[f"{name}_a"], strict=True)]
        differs |= ~pd.Series(same, index=both.index, dtype=bool)
    bad = both[differs]
    if bad.empty:
        return None
    sample = []
    for _, r in bad.head(5).iterrows():
        row = {f"e_{k}": r[k] if r["_side"] != "right_only" else None for k in keys}
        row |= {f"a_{k}": r[k] if r["_side"] != "left_only" else None for k in keys}
        row |= {f"e_{n}": _none(r[f"{n}_e"]) for n in aggs}
        row |= {f"a_{n}": _none(r[f"{n}_a"]) for n in aggs}
        sample.append(_gold_sample(row, keys, gspec))
    return len(bad), sample, cutoff.to_pydatetime()


def _none(value: Any) -> Any:
    import pandas as pd

    return (
        None if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)) else value
    )


def _check_failure(
    name: str, column: Any, observed: Any, details: dict[str, Any]
) -> dict[str, Any]:
    return {
        "expectation": f"riverdelta.{name}",
        "column": column,
        "observed_value": observed,
        "details": _jsonable(details),
    }


CHECKS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "reconcile_bronze": check_reconcile_bronze,
    "gold_matches_silver": check_gold_matches_silver,
}


# --------------------------------------------------------------------------- validation


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


def _periodic_full_due(table: str, to_version: int) -> str | None:
    every_versions = _env_number("RIVERDELTA_FULL_EVERY_VERSIONS", 500)
    every_hours = _env_number("RIVERDELTA_FULL_EVERY_HOURS", 24)
    last = last_full_validation(table)
    if last is None:
        return "no full validation on record"
    if to_version - last["to_version"] >= every_versions:
        return f"last full validation is {to_version - last['to_version']} versions old"
    age = datetime.now(UTC) - last["validated_at"]
    if age >= timedelta(hours=every_hours):
        return f"last full validation is {age.total_seconds() / 3600:.1f} hours old"
    return None


def _decide_full(
    ref: TableRef, to_version: int, requested: bool, since: int | None = None
) -> tuple[bool, str, int | None]:
    """(full?, why, the version the increment starts after)."""
    if requested:
        return True, "requested", None
    pub = publication(ref.table)
    if since is None and pub and pub["path"] == ref.path and pub["validated_version"] == to_version:
        return False, "up to date", to_version  # gold included: nothing new to check
    if ref.layer not in APPEND_ONLY_LAYERS:
        return True, "gold windows are rewritten in place", None
    if since is not None and since <= to_version:
        return False, "incremental", since  # an audit of this very path vouches for <= since
    if pub is None or pub["path"] != ref.path:
        return True, "first validation of this table", None
    if pub["validated_version"] > to_version:
        return True, "validated version is ahead of the table (restored or recreated?)", None
    due = _periodic_full_due(ref.table, to_version)
    if due:
        return True, due, None
    return False, "incremental", int(pub["validated_version"])


def _run_id(table: str) -> str:
    dag_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prefix = f"{dag_run}-" if dag_run else ""
    return f"{prefix}{table}-{stamp}-{uuid.uuid4().hex[:6]}"


FAILED_ROWS_TABLE = "failed_rows"


def _failing_rows(failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(expectation, column, row) for each row a failure names: GX's index list, gold's sample."""
    out = []
    for f in failed:
        details = f.get("details") or {}
        rows = details.get("partial_unexpected_index_list") or [
            s["key"] | {"silver": s["silver"], "gold": s["gold"]}
            for s in details.get("sample") or []
        ]
        for row in rows:
            out.append({"expectation": f["expectation"], "column": f["column"], "row": row})
    return out


def _write_failed_rows(table: str, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Append to ``_ops/failed_rows``: a table a person can query, one row per failing row."""
    import pyarrow as pa

    now = datetime.now(UTC)
    data = pa.table(
        {
            "table": [table] * len(rows),
            "run_id": [run_id] * len(rows),
            "validated_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
            "expectation": [r["expectation"] for r in rows],
            "column": [json.dumps(r["column"]) for r in rows],
            "row": [json.dumps(r["row"], default=str, sort_keys=True) for r in rows],
        }
    )
    storage.write_delta(ops_path(FAILED_ROWS_TABLE), data)


def failed_rows(table: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """The failing rows recorded for ``table`` (one run's, or all), ``row`` decoded."""
    import pyarrow.compute as pc

    path = ops_path(FAILED_ROWS_TABLE)
    if not storage.is_delta_table(path):
        return []
    where = pc.field("table") == table
    if run_id is not None:
        where = where & (pc.field("run_id") == run_id)
    rows = arrow_table(path, None, None, where).to_pylist()
    return [{**r, "row": json.loads(r["row"]), "column": json.loads(r["column"])} for r in rows]


def _failure_message(result: dict[str, Any]) -> str:
    span = (
        f"versions {result['from_version']}..{result['to_version']}"
        if result["from_version"] is not None
        else f"version {result['to_version']} (full)"
    )
    lines = [
        f"{result['table']} failed validation at {span}, {result['rows_checked']} rows checked; "
        f"validated version stays {result['validated_version']}:"
    ]
    for f in result["failed"]:
        lines.append(
            f"  - {f['expectation']} on column {f['column']}: observed {f['observed_value']}"
        )
    if result.get("failed_rows"):
        lines.append(
            f"  {result['failed_rows']} failing rows (up to 20 per expectation) are in "
            f"_ops/{FAILED_ROWS_TABLE} with run_id {result['run_id']!r}: "
            f"riverdelta failed-rows {result['table']}"
        )
    return "\n".join(lines)


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
    from riverdelta.ops import state as ops

    started = time.monotonic()
    timings: dict[str, float] = {}
    ref = resolve_table(table_name, path)
    suite_doc = load_suite(table_name)
    try:
        # delta-rs answers without a JVM: a run with nothing new never starts Spark.
        to_version = latest_version(ref.path)
    except Exception as exc:
        if not spark_allowed:
            raise NeedsSparkError(f"{table_name}: delta-rs cannot open {ref.path}") from exc
        spark = spark or _spark()
        to_version = latest_version(ref.path, spark)
    if to_version is None:
        raise FileNotFoundError(f"{table_name}: no Delta table at {ref.path} yet")
    run_id = _run_id(table_name)
    pub = publication(table_name)
    is_full, reason, from_version = _decide_full(ref, to_version, full, since_version)
    result: dict[str, Any] = {
        "table": table_name,
        "path": ref.path,
        "run_id": run_id,
        "suite": suite_doc["name"],
        "to_version": to_version,
        "validated_version": pub["validated_version"] if pub and pub["path"] == ref.path else None,
    }

    def nothing_checked(reason: str, **extra: Any) -> dict[str, Any]:
        result.update(
            from_version=from_version, rows_checked=0, success=True, failed=[], full=False,
            full_reason=reason, duration_seconds=round(time.monotonic() - started, 3),
            data_docs=str(data_docs_index()), timings={}, **extra,
        )  # fmt: skip
        return result

    if not is_full and from_version == to_version:
        # Nothing committed since the last validation: nothing to check or publish.
        return nothing_checked("up to date")

    files: list[str] | None = None
    if not is_full:
        assert from_version is not None
        files, why = increment_files(ref.path, from_version, to_version)
        if files is None:
            is_full, reason, from_version = True, why, None
        elif not files:
            # Compaction, checkpoint or metadata commits only: the rows are the validated
            # ones, rewritten. The pointer follows without a check (nothing to check).
            if publish_on_pass:
                publish(table_name, to_version, path=ref.path, by=run_id)
                result["validated_version"] = to_version
            return nothing_checked("no new rows", engine=None)
    engine, engine_why = _choose_engine(ref, to_version, files, suite_doc)
    if engine == "spark" and not spark_allowed:
        raise NeedsSparkError(f"{table_name}: {engine_why}")
    t = time.monotonic()
    if engine == "pandas":
        rows = pandas_rows(ref.path, to_version, files)
    else:
        spark = spark or _spark()
        rows = spark_rows(spark, ref.path, to_version, files)
    try:
        timings["read"] = time.monotonic() - t

        t = time.monotonic()
        with _file_lock(gx_root() / ".riverdelta.lock"):
            from great_expectations.core.run_identifier import RunIdentifier

            ctx = _gx_context()
            checkpoint = _gx_objects(ctx, table_name, suite_doc, engine, _index_columns(ref))
            gx_result = checkpoint.run(
                batch_parameters={"dataframe": rows.df},
                expectation_parameters=suite_parameters(suite_doc),
                run_id=RunIdentifier(run_name=run_id, run_time=datetime.now(UTC)),
            )
            _redact_results(gx_result, ref.spec.sensitive_fields)
            _publish_docs(ctx, gx_result)
        failed = _gx_failures(gx_result)
        timings["gx"] = time.monotonic() - t

        t = time.monotonic()
        check_ctx = CheckContext(ref, rows, to_version, is_full, spark)
        for check in suite_doc.get("riverdelta_checks", []):
            params = {k: v for k, v in check.items() if k != "check"}
            try:
                failed += CHECKS[check["check"]](check_ctx, **params)
            except Exception as exc:
                log.exception("check %s on %s raised", check, table_name)
                failed.append(
                    _check_failure(check["check"], None, f"error: {exc}", {"params": params})
                )
        timings["checks"] = time.monotonic() - t
    finally:
        rows.release()

    success = not failed
    failing = _failing_rows(failed)
    if failing:
        _write_failed_rows(table_name, run_id, failing)
    duration = time.monotonic() - started
    result.update(
        failed_rows=len(failing),
        from_version=from_version,
        rows_checked=rows.count,
        engine=engine,
        engine_reason=engine_why,
        success=success,
        failed=failed,
        full=is_full,
        full_reason=reason if is_full else "incremental",
        duration_seconds=round(duration, 3),
        data_docs=str(data_docs_index()),
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    _append_history(
        {
            "table": table_name,
            "from_version": from_version,
            "to_version": to_version,
            "suite": suite_doc["name"],
            "success": success,
            "failed": json.dumps(failed, default=str),
            "rows_checked": rows.count,
            "duration": duration,
            "full": is_full,
            "full_reason": result["full_reason"],
            "validated_at": datetime.now(UTC),
            "run_id": run_id,
        }
    )
    detail = {
        "table": table_name,
        "from_version": from_version,
        "to_version": to_version,
        "rows_checked": rows.count,
        "run_id": run_id,
        "full": is_full,
        "engine": engine,
    }
    if success:
        if publish_on_pass:
            publish(table_name, to_version, path=ref.path, by=run_id)
            result["validated_version"] = to_version
        ops.record(ref.spec.name, "validation", outcome="ok", **detail)
        return result
    ops.record(
        ref.spec.name,
        "validation",
        outcome="fail",
        failed=[f"{f['expectation']}({f['column']})" for f in failed],
        **detail,
    )
    raise ValidationFailedError(_failure_message(result), result)


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


# --------------------------------------------------------------------------- benchmark


def _scan_exprs(doc: dict[str, Any], params: dict[str, Any]) -> list[Any]:
    """The suite's metrics as plain Spark aggregate expressions (one scan)."""
    from pyspark.sql import functions as F

    def value(v: Any) -> Any:
        return params[v["$PARAMETER"]] if isinstance(v, dict) and "$PARAMETER" in v else v

    def bad(cond: Any, name: str) -> Any:
        return F.sum(F.when(cond, 1).otherwise(0)).alias(name)

    exprs = []
    for i, exp in enumerate(_walk_placeholders(doc["expectations"], {})):
        kw, kind, name = exp["kwargs"], exp["type"], f"m{i}"
        if kind == "expect_column_values_to_not_be_null":
            exprs.append(bad(F.col(kw["column"]).isNull(), name))
        elif kind == "expect_column_values_to_be_unique":
            exprs.append((F.count(kw["column"]) - F.count_distinct(kw["column"])).alias(name))
        elif kind == "expect_compound_columns_to_be_unique":
            cols = [F.col(c) for c in kw["column_list"]]
            exprs.append((F.count(F.lit(1)) - F.count_distinct(F.struct(*cols))).alias(name))
        elif kind == "expect_column_values_to_be_between":
            c, cond = F.col(kw["column"]), F.lit(False)
            if kw.get("min_value") is not None:
                cond = cond | (c < F.lit(value(kw["min_value"])))
            if kw.get("max_value") is not None:
                cond = cond | (c > F.lit(value(kw["max_value"])))
            exprs.append(bad(cond, name))
        elif kind == "expect_column_values_to_be_in_set":
            exprs.append(bad(~F.col(kw["column"]).isin(list(kw["value_set"])), name))
        elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
            exprs.append(bad(F.col(kw["column_A"]) < F.col(kw["column_B"]), name))
    return exprs


def time_validation_vs_scan(table: str, *, spark: SparkSession | None = None) -> dict[str, Any]:
    """Seconds of a full validation vs one plain Spark scan computing the same metrics.

    The validation is a real one (history row, Data Docs, and the pointer moves if it
    passes); the scan reads the same pinned version from storage, uncached.
    """
    from pyspark.sql import functions as F

    if spark is None:
        from riverdelta.launch.spark import get_spark

        spark = get_spark("riverdelta-quality")
    try:
        res = validate_table(table, full=True, spark=spark)
    except ValidationFailedError as exc:
        res = exc.result
    doc = load_suite(table)
    exprs = _scan_exprs(doc, suite_parameters(doc))
    t = time.monotonic()
    df = spark.read.format("delta").option("versionAsOf", res["to_version"]).load(res["path"])
    df.agg(F.count(F.lit(1)), *exprs).collect()
    scan = time.monotonic() - t
    return {
        "table": table,
        "rows": res["rows_checked"],
        "validation_seconds": res["duration_seconds"],
        "gx_seconds": res["timings"].get("gx"),
        "scan_seconds": round(scan, 3),
        "ratio": round(res["duration_seconds"] / scan, 2) if scan else None,
        "gx_ratio": round(res["timings"].get("gx", 0.0) / scan, 2) if scan else None,
        "success": res["success"],
        "engine": res.get("engine"),
    }


__all__ = [
    "CHECKS",
    "NotValidatedError",
    "ValidationFailedError",
    "build_suite",
    "data_docs_index",
    "expected_columns",
    "last_validation",
    "load_suite",
    "publication",
    "publications",
    "publish",
    "suite_parameters",
    "time_validation_vs_scan",
    "validate_table",
    "validation_history",
]
