"""What an ingest job is: its stream, mode, tables, checkpoint and Delta txn app id.

No Spark here: the job is made (and its checkpoint claimed) before a session
exists, and Airflow-side code reads the mode and the checkpoint marker too.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from riverdelta.config.registry import StreamSpec, TopicSource, parse_duration
from riverdelta.errors import RiverdeltaError
from riverdelta.ops.health import TP
from riverdelta.storage import roots as storage
from riverdelta.storage.lake import TableSet, checkpoint_path, live_checkpoint, ops_path

BATCHES_TABLE = "ingest_batches"
MARKER = "_riverdelta.json"


class IngestMode(StrEnum):
    """How a driver ingests: the live stream, or a bounded replay (rebuild, backfill).

    A ``str`` enum (``StrEnum`` is ``str`` + ``Enum`` whose ``str()`` and f-strings give
    the value): the value is what CLI arguments, checkpoint markers, query names and
    the batches table hold, so ``"live"`` and ``IngestMode.LIVE`` compare equal.
    """

    LIVE = "live"
    REPLAY = "replay"


@dataclass
class DriverState:
    """What a driver carries from batch to batch instead of reading it back from tables."""

    hwm: datetime | None = None  # event-time high-water mark of the batches before
    hwm_known_before: int | None = None  # hwm covers this app's batches < this id
    last_batch: int | None = None  # the newest batch this driver committed
    tables_seen: set[str] = field(default_factory=set)  # layers known to exist
    gold: object | None = None  # gold.GoldRefresher, started with the query


class CheckpointMismatchError(RiverdeltaError, ValueError):
    pass


@dataclass(frozen=True)
class IngestJob:
    spec: StreamSpec
    mode: IngestMode
    tables: TableSet
    checkpoint: str
    txn_app_id: str  # Delta's txnAppId of every write (the marker's "app_id")
    batches_path: str
    until: dict[TP, int] | None = None  # exclusive end offset per topic-partition (ranges)
    skip_present: bool = False  # range backfill into live tables
    state: DriverState = field(default_factory=DriverState, compare=False, repr=False)

    @property
    def watermark(self) -> timedelta:
        return parse_duration(self.spec.watermark)

    @property
    def watermark_seconds(self) -> int:
        """The watermark in whole seconds (at least 1): the de-duplication's bucket size."""
        return max(int(self.watermark.total_seconds()), 1)


# --------------------------------------------------------------------------- checkpoint


def checkpoint_marker(checkpoint: str) -> dict | None:
    """The checkpoint's Riverdelta marker (stream, source, mode, app id), None if unclaimed."""
    fs, path = storage.filesystem(checkpoint)
    marker = f"{path}/{MARKER}"
    if not fs.exists(marker):
        return None
    return json.loads(fs.cat_file(marker))


def _marked_source(marker: dict) -> str:
    """The source a marker records; markers written before several topics name one 'topic'."""
    if "topic" in marker:
        return str(TopicSource((marker["topic"],)))
    return str(TopicSource(tuple(marker.get("topics") or ()), marker.get("topic_pattern")))


def claim_checkpoint(checkpoint: str, spec: StreamSpec, mode: IngestMode | str) -> str:
    """Return the checkpoint's txn app id, creating its marker; refuse another stream's checkpoint.

    The txn app id is new for every new checkpoint: batch ids restart at 0 with a new
    checkpoint, and reusing an old txnAppId would make Delta skip them as done. The
    marker is one object written once, so this works on object stores as on disks.
    """
    data = checkpoint_marker(checkpoint)
    if data is not None:
        if data.get("stream") != spec.name:
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint} belongs to stream {data.get('stream')!r} "
                f"({_marked_source(data)}), not to {spec.name!r} ({spec.source}). "
                "Point --checkpoint at this stream's own checkpoint."
            )
        if _marked_source(data) != str(spec.source):
            # Spark does not support changing a Kafka query's subscription on its checkpoint.
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint} of stream {spec.name!r} reads {_marked_source(data)}, "
                f"but the registry now says {spec.source}. A changed source needs a new "
                "checkpoint: `riverdelta stop`, move the old one aside, start again (it "
                "resumes after what the tables hold)."
            )
        return data["app_id"]  # the marker's key for the txn app id, kept for old checkpoints
    fs, path = storage.filesystem(checkpoint)
    if fs.exists(path) and fs.ls(path, detail=False):
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint} exists but was not made by Riverdelta (no {MARKER}); "
            "refusing to guess which stream it belongs to."
        )
    fs.makedirs(path, exist_ok=True)
    txn_app_id = f"riverdelta-{spec.name}-{mode}-{uuid.uuid4().hex[:12]}"
    marker = {
        "stream": spec.name,
        "topics": list(spec.topics),
        "topic_pattern": spec.topic_pattern,
        "mode": str(mode),
        "app_id": txn_app_id,
    }
    fs.pipe_file(f"{path}/{MARKER}", json.dumps(marker).encode())
    return txn_app_id


def make_job(
    spec: StreamSpec,
    mode: IngestMode | str,
    *,
    checkpoint: str | None = None,
    tables_root: str | None = None,
    ops_root: str | None = None,
    until: dict[int, int] | None = None,
    skip_present: bool = False,
) -> IngestJob:
    try:
        mode = IngestMode(mode)
    except ValueError:
        raise ValueError(f"mode {mode!r}: expected live or replay") from None
    if (until is not None or skip_present) and mode != IngestMode.REPLAY:
        raise ValueError("--until and --skip-present belong to replays (backfills), not live mode")
    if checkpoint is None:
        checkpoint = (
            live_checkpoint(spec.name)
            if mode == IngestMode.LIVE
            else checkpoint_path(spec.name, str(mode))
        )
    cp = checkpoint
    txn_app_id = claim_checkpoint(cp, spec, mode)
    return IngestJob(
        spec=spec,
        mode=mode,
        tables=TableSet.for_stream(spec, tables_root),
        checkpoint=cp,
        txn_app_id=txn_app_id,
        batches_path=ops_path(BATCHES_TABLE, ops_root),
        until=until,
        skip_present=skip_present,
    )
