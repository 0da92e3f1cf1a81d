"""Gold back to Kafka: each updated (group, window) row, once per committed refresh.

A gold table may declare ``kafka_sink: {topic, key}`` in the registry. After the
gold refresher (``riverdelta.stream.gold``) has rewritten the windows a pass touched, the
sink reads those windows' rows from the gold table (delta-rs, on the driver: a
few files) and sends the rows that changed since the last committed refresh, as
JSON, with a transactional producer. The same transaction carries one *marker*
record to a one-partition control topic (``<topic>-marker``, compacted): the
refresh's sequence number, the app id and newest ingest batch it covers, and the
gold table version its rows were read from. ``commit_transaction`` makes the
rows and the marker visible together, or neither.

Restart (after a SIGKILL anywhere): the new driver's producer uses the same
``transactional.id`` (``riverdelta-<stream>-<gold>-<topic>``), so
``init_transactions`` fences the dead driver's producer and aborts (or finishes
committing) its open transaction. Then the last *committed* marker is read with a
``read_committed`` consumer. The refresher re-announces the windows of this app's
silver rows newer than min(gold's txn version, the marker's batch), so a refresh
whose gold write committed but whose Kafka transaction did not is sent again;
its rows are diffed against the gold version the marker names, so nothing
committed is sent twice and nothing written to gold is lost. The Delta tables
are the source of truth, the marker only says how far Kafka has been told.

What a reader sees:
  * ``isolation.level=read_committed``: every (key, window) update of every
    committed refresh exactly once (``_refresh`` increases by one per committed
    refresh; the newest record per key and window equals the gold row).
  * ``read_uncommitted`` (the Java consumer's default; librdkafka's default is
    read_committed): additionally the records of aborted transactions (a driver
    killed mid-send, a send that failed), which may carry a ``_refresh`` number
    that a later committed refresh reuses with other values, and the marker
    records if it reads the control topic. Such a reader sees every update at
    least once, not exactly once.

Records: key ``{"<key column>": ..., "window_start": "...Z"}``; value the gold row
(group columns, ``window_start``, ``window_end``, aggregates, ``updated_at``)
plus ``_stream``, ``_gold``, ``_refresh``, ``_batch`` and ``_app_id``. Timestamps
are ISO-8601 UTC strings, decimals are JSON strings (exact, never a float).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from riverdelta.config.registry import GoldSpec, KafkaSinkSpec, StreamSpec
from riverdelta.errors import RiverdeltaError

log = logging.getLogger("riverdelta.stream.kafka_sink")

MARKER_KEY = b"riverdelta-marker"
# Broker-side bound of an open transaction: a driver killed mid-send holds back
# read_committed readers until its successor fences it or this much time passes.
TRANSACTION_TIMEOUT_MS = 60_000
META_FIELDS = ("_stream", "_gold", "_refresh", "_batch", "_app_id")


class SinkError(RiverdeltaError, RuntimeError):
    """Kafka did not take a refresh; the message says which and why (one line)."""


def transactional_id(stream: str, gold: GoldSpec) -> str:
    """Stable across restarts (fencing needs that), distinct per stream, gold and topic."""
    assert gold.kafka_sink is not None
    return f"riverdelta-{stream}-{gold.name}-{gold.kafka_sink.topic}"


# --------------------------------------------------------------------------- encoding


def json_value(value: Any) -> Any:
    """A gold value as JSON: timestamps ISO-8601 UTC (``Z``), decimals exact strings."""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # delta-rs gives UTC; a naive value is UTC too
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
        return text.replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return str(value)
    return value


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def row_identity(gold: GoldSpec, row: dict) -> tuple:
    """What makes a gold row one (group, window)."""
    return tuple(json_value(row[c]) for c in (*gold.group_by, "window_start"))


def encode_key(sink: KafkaSinkSpec, row: dict) -> bytes:
    return _dumps(
        {
            **{c: json_value(row[c]) for c in sink.key},
            "window_start": json_value(row["window_start"]),
        }
    )


def encode_value(stream: str, gold: GoldSpec, row: dict, marker: Marker) -> bytes:
    columns = (*gold.group_by, "window_start", "window_end", *(a.name for a in gold.aggregates))
    out = {c: json_value(row[c]) for c in columns}
    if "updated_at" in row:
        out["updated_at"] = json_value(row["updated_at"])
    out.update(
        {
            "_stream": stream,
            "_gold": gold.name,
            "_refresh": marker.refresh,
            "_batch": marker.batch,
            "_app_id": marker.txn_app_id,
        }
    )
    return _dumps(out)


def changed_rows(gold: GoldSpec, current: list[dict], previous: list[dict] | None) -> list[dict]:
    """Rows of ``current`` that are new or differ from ``previous`` (None: all of them)."""
    if previous is None:
        return list(current)
    before = {row_identity(gold, r): r for r in previous}
    return [r for r in current if before.get(row_identity(gold, r)) != r]


@dataclass(frozen=True)
class Marker:
    """The control record committed with each refresh's rows."""

    refresh: int  # committed refreshes of this sink, from 1: the records' ``_refresh``
    txn_app_id: str  # the ingest checkpoint's txn app id (batch ids restart with a new one)
    batch: int  # newest ingest batch the refresh covers (gold's txn version)
    gold_version: int  # the gold table version the rows were read from
    records: int  # rows sent in this refresh
    windows: int  # windows the refresh looked at

    def encode(self, stream: str, gold: str) -> bytes:
        return _dumps({**_stored(asdict(self)), "stream": stream, "gold": gold})

    @classmethod
    def decode(cls, raw: bytes) -> Marker:
        data = json.loads(raw)
        return cls(**{k: data[_MARKER_KEYS.get(k, k)] for k in cls.__dataclass_fields__})


# Field -> key in the marker records on Kafka: markers already committed keep loading.
_MARKER_KEYS = {"txn_app_id": "app_id"}


def _stored(fields: dict) -> dict:
    return {_MARKER_KEYS.get(k, k): v for k, v in fields.items()}


# --------------------------------------------------------------------------- the marker


def read_marker(topic: str, *, cfg=None, timeout: float = 60.0) -> Marker | None:
    """The newest committed marker on ``topic`` (partition 0), None if there is none.

    Read backwards in growing spans from the end: aborted transactions leave
    offsets a ``read_committed`` consumer never returns, so the last offset is
    not necessarily a marker.
    """
    from confluent_kafka import KafkaError, TopicPartition

    from riverdelta.kafka import client as kafka_client

    consumer = kafka_client.committed_consumer(cfg=cfg, **{"enable.partition.eof": True})
    deadline = time.monotonic() + timeout
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, 0), timeout=timeout, cached=False
        )
        span = 64
        while high > low:
            start = max(low, high - span)
            consumer.assign([TopicPartition(topic, 0, start)])
            last: bytes | None = None
            while True:
                msg = consumer.poll(1.0)
                if msg is None:
                    if time.monotonic() > deadline:
                        raise SinkError(
                            f"kafka sink: the marker topic {topic} was not read to its end "
                            f"within {timeout:.0f}s"
                        )
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        break
                    raise SinkError(f"kafka sink: reading {topic}: {msg.error().str()}")
                if msg.key() == MARKER_KEY:
                    last = msg.value()
            if last is not None:
                return Marker.decode(last)
            if start == low:
                return None
            span *= 4
        return None
    finally:
        consumer.close()


# --------------------------------------------------------------------------- the sink


def window_rows(table, starts: list[int]) -> list[dict]:
    """Rows of the gold windows ``starts`` (epoch seconds) in a delta-rs table snapshot."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = table.to_pyarrow_dataset()
    kind = dataset.schema.field("window_start").type
    values = pa.array([datetime.fromtimestamp(s, UTC) for s in starts]).cast(kind)
    return dataset.to_table(filter=ds.field("window_start").isin(values)).to_pylist()


class KafkaSink:
    """One gold table's transactional output; driven by the gold refresher's thread."""

    def __init__(
        self, spec: StreamSpec, gold: GoldSpec, path: str, txn_app_id: str, *, timeout: float = 60.0
    ) -> None:
        if gold.kafka_sink is None:
            raise ValueError(f"gold {gold.name!r} declares no kafka_sink")
        self.spec, self.gold, self.sink, self.path = spec, gold, gold.kafka_sink, path
        self.txn_app_id, self.timeout = txn_app_id, timeout
        self.transactional_id = transactional_id(spec.name, gold)
        self.marker: Marker | None = None
        self._producer: Any = None

    def open(self) -> None:
        """Topics, fencing of a previous driver, and the last committed marker."""
        from riverdelta.kafka import client as kafka_client

        sink = self.sink
        kafka_client.create_topics(
            {sink.topic: sink.partitions, sink.marker_topic: 1},
            {sink.marker_topic: {"cleanup.policy": "compact"}},
        )
        producer = kafka_client.transactional_producer(
            self.transactional_id, **{"transaction.timeout.ms": TRANSACTION_TIMEOUT_MS}
        )
        try:
            # Fences the previous holder of the id and settles its open transaction.
            producer.init_transactions(self.timeout)
        except Exception as exc:
            raise SinkError(
                f"kafka sink {sink.topic}: init_transactions for {self.transactional_id} "
                f"failed: {_reason(exc)}"
            ) from exc
        self._producer = producer
        self.marker = read_marker(sink.marker_topic, timeout=self.timeout)
        log.info("kafka sink %s: open, last committed marker %s", sink.topic, self.marker)

    def resume_after(self) -> int | None:
        """The newest batch of this app that Kafka has been told about (None: none)."""
        m = self.marker
        return m.batch if m is not None and m.txn_app_id == self.txn_app_id else None

    def send(self, batch: int, starts: list[int]) -> int | None:
        """Send the changed rows of windows ``starts`` as refresh ``batch``; rows sent.

        None when a committed refresh already covers ``batch`` (a replayed batch).
        """
        from riverdelta.storage import roots as storage

        if self._producer is None:
            raise SinkError(f"kafka sink {self.sink.topic}: not open")
        done = self.resume_after()
        if done is not None and batch <= done:
            return None
        table = storage.delta_table(self.path)
        current = window_rows(table, starts)
        previous = None
        if self.marker is not None:
            try:
                old = storage.delta_table(self.path, version=self.marker.gold_version)
                previous = window_rows(old, starts)
            except Exception as exc:  # vacuumed or cleaned up: send every row of the windows
                log.warning(
                    "kafka sink %s: gold version %s unreadable (%s); sending whole windows",
                    self.sink.topic,
                    self.marker.gold_version,
                    exc,
                )
        rows = changed_rows(self.gold, current, previous)
        marker = Marker(
            refresh=(self.marker.refresh if self.marker else 0) + 1,
            txn_app_id=self.txn_app_id,
            batch=batch,
            gold_version=int(table.version()),
            records=len(rows),
            windows=len(starts),
        )
        self._commit(rows, marker)
        self.marker = marker
        return len(rows)

    def _commit(self, rows: list[dict], marker: Marker) -> None:
        from confluent_kafka import KafkaException

        p, sink = self._producer, self.sink
        try:
            p.begin_transaction()
            for i, row in enumerate(rows):
                value = encode_value(self.spec.name, self.gold, row, marker)
                self._produce(sink.topic, encode_key(sink, row), value)
                if i % 1000 == 999:
                    p.poll(0)
            self._produce(
                sink.marker_topic, MARKER_KEY, marker.encode(self.spec.name, self.gold.name)
            )
            p.commit_transaction(self.timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            try:
                if error is None or error.txn_requires_abort():
                    p.abort_transaction(self.timeout)
            except Exception:  # fenced or fatal: the next driver's init_transactions aborts it
                pass
            raise SinkError(
                f"kafka sink {sink.topic}: refresh {marker.refresh} (up to batch {marker.batch}) "
                f"was not committed: {_reason(exc)}"
            ) from exc

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.5)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None


def _reason(exc: BaseException) -> str:
    from riverdelta.kafka import client as kafka_client

    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)
    try:
        return kafka_client.explain(kafka_client.client_config(), text) or text
    except Exception:
        return text


def sinks_for(spec: StreamSpec, paths: dict[str, str], txn_app_id: str) -> dict[str, KafkaSink]:
    """gold name -> its sink, for the gold tables of ``spec`` that declare one."""
    return {
        g.name: KafkaSink(spec, g, paths[f"gold_{g.name}"], txn_app_id)
        for g in spec.gold
        if g.kafka_sink is not None
    }
