"""Reading what passed the quality gate.

Readers never see the table's latest version, only the version its last passing
validation published (``_ops/publications/<table>.json``, see
``riverdelta.quality.publications``). Spark reads it with ``versionAsOf``; polars
and pyarrow read it through delta-rs, with no JVM.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from riverdelta.quality.history import last_validation
from riverdelta.quality.publications import NotValidatedError, publication, publications
from riverdelta.quality.tables import all_tables, latest_version

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ENGINES = ("spark", "polars", "pyarrow")

__all__ = [
    "ENGINES",
    "NotValidatedError",
    "read_validated",
    "register_validated_views",
    "tables_report",
    "validated_version",
]


def validated_version(name: str) -> tuple[str, int]:
    """(path, version) readers of ``name`` get; raises ``NotValidatedError`` if none yet."""
    pub = publication(name)
    if pub is None:
        raise NotValidatedError(
            f"no validated version of {name} yet: run `riverdelta validate {name}`"
        )
    return pub["path"], int(pub["validated_version"])


def read_validated(name: str, *, engine: str = "spark", spark: SparkSession | None = None) -> Any:
    """Table ``name`` at its validated version: a Spark DataFrame, polars or pyarrow table."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    path, version = validated_version(name)
    if engine == "spark":
        if spark is None:
            from riverdelta.launch.spark import get_spark

            spark = get_spark("riverdelta-read")
        return spark.read.format("delta").option("versionAsOf", version).load(path)
    if engine == "polars":
        import polars as pl

        from riverdelta.storage import roots as storage

        return pl.read_delta(
            storage.delta_uri(path), version=version, storage_options=storage.delta_options(path)
        )
    from riverdelta.storage import roots as storage

    return storage.delta_table(path, version=version).to_pyarrow_table()


def register_validated_views(spark: SparkSession) -> list[str]:
    """A temp view ``<table>`` per validated table, at its validated version.

    Tables never validated get no view, so a query against them fails by name
    instead of silently reading unvalidated data. Returns the registered names.
    """
    snapshot = publications()  # one consistent set of pointers for every view
    names = []
    for name in all_tables():
        pub = snapshot.get(name)
        if pub is None:
            continue
        reader = spark.read.format("delta").option("versionAsOf", int(pub["validated_version"]))
        reader.load(pub["path"]).createOrReplaceTempView(name)
        names.append(name)
    return names


def _row_count(path: str, version: int | None) -> int | None:
    """Rows at ``version`` (delta-rs answers from the log's file statistics when it can)."""
    if version is None:
        return None
    from riverdelta.storage import roots as storage

    return int(storage.delta_table(path, version=version).count())


def tables_report() -> list[dict[str, Any]]:
    """Per table: path, latest and validated versions, row counts at both, last validation."""
    from riverdelta.quality.tables import resolve_table

    report = []
    for name in all_tables():
        pub = publication(name)
        path = resolve_table(name).path  # the live location; a rebuild may have moved it
        latest = latest_version(path)
        validated = int(pub["validated_version"]) if pub else None
        last = last_validation(name)
        report.append(
            {
                "table": name,
                "path": path,
                "latest_version": latest,
                "validated_version": validated,
                "versions_behind": (latest - validated)
                if latest is not None and validated is not None
                else None,
                "rows_latest": _row_count(path, latest),
                "rows_validated": _row_count(path, validated),
                "published_at": pub["published_at"] if pub else None,
                "last_validation": {
                    "success": last["success"],
                    "validated_at": last["validated_at"].isoformat(),
                    "from_version": last["from_version"],
                    "to_version": last["to_version"],
                    "rows_checked": last["rows_checked"],
                    "full": last["full"],
                    "failed": [f"{f['expectation']}({f['column']})" for f in last["failed"]],
                    "run_id": last["run_id"],
                }
                if last
                else None,
            }
        )
    return report
