"""The tables the quality gate validates: their names, layers, paths and latest versions.

Every table comes from the stream registry (``include/streams.yaml``): a stream
has a bronze, silver and quarantine table and one table per gold aggregate.

Airflow DAG files import this module: heavy libraries are imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from riverdelta.storage import roots as storage
from riverdelta.storage.lake import TableSet

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from riverdelta.config.registry import GoldSpec, StreamSpec

# Layers whose commits are blind appends: they can be validated increment by increment.
APPEND_ONLY_LAYERS = ("bronze", "silver", "quarantine")


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


def gold_spec(spec: StreamSpec, name: str) -> GoldSpec:
    for gold in spec.gold:
        if gold.name == name:
            return gold
    raise KeyError(f"stream {spec.name!r} has no gold {name!r}")


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
