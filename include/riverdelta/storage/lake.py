"""Where tables and checkpoints live.

Layout under the storage root (``settings().lake``: a path, ``file://``, ``s3a://``
or ``hdfs://``; ``storage`` knows what each scheme needs)::

    tables/<table>/            Delta tables of the live stream
    _checkpoints/<stream>/<mode>/   Structured Streaming checkpoints
    _ops/<table>/              bookkeeping Delta tables (ingest batches, ops history)

and in the control directory (``settings().control``: ``<lake>/_ops`` when the lake
is on a local disk, a POSIX directory of the runtime home otherwise), the small
files that need rename and flock, which object stores do not offer::

    locations/<stream>.json    where the stream's live tables and checkpoint are
    state/<stream>.json        desired state, deployment, restarts
    locks/, publications/      backfill leases, validated-version pointers

A stream's live tables start under ``tables/``; a ``rebuild`` backfill replays into
a fresh root (``tables@<run>/``) and, at hand-over, moves the stream's location
there. Everything that needs "the live tables" asks ``stream_location``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riverdelta.config.settings import settings
from riverdelta.storage import files


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def control_dir(name: str) -> Path:
    """A directory of control files (locks, pointers) on a POSIX filesystem."""
    return settings().control / name


def lake_root() -> str:
    return settings().lake


def table_path(table: str, root: str | None = None) -> str:
    return _join(root or lake_root(), "tables", table)


def checkpoint_path(stream: str, mode: str, root: str | None = None) -> str:
    return _join(root or lake_root(), "_checkpoints", stream, mode)


def ops_path(table: str, root: str | None = None) -> str:
    return _join(root or lake_root(), "_ops", table)


def _location_file(stream: str) -> Path:
    return control_dir("locations") / f"{stream}.json"


def stream_location(stream: str) -> dict[str, Any]:
    """``{tables_root, checkpoint, ...}`` of the stream's live tables (defaults until a rebuild)."""
    path = _location_file(stream)
    if path.exists():
        return json.loads(path.read_text())
    return {
        "stream": stream,
        "tables_root": _join(lake_root(), "tables"),
        "checkpoint": checkpoint_path(stream, "live"),
    }


def set_stream_location(stream: str, tables_root: str, checkpoint: str, by: str) -> dict[str, Any]:
    """Move the stream's live location (write + rename: readers see old or new)."""
    current = stream_location(stream)
    doc = {
        "stream": stream,
        "tables_root": tables_root,
        "checkpoint": checkpoint,
        "since": time.time(),
        "by": by,
        "previous": {k: current[k] for k in ("tables_root", "checkpoint")},
    }
    target = _location_file(stream)
    files.write_atomic(target, json.dumps(doc, indent=2))
    return doc


def live_checkpoint(stream: str) -> str:
    return stream_location(stream)["checkpoint"]


@dataclass(frozen=True)
class TableSet:
    """Physical locations of one stream's tables (live, or a rebuild's fresh set)."""

    stream: str
    paths: dict[str, str]  # layer ("bronze", "silver", "quarantine", "gold_<name>") -> path

    def __getitem__(self, layer: str) -> str:
        return self.paths[layer]

    @classmethod
    def for_stream(cls, spec, tables_root: str | None = None) -> TableSet:
        root = tables_root or stream_location(spec.name)["tables_root"]
        return cls(
            spec.name, {layer: _join(root, name) for layer, name in spec.table_names().items()}
        )
