"""The riverdelta checks: cross-table checks GX cannot express on one table.

A suite names them in ``riverdelta_checks`` (see ``riverdelta.quality.gx``):

- ``reconcile_bronze``: per ingest batch, bronze == records_in == silver +
  duplicates + quarantined, from ``_ops/ingest_batches`` and the tables.
- ``gold_matches_silver``: every closed gold window equals the same aggregate
  recomputed from silver.

They report failures in the same format as expectations
(``riverdelta.quality.failures``) and run in the engine of the validated rows.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from riverdelta.quality.engine import Rows, arrow_table, readable_by_delta_rs
from riverdelta.quality.failures import REDACTED, check_failure
from riverdelta.quality.tables import TableRef, gold_spec, latest_version
from riverdelta.storage import roots as storage
from riverdelta.storage.lake import ops_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from riverdelta.config.registry import StreamSpec

log = logging.getLogger("riverdelta.quality.checks")

INGEST_BATCHES = "ingest_batches"


@dataclass
class CheckContext:
    ref: TableRef
    rows: Rows  # the rows validated this run
    version: int  # the pinned version of ref.path
    full: bool
    spark: SparkSession | None = None  # only when rows.engine == "spark"


def _writer_versions(path: str, version: int, app_ids: list[str]) -> dict[str, int]:
    """app id -> last batch it committed to the table at ``version`` (Delta txn actions)."""
    dt = storage.delta_table(path, version=version)
    out = {}
    for app in app_ids:
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
    found = _reconcile_scope(ctx)
    if found is None:
        return [check_failure("reconcile_bronze", None, "no _ops/ingest_batches table", {})]
    recorded, scope = found
    if not scope:
        return []
    failures = _identity_failures(recorded, scope)
    want = _expected_counts(ctx.ref.table, recorded, scope)
    mismatches = _layer_mismatches(ctx, want) + _silver_mismatches(ctx, recorded, want)
    if mismatches:
        failures.append(
            check_failure(
                "reconcile_bronze",
                None,
                f"{len(mismatches)} batch(es) whose table rows differ from ingest_batches "
                "([in table, recorded]); first: " + json.dumps(mismatches[0], default=str),
                {"mismatches": mismatches[:20], "batches_checked": len(want)},
            )
        )
    return failures


def _reconcile_scope(ctx: CheckContext) -> tuple[list[dict[str, Any]], set[int]] | None:
    """(the table's writers' ingest records, the batch ids to reconcile); None if no record."""
    ref = ctx.ref
    in_rows = ctx.rows.distinct("batch_id")
    # Batch ids only grow per writer: an increment's batches are at or after its smallest.
    records = _ingest_records(ref.spec.name, None if ctx.full or not in_rows else min(in_rows))
    if records is None:
        return None
    app_ids = sorted({r["app_id"] for r in records})
    writers = _writer_versions(ref.path, ctx.version, app_ids)
    recorded = [
        {**r, "resolved": r.get("resolved") or 0} for r in records if r["app_id"] in writers
    ]
    recorded_keys = {(r["app_id"], r["batch_id"]) for r in recorded}
    in_flight = {b for app, b in writers.items() if (app, b) not in recorded_keys}
    scope = in_rows - in_flight
    if ctx.full:
        # Only batches the pinned bronze version already holds: ingest_batches is read
        # at its latest version and may already count batches committed after the pin.
        scope |= {b for app, b in recorded_keys if b <= writers.get(app, -1)} - in_flight
    return recorded, scope


def _identity_failures(recorded: list[dict[str, Any]], scope: set[int]) -> list[dict[str, Any]]:
    """Batches whose own counts do not add up (no table read)."""
    keep = ("app_id", "batch_id", "records_in", "bronze", "silver", "duplicates", "quarantined")
    bad = [
        {k: r[k] for k in (*keep, "resolved")}
        for r in recorded
        if r["batch_id"] in scope
        and (
            # Quarantined records a range backfill resolved re-enter as silver or duplicates.
            r["records_in"] + r["resolved"] != r["silver"] + r["duplicates"] + r["quarantined"]
            or r["bronze"] != r["records_in"]
        )
    ]
    if not bad:
        return []
    return [
        check_failure(
            "reconcile_bronze",
            None,
            f"{len(bad)} batch(es) where records_in + resolved != silver + duplicates + quarantined",
            {"batches": bad[:10]},
        )
    ]


def _expected_counts(
    table: str, recorded: list[dict[str, Any]], scope: set[int]
) -> dict[int, dict[str, int]]:
    """Batch id -> the bronze and quarantine rows its records say were written."""
    want: dict[int, dict[str, int]] = {}
    for r in recorded:
        if r["batch_id"] in scope:
            w = want.setdefault(r["batch_id"], {"bronze": 0, "quarantine": 0})
            w["bronze"] += r["records_in"]
            w["quarantine"] += r["quarantined"]
    unrecorded = sorted(scope - set(want))
    if unrecorded:
        log.info("reconcile_bronze %s: batches %s have no ingest record yet", table, unrecorded)
    return want


def _per_batch(ctx: CheckContext, path: str, version: int | None, ids: list[int]) -> dict[int, int]:
    if version is None:
        return {}
    counts = _grouped_counts(ctx, path, version, ["batch_id"], "batch_id", ids)
    return {k[0]: n for k, n in counts.items()}


def _layer_mismatches(ctx: CheckContext, want: dict[int, dict[str, int]]) -> list[dict[str, Any]]:
    """Batches whose bronze or quarantine rows ([in table, recorded]) differ from the records."""
    ids, quarantine = sorted(want), ctx.ref.tables["quarantine"]
    have_bronze = _per_batch(ctx, ctx.ref.path, ctx.version, ids)
    have_quarantine = _per_batch(ctx, quarantine, latest_version(quarantine, ctx.spark), ids)
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
    return mismatches


def _silver_mismatches(
    ctx: CheckContext, recorded: list[dict[str, Any]], want: dict[int, dict[str, int]]
) -> list[dict[str, Any]]:
    """(app id, batch id)s whose silver rows differ from the records: matched per writer."""
    silver = ctx.ref.tables["silver"]
    s_version = latest_version(silver, ctx.spark)
    if s_version is None:
        return []
    have = _grouped_counts(
        ctx, silver, s_version, ["_app_id", "_batch_id"], "_batch_id", sorted(want)
    )
    mismatches = []
    for r in recorded:
        key = (r["app_id"], r["batch_id"])
        if r["batch_id"] in want and have.get(key, 0) != r["silver"]:
            mismatches.append(
                {"app_id": key[0], "batch_id": key[1], "silver": [have.get(key, 0), r["silver"]]}
            )
    return mismatches


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
    gspec = gold_spec(ctx.ref.spec, gold)
    silver_path = ctx.ref.tables["silver"]
    s_version = latest_version(silver_path, ctx.spark)
    if s_version is None:
        return [check_failure("gold_matches_silver", None, f"no silver table at {silver_path}", {})]
    compare = _gold_diff_pandas if ctx.rows.engine == "pandas" else _gold_diff_spark
    found = compare(ctx, gspec, silver_path, s_version)
    if found is None:
        return []
    n_bad, sample, cutoff = found
    for entry in sample:  # a sensitive group key (user id) is not shown either
        entry["key"] = {k: REDACTED if k in ctx.ref.spec.sensitive_fields else v
                        for k, v in entry["key"].items()}  # fmt: skip
    return [
        check_failure(
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


CHECKS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "reconcile_bronze": check_reconcile_bronze,
    "gold_matches_silver": check_gold_matches_silver,
}


def run_checks(ctx: CheckContext, suite_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The failures of the suite's riverdelta checks; a check that raises is one too."""
    failed: list[dict[str, Any]] = []
    for check in suite_doc.get("riverdelta_checks", []):
        params = {k: v for k, v in check.items() if k != "check"}
        try:
            failed += CHECKS[check["check"]](ctx, **params)
        except Exception as exc:
            log.exception("check %s on %s raised", check, ctx.ref.table)
            failed.append(check_failure(check["check"], None, f"error: {exc}", {"params": params}))
    return failed
