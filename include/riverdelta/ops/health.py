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

from riverdelta.config.registry import TopicSource

# A topic-partition: every offset, lag and range is keyed by one (Spark's JSON nests them).
TP = tuple[str, int]


def nest(flat: dict[TP, Any]) -> dict[str, dict[str, Any]]:
    """``{(topic, p): v}`` -> ``{topic: {"p": v}}``, the shape of Spark's offsets JSON."""
    out: dict[str, dict[str, Any]] = {}
    for (topic, part), value in sorted(flat.items()):
        out.setdefault(topic, {})[str(part)] = value
    return out


def flatten(nested: dict[str, Any]) -> dict[TP, int]:
    """``{topic: {"p": v}}`` -> ``{(topic, p): v}``; entries of another shape are skipped."""
    return {
        (topic, int(part)): int(value)
        for topic, parts in (nested or {}).items()
        if isinstance(parts, dict)
        for part, value in parts.items()
    }


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class CheckpointState:
    last_committed_batch: int | None  # None: batches were planned but none committed yet
    end_offsets: dict[TP, int]  # of the last committed batch: the next offset to read
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
        from riverdelta.storage import roots as storage

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
    from riverdelta.storage import roots as storage

    text = str(checkpoint_dir)
    if storage.is_local(text):
        return _LocalDir(storage.local_path(text))
    return _RemoteDir(text)


def _batch_ids(names: list[str]) -> list[int]:
    # Only "<N>": Spark's ".N.crc" checksums and ".N.<uuid>.tmp" in-flight writes are not batches.
    return sorted(int(n) for n in names if n.isdigit())


def parse_offsets_file(text: str) -> tuple[dict[str, Any], dict[TP, int]]:
    """(batch metadata, end offset per topic-partition) from an ``offsets/<N>`` file.

    Line 1 is the version, line 2 the metadata, then one line per source: its
    offsets JSON, or "-" for a source with none.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v"):
        raise ValueError(f"not a streaming offsets file (first line {lines[:1]!r})")
    metadata = json.loads(lines[1]) if len(lines) > 1 and lines[1].strip() else {}
    offsets: dict[TP, int] = {}
    for line in lines[2:]:
        line = line.strip()
        if line and line != "-" and isinstance(source := json.loads(line), dict):
            offsets.update(flatten(source))
    return metadata, offsets


def read_checkpoint(checkpoint_dir: str | Path) -> CheckpointState | None:
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
    metadata, offsets = parse_offsets_file(cp.read("offsets", str(last)))
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
    from riverdelta.kafka import client as kafka_client

    return kafka_client.consumer(bootstrap, **conf)


def _admin(bootstrap: str):
    """An admin client built by kafka_client with the environment's security."""
    from riverdelta.kafka import client as kafka_client

    return kafka_client.admin(bootstrap)


def _explain_refusal(bootstrap: str) -> None:
    """Raise the one-line reason when Kafka refuses this client's setup (password, TLS, ...)."""
    from riverdelta.kafka import client as kafka_client

    kafka_client.check(kafka_client.config_for(bootstrap), timeout=3.0)


def _partitions(client, bootstrap: str, source: TopicSource, timeout: float) -> list[TP]:
    """Every partition of the source's topics now: a pattern is matched against the cluster.

    ``client`` is a consumer or an admin client: both answer ``list_topics``.
    """
    # One named topic is asked for alone; several, or a pattern, need the whole listing.
    alone = source.topics[0] if len(source.topics) == 1 and not source.pattern else None
    try:
        listed = client.list_topics(alone, timeout=timeout).topics
    except Exception:
        _explain_refusal(bootstrap)
        raise
    names = [t for t in listed if source.matches(t)] if source.pattern else source.topics
    found: list[TP] = []
    for topic in sorted(names):
        meta = listed.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic} not found on {bootstrap}: {meta and meta.error}")
        found.extend((topic, p) for p in sorted(meta.partitions))
    return found


def source_topics(bootstrap: str, source: TopicSource | str, timeout: float = DEFAULT_TIMEOUT):
    """The topics a source reads now (a pattern's matches may grow), sorted."""
    consumer = _consumer(bootstrap)
    try:
        return sorted(
            {t for t, _ in _partitions(consumer, bootstrap, TopicSource.of(source), timeout)}
        )
    finally:
        consumer.close()


def watermarks(
    bootstrap: str, source: TopicSource | str, timeout: float = DEFAULT_TIMEOUT
) -> dict[TP, tuple[int, int]]:
    """(topic, partition) -> (earliest retained offset, high watermark).

    The high watermark is read_committed's (the last stable offset), librdkafka's
    default isolation: an open transaction's records count once it commits.
    Each end is one ListOffsets request per leader, not one per partition.
    """
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = _admin(bootstrap)
    tps = [
        TopicPartition(t, p)
        for t, p in _partitions(admin, bootstrap, TopicSource.of(source), timeout)
    ]
    if not tps:
        return {}
    ask = {"isolation_level": IsolationLevel.READ_COMMITTED, "request_timeout": timeout}
    low = admin.list_offsets(dict.fromkeys(tps, OffsetSpec.earliest()), **ask)
    high = admin.list_offsets(dict.fromkeys(tps, OffsetSpec.latest()), **ask)
    return {
        (tp.topic, tp.partition): (low[tp].result().offset, high[tp].result().offset) for tp in tps
    }


def offsets_for_time(bootstrap: str, at: float, high: dict[TP, int]) -> dict[TP, int]:
    """First offset per topic-partition of ``high`` whose timestamp is >= ``at`` (else its end)."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap)
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(t, p, int(at * 1000)) for t, p in high], timeout=10
        )
    finally:
        consumer.close()
    return {
        (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else high[(tp.topic, tp.partition)])
        for tp in found
    }


def end_offsets(
    bootstrap: str, source: TopicSource | str, timeout: float = DEFAULT_TIMEOUT
) -> dict[TP, int]:
    """(topic, partition) -> high watermark (the offset the next record will get)."""
    return {tp: hi for tp, (_, hi) in watermarks(bootstrap, source, timeout).items()}


def oldest_unprocessed_timestamps(
    bootstrap: str, positions: dict[TP, int], timeout: float = DEFAULT_TIMEOUT
) -> dict[TP, float | None]:
    """(topic, partition) -> Kafka timestamp (seconds) of the record at its position.

    Pass only partitions with lag. None where no record could be read in time
    or the record carries no timestamp.
    """
    if not positions:
        return {}
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, TopicPartition

    found: dict[TP, float | None] = dict.fromkeys(positions)
    # A position that expired meanwhile reads the oldest retained record, not the newest.
    consumer = _consumer(
        bootstrap, **{"enable.partition.eof": True, "auto.offset.reset": "earliest"}
    )
    try:
        consumer.assign([TopicPartition(t, p, off) for (t, p), off in positions.items()])
        pending = set(positions)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            tp = (msg.topic(), msg.partition()) if msg is not None else None
            if tp not in pending:
                continue
            pending.discard(tp)
            if msg.error() is not None:
                continue  # end of partition, or the record is gone: no timestamp
            kind, ms = msg.timestamp()
            found[tp] = None if kind == TIMESTAMP_NOT_AVAILABLE else ms / 1000.0
    finally:
        consumer.close()
    return found


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class Health:
    checked_at: float
    partition_lag: dict[TP, int] = field(default_factory=dict)
    lag_records: int | None = None  # None: Kafka could not be asked
    lag_seconds: float | None = None  # age of the oldest unprocessed record; 0 without lag
    last_batch_id: int | None = None
    last_batch_age_seconds: float | None = None  # None: never committed
    latest_planned_batch_id: int | None = None
    committed_offsets: dict[TP, int] = field(default_factory=dict)
    topic_end_offsets: dict[TP, int] = field(default_factory=dict)
    input_rows_per_second: float | None = None
    processed_rows_per_second: float | None = None
    last_exception: str | None = None
    kafka_error: str | None = None
    query_started_at: float | None = None  # the driver's query last (re)started, by its listener

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # JSON object keys are strings: {topic: {partition: n}}, as Spark writes offsets.
        for key in _OFFSET_FIELDS:
            data[key] = nest(getattr(self, key))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Health:
        """Accepts a larger report (e.g. ``riverdelta status`` output) and takes its fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in _OFFSET_FIELDS:
            values[key] = flatten(values.get(key) or {})
        values.setdefault("checked_at", time.time())
        return cls(**values)


_OFFSET_FIELDS = ("partition_lag", "committed_offsets", "topic_end_offsets")


def read_progress(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def assemble_health(
    state: CheckpointState | None,
    watermarks_by_partition: dict[TP, tuple[int, int]] | None,
    timestamps: dict[TP, float | None],
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
    partition_lag: dict[TP, int] = {}
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
        input_rows_per_second=_finite(progress.get("input_rows_per_second")),
        processed_rows_per_second=_finite(progress.get("processed_rows_per_second")),
        last_exception=progress.get("last_exception"),
        query_started_at=_finite(progress.get("query_started_at")),
        kafka_error=kafka_error,
    )


def unprocessed_positions(
    committed: dict[TP, int], watermarks_by_partition: dict[TP, tuple[int, int]]
) -> dict[TP, int]:
    """(topic, partition) -> offset of the next record to process.

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
    source: TopicSource | str,
    *,
    now: float | None = None,
    progress_file: Path | None = None,
    watermarks_fn: Callable[[str, Any], dict[TP, tuple[int, int]]] = watermarks,
    timestamps_fn: Callable[[str, dict[TP, int]], dict[TP, float | None]] = (
        oldest_unprocessed_timestamps
    ),
) -> Health:
    """Health of one stream; the Kafka look-ups are parameters so tests need no broker.

    An unreachable Kafka does not raise: the lag fields are None and
    ``kafka_error`` says why, and ``check_thresholds`` reports that as a breach.
    A topic a pattern matches since the last batch is lag from its earliest offset.
    """
    now = time.time() if now is None else now
    state = read_checkpoint(checkpoint_dir)
    marks: dict[TP, tuple[int, int]] | None = None
    timestamps: dict[TP, float | None] = {}
    error = None
    try:
        marks = watermarks_fn(bootstrap, source)
        positions = unprocessed_positions(state.end_offsets if state else {}, marks)
        lagging = {tp: pos for tp, pos in positions.items() if marks[tp][1] > pos}
        timestamps = timestamps_fn(bootstrap, lagging)
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


def is_stuck(
    health: Health, max_batch_age_seconds: float, driver_up_seconds: float | None = None
) -> bool:
    """No batch committed for too long while records wait: restarting may help.

    A driver up for less than the allowed batch age (``driver_up_seconds``) is never
    stuck: the last commit may predate it by far (the stream was stopped while
    records piled up), and a restart now would only throw away its JVM start and
    its first batch.
    """
    if not health.lag_records:
        return False
    if starting(driver_up_seconds, max_batch_age_seconds):
        return False
    age = health.last_batch_age_seconds
    # Never committed with records waiting: stuck once it has had the same time to start.
    return age is None or age > max_batch_age_seconds


def starting(driver_up_seconds: float | None, max_batch_age_seconds: float) -> bool:
    """The driver has not yet had the allowed batch age to commit: judge it later."""
    return driver_up_seconds is not None and driver_up_seconds <= max_batch_age_seconds


# A JVM, its jars and the Kafka start position take 15-60 s here before the query runs.
STARTUP_ALLOWANCE_SECONDS = 120.0


def driver_up_seconds(
    started_at: float | None, query_started_at: float | None, now: float
) -> float | None:
    """How long the driver has had to commit a batch; None when nothing says it started.

    Counted from its query's start (the listener's record) once the query started
    after this deployment; before that, from the process start less a start-up
    allowance, so a driver whose JVM never gets to its query is still caught.
    """
    if not started_at:
        return None
    if query_started_at and query_started_at >= started_at:
        return max(0.0, now - query_started_at)
    return max(0.0, now - started_at - STARTUP_ALLOWANCE_SECONDS)


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
