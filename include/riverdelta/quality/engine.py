"""Where a validation's rows live: pandas in the task's own process, or Spark.

An increment of a few thousand rows costs a JVM start (15-20 s on the reference
machine) with Spark and well under a second with pandas over what delta-rs
reads, so the gate chooses by size: up to ``RIVERDELTA_VALIDATION_PANDAS_MAX_ROWS``
rows (default 250,000) it validates with GX's pandas engine, above it, or where
delta-rs cannot open the store (``hdfs://``), with GX's Spark engine.
``RIVERDELTA_VALIDATION_ENGINE=pandas|spark`` forces one. The size is known
before anything is read: Delta's add actions carry each file's row count.

Both engines run the same suite with the same result format; the cross-table
checks read the other tables with delta-rs either way, and gold = silver has a
pandas recomputation beside the Spark one (the equivalence is tested on the same
rows, planted violations included).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from riverdelta.config.settings import settings
from riverdelta.storage import roots as storage

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from riverdelta.config.registry import GoldSpec

ENGINES = ("pandas", "spark")


@dataclass
class Rows:
    """The rows one validation checks, in the engine that checks them."""

    engine: str
    df: Any  # pandas.DataFrame, or a persisted Spark DataFrame
    count: int

    def distinct(self, column: str) -> set[Any]:
        if self.engine == "pandas":
            return set(self.df[column].dropna().unique().tolist())
        return {r[0] for r in self.df.select(column).distinct().collect()}

    def release(self) -> None:
        if self.engine == "spark":
            self.df.unpersist()


def readable_by_delta_rs(uri: str) -> bool:
    # libhdfs is not part of a plain install: hdfs:// tables are Spark's.
    return storage.scheme(uri) not in ("hdfs", "viewfs")


def estimated_rows(path: str, version: int, files: list[str] | None = None) -> int | None:
    """Rows in the table at ``version`` (or in ``files`` of it), from the log's file stats.

    A file of an increment that a compaction has since rewritten is no longer in the
    snapshot: its Parquet footer says how many rows it holds.
    """
    try:
        adds = storage.delta_table(path, version=version).get_add_actions(flatten=True)
    except Exception:
        return None
    paths = [unquote(p) for p in adds.column("path").to_pylist()]
    counts = dict(zip(paths, adds.column("num_records").to_pylist(), strict=True))
    total = 0
    for p in counts if files is None else files:
        n = counts[p] if p in counts else _footer_rows(path, p)
        if n is None:
            return None  # a writer without stats: the size is unknown
        total += int(n)
    return total


def _footer_rows(table: str, file: str) -> int | None:
    import pyarrow.parquet as pq

    fs, root = storage.filesystem(table)
    try:
        with fs.open(f"{root}/{file}", "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    except OSError:
        return None


def choose_engine(estimates: list[int | None], paths: list[str]) -> tuple[str, str]:
    """(engine, why) for a validation reading ``paths`` of about ``sum(estimates)`` rows."""
    s = settings()
    if s.validation_engine != "auto":
        return s.validation_engine, f"RIVERDELTA_VALIDATION_ENGINE={s.validation_engine}"
    if not all(readable_by_delta_rs(p) for p in paths):
        return "spark", "delta-rs cannot open the store"
    if any(e is None for e in estimates):
        return "spark", "row count unknown"
    rows = sum(e for e in estimates if e is not None)
    if rows > s.validation_pandas_max_rows:
        return "spark", f"{rows} rows > {s.validation_pandas_max_rows}"
    return "pandas", f"{rows} rows <= {s.validation_pandas_max_rows}"


def delta_dataset(path: str, version: int | None):
    """A pyarrow dataset over a Delta table at a version."""
    import pyarrow.dataset as ds

    # Spark writes timestamps as INT96, which pyarrow reads as nanoseconds by default:
    # year 2999 (a planted future event) would overflow. Delta's unit is microseconds.
    options = ds.ParquetReadOptions(coerce_int96_timestamp_unit="us")
    table = storage.delta_table(path, version=version)
    return table.to_pyarrow_dataset(parquet_read_options=options)


def pandas_rows(path: str, version: int, files: list[str] | None) -> Rows:
    """The table at ``version``, or only ``files`` of it, as pandas (via delta-rs)."""
    import pyarrow.dataset as ds

    dataset = delta_dataset(path, version)
    if files is not None:
        # By path, not from the snapshot: a compaction may have rewritten them since.
        dataset = ds.FileSystemDataset.from_paths(
            files, schema=dataset.schema, format=dataset.format, filesystem=dataset.filesystem
        )
    df = dataset.to_table().to_pandas()
    return Rows("pandas", df, len(df))


def spark_rows(spark: SparkSession, path: str, version: int, files: list[str] | None) -> Rows:
    """The same rows with Spark: plain Parquet under the pinned version's schema."""
    pinned = spark.read.format("delta").option("versionAsOf", version).load(path)
    if files is None:
        df = pinned
    elif files:
        df = spark.read.schema(pinned.schema).parquet(*(storage.join(path, f) for f in files))
    else:
        df = spark.createDataFrame([], pinned.schema)
    df = df.persist()  # one pass over storage: GX's metrics and the checks read the cache
    return Rows("spark", df, df.count())


def arrow_table(path: str, version: int | None, columns: list[str] | None, where=None):
    """Selected columns of a Delta table at a version, filter pushed into the Parquet scan."""
    return delta_dataset(path, version).to_table(columns=columns, filter=where)


# --------------------------------------------------------------------------- gold in pandas


def _window_start(ts: pd.Series, seconds: int) -> pd.Series:
    # Spark's tumbling windows start at multiples of their length since the epoch.
    import pandas as pd

    us = ts.astype("int64") if ts.dt.unit == "us" else ts.dt.as_unit("us").astype("int64")
    return pd.to_datetime((us // (seconds * 1_000_000)) * seconds * 1_000_000, unit="us", utc=True)


def aggregate_gold(silver: pd.DataFrame, event_time: str, gold: GoldSpec) -> pd.DataFrame:
    """Gold recomputed from silver in pandas; the same definition as the Spark ``_aggregate``."""
    import pandas as pd

    from riverdelta.config.registry import parse_duration

    seconds = int(parse_duration(gold.window).total_seconds())
    keys = ["window_start", *gold.group_by]
    if silver.empty:
        cols = [*keys, "window_end", *(a.name for a in gold.aggregates)]
        return pd.DataFrame(columns=cols)
    df = silver.assign(window_start=_window_start(silver[event_time], seconds))
    grouped = df.groupby(keys, dropna=False, sort=False)
    out = grouped.size().rename("_rows").to_frame()
    for a in gold.aggregates:
        col = grouped[a.column] if a.column else None
        if a.fn == "count":
            out[a.name] = col.count() if col is not None else out["_rows"]
        elif a.fn == "count_distinct":
            out[a.name] = col.nunique()
        elif a.fn == "avg":
            out[a.name] = col.apply(_exact_mean)
        else:  # sum, min, max of Decimal objects stay exact
            out[a.name] = col.agg(lambda s, fn=a.fn: _exact(s.dropna(), fn))
    out = out.drop(columns="_rows").reset_index()
    out["window_end"] = out["window_start"] + pd.Timedelta(seconds=seconds)
    return out


def _exact(values: pd.Series, fn: str) -> Any:
    if values.empty:
        return None
    items = values.tolist()
    return {"sum": sum, "min": min, "max": max}[fn](items)


def _exact_mean(values: pd.Series) -> Any:
    items = values.dropna().tolist()
    if not items:
        return None
    return sum(items) / (Decimal(len(items)) if isinstance(items[0], Decimal) else len(items))


def same_value(expected: Any, actual: Any) -> bool:
    """Equal, with an average compared at the precision gold stores it."""
    import math

    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(actual, Decimal) and isinstance(expected, Decimal):
        exponent = actual.as_tuple().exponent
        step = Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0)
        return abs(expected - actual) <= step / 2
    if isinstance(actual, float) or isinstance(expected, float):
        return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-12)
    return expected == actual
