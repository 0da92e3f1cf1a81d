"""What the quality gate costs: a full validation timed against one plain Spark scan.

``riverdelta bench`` reports it (docs/benchmarks.md, *Validation vs scan*).

Heavy libraries are imported inside functions.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from riverdelta.quality.gate import ValidationFailedError, validate_table
from riverdelta.quality.gx import load_suite, suite_parameters, walk_placeholders

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _scan_exprs(doc: dict[str, Any], params: dict[str, Any]) -> list[Any]:
    """The suite's metrics as plain Spark aggregate expressions (one scan)."""
    from pyspark.sql import functions as F

    def value(v: Any) -> Any:
        return params[v["$PARAMETER"]] if isinstance(v, dict) and "$PARAMETER" in v else v

    def bad(cond: Any, name: str) -> Any:
        return F.sum(F.when(cond, 1).otherwise(0)).alias(name)

    exprs = []
    for i, exp in enumerate(walk_placeholders(doc["expectations"], {})):
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
