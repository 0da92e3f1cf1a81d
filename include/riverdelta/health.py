"""A stream's health from the source of truth: its checkpoint and the Kafka topic.

The checkpoint says which offsets the last committed micro-batch ended at (the
next offset to read per partition) and when it committed; Kafka says where each
partition ends now and when the oldest record not yet processed was written.
Lag and batch age computed from those two hold whether or not the driver runs,
unlike anything the driver reports about itself. The progress file written by
the driver's listener only adds rates and the last exception.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class CheckpointState:
    last_committed_batch: int | None  # None: batches were planned but none committed yet
    end_offsets: dict[int, int]  # of the last committed batch: the next offset to read
    committed_at: float | None  # mtime of commits/<N>
    batch_timestamp_ms: int | None  # batchTimestampMs of the last committed batch
    latest_planned_batch: int | None  # max N in offsets/ (may be ahead by one, in flight)


class _LocalDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self) -> bool:
        return self.root.is_dir()

    def names(self, sub: str) -> list[str]:
        try:
            return [p.name for p in (self.root / sub).iterdir()]
        except OSError:
            return []

    def read(self, sub: str, name: str) -> str:
        return (self.root / sub / name).read_text()

    def mtime(self, sub: str, name: str) -> float:
        return (self.root / sub / name).stat().st_mtime


class _RemoteDir:
    """A checkpoint on an object store or HDFS (s3a://, hdfs://), read through ``storage``."""

    def __init__(self, uri: str) -> None:
        from riverdelta import storage

        self.fs, self.root = storage.filesystem(uri)

    def exists(self) -> bool:
        return self.fs.exists(self.root)

    def names(self, sub: str) -> list[str]:
        try:
            return [
                p.rstrip("/").rsplit("/", 1)[-1]
                for p in self.fs.ls(f"{self.root}/{sub}", detail=False)
            ]
        except FileNotFoundError:
            return []

    def read(self, sub: str, name: str) -> str:
        return self.fs.cat_file(f"{self.root}/{sub}/{name}").decode()

    def mtime(self, sub: str, name: str) -> float:
        info = self.fs.info(f"{self.root}/{sub}/{name}")
        modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
        return modified.timestamp() if hasattr(modified, "timestamp") else float(modified)


def _checkpoint_dir(checkpoint_dir: str | Path) -> _LocalDir | _RemoteDir:
    from riverdelta import storage

    text = str(checkpoint_dir)
    if storage.is_local(text):
        return _LocalDir(storage.local_path(text))
    return _RemoteDir(text)


def _batch_ids(names: list[str]) -> list[int]:
    # Only "<N>": Spark's ".N.crc" checksums and ".N.<uuid>.tmp" in-flight writes are not batches.
    return sorted(int(n) for n in names if n.isdigit())


def parse_offsets_file(
    text: str, topic: str | None = None
) -> tuple[dict[str, Any], dict[int, int]]:
    """(batch metadata, end offsets per partition of ``topic``) from an ``offsets/<N>`` file.

    Line 1 is the version, line 2 the metadata, then one line per source: its
    offsets JSON, or "-" for a source with none.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v"):
        raise ValueError(f"not a streaming offsets file (first line {lines[:1]!r})")
    metadata = json.loads(lines[1]) if len(lines) > 1 and lines[1].strip() else {}
    offsets: dict[int, int] = {}
    for line in lines[2:]:
        line = line.strip()
        if not line or line == "-":
            continue
        source = json.loads(line)
        if not isinstance(source, dict):
            continue
        for name, partitions in source.items():
            if (topic is None or name == topic) and isinstance(partitions, dict):
                offsets.update({int(p): int(o) for p, o in partitions.items()})
    return metadata, offsets


def read_checkpoint(checkpoint_dir: str | Path, topic: str | None = None) -> CheckpointState | None:
    """The last committed batch of a Structured Streaming checkpoint.

    None when there is no checkpoint or nothing was ever planned; a state with
    ``last_committed_batch=None`` when batches were planned but none committed.
    """
    cp = _checkpoint_dir(checkpoint_dir)
    if not cp.exists():
        return None
    planned = _batch_ids(cp.names("offsets"))
    committed = set(_batch_ids(cp.names("commits")))
    if not planned:
        return None
    # A commit without its offsets file (purged, or a half-copied checkpoint) tells nothing.
    done = [n for n in planned if n in committed]
    if not done:
        return CheckpointState(None, {}, None, None, planned[-1])
    last = done[-1]
    metadata, offsets = parse_offsets_file(cp.read("offsets", str(last)), topic)
    ts = metadata.get("batchTimestampMs")
    return CheckpointState(
        last_committed_batch=last,
        end_offsets=offsets,
        committed_at=cp.mtime("commits", str(last)),
        batch_timestamp_ms=int(ts) if ts is not None else None,
        latest_planned_batch=planned[-1],
    )


# --------------------------------------------------------------------------- Kafka

DEFAULT_TIMEOUT = 10.0


def _consumer(bootstrap: str, **conf: Any):
    """A look-up consumer built by kafka_client with the environment's security."""
    from riverdelta import kafka_client

    return kafka_client.consumer(bootstrap, **conf)


def _explain_refusal(bootstrap: str) -> None:
    """Raise the one-line reason when Kafka refuses this client's setup (password, TLS, ...)."""
    from riverdelta import kafka_client

    kafka_client.check(kafka_client.config_for(bootstrap), timeout=3.0)


def watermarks(
    bootstrap: str, topic: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[int, tuple[int, int]]:
    """partition -> (earliest retained offset, high watermark)."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        except Exception:
            _explain_refusal(bootstrap)
            raise
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic} not found on {bootstrap}: {meta and meta.error}")
        return {
            p: consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=timeout, cached=False
            )
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, timeout: float = DEFAULT_TIMEOUT) -> dict[int, int]:
    """partition -> high watermark (the offset the next record will get)."""
    return {p: hi for p, (_, hi) in watermarks(bootstrap, topic, timeout).items()}


def earliest_offsets(
    bootstrap: str, topic: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[int, int]:
    """partition -> earliest offset still retained."""
    return {p: lo for p, (lo, _) in watermarks(bootstrap, topic, timeout).items()}


def oldest_unprocessed_timestamps(
    bootstrap: str, topic: str, positions: dict[int, int], timeout: float = DEFAULT_TIMEOUT
) -> dict[int, float | None]:
    """partition -> Kafka timestamp (seconds) of the record at ``positions[partition]``.

    Pass only partitions with lag. None where no record could be read in time
    or the record carries no timestamp.
    """
    if not positions:
        return {}
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, TopicPartition

    found: dict[int, float | None] = dict.fromkeys(positions)
    # A position that expired meanwhile reads the oldest retained record, not the newest.
    consumer = _consumer(
        bootstrap, **{"enable.partition.eof": True, "auto.offset.reset": "earliest"}
    )
    try:
        consumer.assign([TopicPartition(topic, p, off) for p, off in positions.items()])
        pending = set(positions)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            if msg is None or msg.partition() not in pending:
                continue
            pending.discard(msg.partition())
            if msg.error() is not None:
                continue  # end of partition, or the record is gone: no timestamp
            kind, ms = msg.timestamp()
            found[msg.partition()] = None if kind == TIMESTAMP_NOT_AVAILABLE else ms / 1000.0
    finally:
        consumer.close()
    return found


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class Health:
    checked_at: float
    partition_lag: dict[int, int] = field(default_factory=dict)
    lag_records: int | None = None  # None: Kafka could not be asked
    lag_seconds: float | None = None  # age of the oldest unprocessed record; 0 without lag
    last_batch_id: int | None = None
    last_batch_age_seconds: float | None = None  # None: never committed
    latest_planned_batch_id: int | None = None
    committed_offsets: dict[int, int] = field(default_factory=dict)
    topic_end_offsets: dict[int, int] = field(default_factory=dict)
    input_rows_per_second: float | None = None
    processed_rows_per_second: float | None = None
    last_exception: str | None = None
    kafka_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # JSON object keys are strings; from_dict turns them back into partitions.
        for key in ("partition_lag", "committed_offsets", "topic_end_offsets"):
            data[key] = {str(p): v for p, v in data[key].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Health:
        """Accepts a larger report (e.g. ``riverdelta status`` output) and takes its fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("partition_lag", "committed_offsets", "topic_end_offsets"):
            values[key] = {int(p): int(v) for p, v in (values.get(key) or {}).items()}
        values.setdefault("checked_at", time.time())
        return cls(**values)


def read_progress(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _rate(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def assemble_health(
    state: CheckpointState | None,
    watermarks_by_partition: dict[int, tuple[int, int]] | None,
    timestamps: dict[int, float | None],
    *,
    now: float,
    progress: dict[str, Any] | None = None,
    kafka_error: str | None = None,
) -> Health:
    """Pure: health from the checkpoint, (earliest, end) per partition and record timestamps."""
    progress = progress or {}
    committed = dict(state.end_offsets) if state else {}
    last_batch = state.last_committed_batch if state else None
    age = None
    if state is not None and state.committed_at is not None:
        age = max(0.0, now - state.committed_at)
    partition_lag: dict[int, int] = {}
    lag_records: int | None = None
    lag_seconds: float | None = None
    if watermarks_by_partition is not None:
        positions = unprocessed_positions(committed, watermarks_by_partition)
        partition_lag = {
            p: max(0, watermarks_by_partition[p][1] - pos) for p, pos in positions.items()
        }
        lag_records = sum(partition_lag.values())
        if lag_records == 0:
            lag_seconds = 0.0
        else:
            seen: list[float] = [
                ts
                for p, n in partition_lag.items()
                if n > 0 and (ts := timestamps.get(p)) is not None
            ]
            lag_seconds = max(0.0, now - min(seen)) if seen else None
    return Health(
        checked_at=now,
        partition_lag=partition_lag,
        lag_records=lag_records,
        lag_seconds=lag_seconds,
        last_batch_id=last_batch,
        last_batch_age_seconds=age,
        latest_planned_batch_id=state.latest_planned_batch if state else None,
        committed_offsets=committed,
        topic_end_offsets={p: hi for p, (_, hi) in (watermarks_by_partition or {}).items()},
        input_rows_per_second=_rate(progress.get("input_rows_per_second")),
        processed_rows_per_second=_rate(progress.get("processed_rows_per_second")),
        last_exception=progress.get("last_exception"),
        kafka_error=kafka_error,
    )


def unprocessed_positions(
    committed: dict[int, int], watermarks_by_partition: dict[int, tuple[int, int]]
) -> dict[int, int]:
    """partition -> offset of the next record to process.

    A partition the checkpoint has no offset for (new, or nothing committed yet)
    counts from the earliest retained offset; a position below it (the records
    expired unread) also starts there, since nothing older can still be read.
    """
    out = {}
    for p, (lo, _) in watermarks_by_partition.items():
        pos = committed.get(p)
        out[p] = lo if pos is None or pos < lo else pos
    return out


def compute_health(
    checkpoint_dir: str | Path,
    bootstrap: str,
    topic: str,
    *,
    now: float | None = None,
    progress_file: Path | None = None,
    watermarks_fn: Callable[[str, str], dict[int, tuple[int, int]]] = watermarks,
    timestamps_fn: Callable[
        [str, str, dict[int, int]], dict[int, float | None]
    ] = oldest_unprocessed_timestamps,
) -> Health:
    """Health of one stream; the Kafka look-ups are parameters so tests need no broker.

    An unreachable Kafka does not raise: the lag fields are None and
    ``kafka_error`` says why, and ``check_thresholds`` reports that as a breach.
    """
    now = time.time() if now is None else now
    state = read_checkpoint(checkpoint_dir, topic)
    marks: dict[int, tuple[int, int]] | None = None
    timestamps: dict[int, float | None] = {}
    error = None
    try:
        marks = watermarks_fn(bootstrap, topic)
        positions = unprocessed_positions(state.end_offsets if state else {}, marks)
        lagging = {p: pos for p, pos in positions.items() if marks[p][1] > pos}
        timestamps = timestamps_fn(bootstrap, topic, lagging)
    except Exception as exc:
        # Health checks run where Kafka may be down; that is a finding, not a crash.
        error = f"{type(exc).__name__}: {exc}"
    return assemble_health(
        state,
        marks,
        timestamps,
        now=now,
        progress=read_progress(progress_file),
        kafka_error=error,
    )


# --------------------------------------------------------------------------- thresholds


def is_stuck(health: Health, max_batch_age_seconds: float) -> bool:
    """No batch committed for too long while records wait: restarting may help."""
    if not health.lag_records:
        return False
    age = health.last_batch_age_seconds
    # Never committed with records waiting: stuck once it has had the same time to start.
    return age is None or age > max_batch_age_seconds


def check_thresholds(
    health: Health, max_lag_seconds: float, max_batch_age_seconds: float
) -> list[str]:
    """One actionable message per breached threshold; empty when healthy."""
    found: list[str] = []
    if health.kafka_error is not None:
        found.append(
            f"lag unknown: Kafka could not be asked ({health.kafka_error}); check the broker "
            "(`riverdelta status`, the broker log) before trusting any other health figure"
        )
    lag = health.lag_seconds
    if lag is not None and lag > max_lag_seconds:
        found.append(
            f"lag {lag:.0f}s exceeds max_lag_seconds={max_lag_seconds:g} by "
            f"{lag - max_lag_seconds:.0f}s ({health.lag_records} records behind): the stream is "
            "falling behind; check `riverdelta status` and the driver log, consider a higher "
            "trigger rate / maxOffsetsPerTrigger or a backfill"
        )
    elif lag is None and health.lag_records:
        found.append(
            f"{health.lag_records} records behind but their age is unknown (the oldest "
            "unprocessed record could not be read); check the broker and the driver log"
        )
    age = health.last_batch_age_seconds
    if health.lag_records and age is None:
        found.append(
            f"no batch ever committed while {health.lag_records} records wait: the driver is not "
            "processing; check `riverdelta status` and the driver log for the start-up error"
        )
    elif health.lag_records and age is not None and age > max_batch_age_seconds:
        found.append(
            f"last batch {age:.0f}s ago exceeds max_batch_age_seconds={max_batch_age_seconds:g} "
            f"by {age - max_batch_age_seconds:.0f}s while {health.lag_records} records wait: the "
            "stream looks stuck; check the driver log, restart it (`riverdelta restart`) if it "
            "does not recover"
        )
    return found
