"""Where tables and checkpoints live.

Layout under the lake root (a local path, or ``s3a://`` in the distributed setup)::

    tables/<table>/            Delta tables of the live stream
    _checkpoints/<stream>/<mode>/   Structured Streaming checkpoints
    _ops/<table>/              bookkeeping Delta tables (ingest batches, ops history)
"""

from __future__ import annotations

from dataclasses import dataclass

from riverdelta.settings import settings


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def lake_root() -> str:
    return settings().lake


def table_path(table: str, root: str | None = None) -> str:
    return _join(root or lake_root(), "tables", table)


def checkpoint_path(stream: str, mode: str, root: str | None = None) -> str:
    return _join(root or lake_root(), "_checkpoints", stream, mode)


def ops_path(table: str, root: str | None = None) -> str:
    return _join(root or lake_root(), "_ops", table)


@dataclass(frozen=True)
class TableSet:
    """Physical locations of one stream's tables (live, or a rebuild's fresh set)."""

    stream: str
    paths: dict[str, str]  # layer ("bronze", "silver", "quarantine", "gold_<name>") -> path

    def __getitem__(self, layer: str) -> str:
        return self.paths[layer]

    @classmethod
    def for_stream(cls, spec, tables_root: str | None = None) -> TableSet:
        root = tables_root or _join(lake_root(), "tables")
        return cls(
            spec.name, {layer: _join(root, name) for layer, name in spec.table_names().items()}
        )
