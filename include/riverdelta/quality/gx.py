"""The Great Expectations adapter: suite documents -> GX suites -> a run's failures, Data Docs.

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
      express on one table (``riverdelta.quality.checks``); they report failures in
      the same format as expectations.

Context and Data Docs
    Every run lands in the file-backed GX context under ``<home>/gx`` whose Data
    Docs site is ``<home>/gx/data_docs``. GX keeps its datasource in one YAML file,
    so a process-wide file lock serialises the GX part of runs on one machine.

Airflow DAG files import this module: great_expectations is imported inside functions.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riverdelta.config.settings import settings
from riverdelta.quality.checks import CHECKS
from riverdelta.quality.failures import REDACTED, jsonable
from riverdelta.quality.locks import file_lock
from riverdelta.quality.tables import TableRef, gold_spec

if TYPE_CHECKING:
    from riverdelta.quality.engine import Rows

DATA_DOCS_SITE = "riverdelta"
_PLACEHOLDERS = ("$now_plus", "$now_minus", "$timestamp")

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


def walk_placeholders(obj: Any, found: dict[str, tuple[str, str]]) -> Any:
    """Replace placeholders by GX ``$PARAMETER`` references, collecting name -> (kind, value)."""
    if isinstance(obj, dict):
        keys = [k for k in obj if k in _PLACEHOLDERS]
        if keys and len(obj) == 1:
            kind, value = keys[0], obj[keys[0]]
            name = _parameter_name(kind, str(value))
            found[name] = (kind, str(value))
            return {"$PARAMETER": name}
        return {k: walk_placeholders(v, found) for k, v in obj.items()}
    if isinstance(obj, list):
        return [walk_placeholders(v, found) for v in obj]
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
    walk_placeholders(doc.get("expectations", []), found)
    now = now or datetime.now(UTC)
    return {name: _resolve_placeholder(kind, value, now) for name, (kind, value) in found.items()}


def build_suite(doc_or_table: dict[str, Any] | str):
    """A GX ``ExpectationSuite`` from a suite document (or a table name)."""
    import great_expectations as gx

    doc = load_suite(doc_or_table) if isinstance(doc_or_table, str) else doc_or_table
    expectations = walk_placeholders(doc["expectations"], {})
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
    gold = gold_spec(spec, ref.layer.removeprefix("gold_"))
    return ["window_start", *gold.group_by]


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
        return jsonable(result["observed_value"])
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
                    "details": jsonable(
                        {"kwargs": kwargs, **{k: result[k] for k in result if k != "details"}}
                    ),
                }
            )
    return failures


def run_suite(
    ref: TableRef, suite_doc: dict[str, Any], rows: Rows, run_id: str
) -> list[dict[str, Any]]:
    """GX's failures on ``rows``; the (redacted) results land in the context and Data Docs."""
    with file_lock(gx_root() / ".riverdelta.lock"):
        from great_expectations.core.run_identifier import RunIdentifier

        ctx = _gx_context()
        checkpoint = _gx_objects(ctx, ref.table, suite_doc, rows.engine, _index_columns(ref))
        gx_result = checkpoint.run(
            batch_parameters={"dataframe": rows.df},
            expectation_parameters=suite_parameters(suite_doc),
            run_id=RunIdentifier(run_name=run_id, run_time=datetime.now(UTC)),
        )
        _redact_results(gx_result, ref.spec.sensitive_fields)
        _publish_docs(ctx, gx_result)
    return _gx_failures(gx_result)
