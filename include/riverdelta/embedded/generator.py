"""Deterministic test traffic for any stream, driven by its contract alone.

``generate`` yields events (valid, duplicates, late, and poison of every kind
the contract makes possible); each poison event is built so that
``transforms.validate`` quarantines it with exactly the reason named by its
``kind``. ``produce`` sends them to Kafka and returns what it sent per kind, so
tests and demos can reconcile the tables against it.

Determinism: one ``random.Random(seed)`` drives everything; with the same
seed, count, rates and ``base_time`` the bytes are identical. Without
``base_time`` only the timestamps move (they start at the current time).

Time layout: valid events are spread over at most half a watermark after
``base_time`` (so none of them looks late to the pipeline), late events are
older than ``base_time - 2 x watermark``, and a duplicate re-sends one of the
last few valid events verbatim. A duplicate or late event drawn before the
first valid event is sent as a valid one instead.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from riverdelta.config.registry import FieldSpec, GenHint, StreamSpec, parse_duration

VALID, DUPLICATE, LATE = "valid", "duplicate", "late"
_ABSENT = object()
_MAX_STEP = timedelta(milliseconds=100)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# Far enough ahead that a future_timestamp poison stays in the future whatever base_time is.
_FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
_DOMAINS = ("shop.example.com", "news.example.org", "docs.example.net", "example.com")
_PATHS = ("", "products", "products/{n}", "cart", "checkout", "search?q=item{n}", "blog/post-{n}")
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
)
_BAD_TIMESTAMPS = (
    "2024-13-45T99:00:00Z",
    "2024-02-30T10:00:00Z",
    "2024-05-01 10:00:00",  # no zone: ambiguous, refused
    "yesterday",
    "01/05/2024 10:00",
)


@dataclass(frozen=True)
class Event:
    key: bytes | None
    value: bytes | None
    kind: str  # valid | duplicate | late | a poison reason code


def poison_kinds(stream: StreamSpec) -> tuple[str, ...]:
    """The reason codes this contract can produce, in the order validate checks them."""
    fields = stream.fields
    applicable = {
        "too_large": True,
        "not_utf8": True,
        "not_json": True,
        "not_object": True,
        "missing_field": any(f.required for f in fields),
        "null_field": any(not f.nullable for f in fields),
        "wrong_type": True,
        "bad_timestamp": any(f.type == "timestamp" for f in fields),
        "future_timestamp": True,
        "below_minimum": any(f.min is not None for f in fields),
        "not_allowed": any(f.allowed for f in fields),
    }
    return tuple(kind for kind, ok in applicable.items() if ok)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(record: dict[str, Any]) -> str:
    """Compact JSON; Decimals become JSON numbers with all their digits (json.dumps can't)."""

    def one(v: Any) -> str:
        return format(v, "f") if isinstance(v, Decimal) else json.dumps(v, separators=(",", ":"))

    return "{" + ",".join(f"{json.dumps(k)}:{one(v)}" for k, v in record.items()) + "}"


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


class _Maker:
    """Valid records and their poisoned variants for one stream; all randomness from ``rng``."""

    def __init__(self, stream: StreamSpec, rng: random.Random, base_time: datetime) -> None:
        self.stream, self.rng, self.base = stream, rng, base_time
        self.watermark = parse_duration(stream.watermark)
        self.max_future = parse_duration(stream.max_future)
        self.next_id = 0

    # ----------------------------------------------------------------- valid values

    def record(self, event_time: datetime) -> dict[str, Any]:
        record = {}
        for f in self.stream.fields:
            value = self.value(f, event_time)
            if value is not _ABSENT:
                record[f.name] = value
        return record

    def value(self, f: FieldSpec, event_time: datetime) -> Any:
        rng, gen = self.rng, f.gen or GenHint()
        if f.name == self.stream.event_time_column:
            return iso(event_time)
        if f.name == self.stream.id_column:
            self.next_id += 1
            if f.type == "string":
                return str(uuid.UUID(int=rng.getrandbits(128), version=4))
            return self.next_id
        if not f.required and rng.random() < gen.absent_rate:
            return _ABSENT
        if f.nullable and rng.random() < gen.null_rate:
            return None
        kind = gen.kind
        if kind == "choice":
            return rng.choice(gen.values)
        if kind == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == "pool":
            n = rng.randint(1, gen.size)
            prefix = f.name + "-" if gen.prefix is None else gen.prefix
            return f"{prefix}{n}" if f.type == "string" else n
        if kind == "url":
            path = rng.choice(_PATHS).format(n=rng.randint(1, 200))
            return f"https://{rng.choice(_DOMAINS)}/{path}"
        if kind == "user_agent":
            return rng.choice(_USER_AGENTS)
        if f.allowed:
            return rng.choice(f.allowed)
        if f.is_numeric:
            return self.number(f, gen.min, gen.max)
        if f.type == "boolean":
            return rng.random() < 0.5
        if f.type == "timestamp":
            return iso(event_time - timedelta(seconds=rng.uniform(0, 3600)))
        return f"{f.name}-{rng.randint(1, 1000)}"

    def number(self, f: FieldSpec, lo: Any = None, hi: Any = None) -> int | float | Decimal:
        floor = f.min if f.min is not None else 0
        lo = max(Decimal(str(lo if lo is not None else floor)), Decimal(str(floor)))
        hi = Decimal(str(hi)) if hi is not None else lo + 1000
        if f.is_decimal:
            p, s = f.precision_scale
            quantum = Decimal(1).scaleb(-s)
            hi = min(hi, Decimal(10 ** (p - s)) - quantum)
            raw = lo + (hi - lo) * Decimal(self.rng.random())
            return max(lo, raw.quantize(quantum, rounding=ROUND_DOWN))
        if f.type == "double":
            return max(float(lo), round(self.rng.uniform(float(lo), float(hi)), 3))
        bottom, top = _INT_RANGE[f.type]
        return self.rng.randint(max(int(lo), bottom), min(int(hi), top))

    # ----------------------------------------------------------------- poison

    def poison(self, kind: str, record: dict[str, Any]) -> bytes | None:
        """``record`` (valid) spoiled so that validate() refuses it for ``kind``, and only it."""
        rng, stream = self.rng, self.stream
        fields = stream.fields
        if kind == "too_large":
            return dumps({**record, "_padding": "x" * (stream.max_value_bytes + 1)}).encode()
        if kind == "not_utf8":
            # Latin-1 "café" inside otherwise valid JSON: the classic mis-encoded producer.
            return dumps(record).encode()[:-1] + b',"_note":"caf\xe9"}'
        if kind == "not_json":
            text = dumps(record)
            return rng.choice([None, text[: len(text) // 2].encode(), b"", b"not json"])
        if kind == "not_object":
            return rng.choice([f"[{dumps(record)}]", "42", '"text"', "null", "true"]).encode()
        if kind == "missing_field":
            record.pop(rng.choice([f for f in fields if f.required]).name, None)
        elif kind == "null_field":
            record[rng.choice([f for f in fields if not f.nullable]).name] = None
        elif kind == "wrong_type":
            f = rng.choice(fields)
            record[f.name] = rng.choice(self.wrong_values(f))
        elif kind == "bad_timestamp":
            f = rng.choice([f for f in fields if f.type == "timestamp"])
            record[f.name] = rng.choice(_BAD_TIMESTAMPS)
        elif kind == "future_timestamp":
            ahead = max(self.base, _FAR_FUTURE) + self.max_future
            record[stream.event_time_column] = iso(ahead + timedelta(hours=rng.randint(1, 10_000)))
        elif kind == "below_minimum":
            f = rng.choice([f for f in fields if f.min is not None])
            record[f.name] = self.below(f)
        elif kind == "not_allowed":
            f = rng.choice([f for f in fields if f.allowed])
            record[f.name] = self.not_allowed(f)
        else:
            raise ValueError(f"unknown poison kind {kind!r}")
        return dumps(record).encode()

    def wrong_values(self, f: FieldSpec) -> list[Any]:
        if f.is_decimal:
            _, s = f.precision_scale
            # A non-zero last digit: trailing zeros beyond the scale are exact, hence valid.
            digits = self.rng.randint(0, 10**5) * 10 + self.rng.randint(1, 9)
            too_precise = Decimal(digits).scaleb(-(s + 1))
            return ["12,50", "1e3", True, {"value": 1}, too_precise]
        return {
            "string": [12345, True, {"nested": "x"}, ["a", "b"]],
            "int": ["12", 1.5, True, "abc"],
            "long": ["12", 1.5, True, "abc"],
            "double": ["3.14", True, "abc", [1]],
            "boolean": ["true", 1, "yes"],
            "timestamp": [1714557600, 1714557600000, True, {"ts": "2024-05-01T10:00:00Z"}],
        }[f.type]

    def below(self, f: FieldSpec) -> int | float | Decimal:
        if f.is_decimal:
            _, s = f.precision_scale
            return f.min - Decimal(self.rng.randint(1, 10_000)).scaleb(-s)
        if f.type == "double":
            return f.min - round(self.rng.uniform(0.01, 100), 2)
        return max(f.min - self.rng.randint(1, 100), _INT_RANGE[f.type][0])

    def not_allowed(self, f: FieldSpec) -> str | int:
        allowed = set(f.allowed or ())
        if f.type == "string":
            value = self.rng.choice(["XXX", "N/A", "unknown", "other", ""])
            while value in allowed:
                value += "-x"
            return value
        return max(allowed) + self.rng.randint(1, 100)


def generate(
    stream: StreamSpec,
    count: int,
    *,
    seed: int = 0,
    poison_rate: float = 0.0,
    duplicate_rate: float = 0.0,
    late_rate: float = 0.0,
    base_time: datetime | None = None,
) -> Iterator[Event]:
    rates = {"poison_rate": poison_rate, "duplicate_rate": duplicate_rate, "late_rate": late_rate}
    if any(not 0 <= r <= 1 for r in rates.values()) or sum(rates.values()) > 1:
        raise ValueError(f"rates must be in [0, 1] and sum to at most 1, got {rates}")
    rng = random.Random(seed)
    base = _utc(base_time) if base_time else datetime.now(UTC).replace(microsecond=0)
    maker = _Maker(stream, rng, base)
    kinds = poison_kinds(stream)
    # Valid events span at most half a watermark, so none of them is late to another.
    step = min(_MAX_STEP, maker.watermark / 2 / max(count, 1))
    recent: deque[Event] = deque(maxlen=32)

    def key_of(record: dict[str, Any]) -> bytes | None:
        key = record.get(stream.key)
        return None if key is None else str(key).encode()

    for i in range(count):
        draw = rng.random()
        event_time = base + step * i
        if draw < poison_rate:
            kind = rng.choice(kinds)
            record = maker.record(event_time)
            # The key comes from the record before it is spoiled, as a real producer's would.
            key = key_of(record)
            yield Event(key, maker.poison(kind, record), kind)
            continue
        if draw < poison_rate + duplicate_rate and recent:
            original = rng.choice(recent)
            yield Event(original.key, original.value, DUPLICATE)
            continue
        if draw < poison_rate + duplicate_rate + late_rate and recent:
            extra = timedelta(seconds=rng.uniform(1, maker.watermark.total_seconds()))
            record = maker.record(base - 2 * maker.watermark - extra)
            yield Event(key_of(record), dumps(record).encode(), LATE)
            continue
        record = maker.record(event_time)
        event = Event(key_of(record), dumps(record).encode(), VALID)
        recent.append(event)
        yield event


# --------------------------------------------------------------------------- Kafka


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r[{bar:<30}] {frac:4.0%} {done}/{self.total} {rate:,.0f}/s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _kafka_producer(bootstrap: str) -> Any:
    from riverdelta.kafka import client as kafka_client

    return kafka_client.producer(
        bootstrap,
        **{
            # The Java client's partitioner: the same key lands where Spark/Java producers put it.
            "partitioner": "murmur2_random",
            # Broker-side dedup of retries: the reconciliation counts every record exactly once.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        },
    )


def _send(
    producer: Any,
    topic: str,
    events: Iterator[Event],
    rate: float | None,
    start: float,
    bar: _Progress,
    on_delivery: Callable[[Any, Any], None],
) -> Counter[str]:
    """Queue every event (paced at ``rate`` from ``start`` if given); counts by kind."""
    by_kind: Counter[str] = Counter()
    for sent, event in enumerate(events):
        if rate:
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, event.value, event.key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain
        by_kind[event.kind] += 1
        if sent % 1000 == 0:
            producer.poll(0)
            bar.update(sent)
    return by_kind


def _flush(producer: Any, topic: str, errors: list[str], bar: _Progress, count: int) -> None:
    """Wait for every delivery; raise if any record is undelivered or failed."""
    from confluent_kafka import KafkaException

    try:
        remaining = producer.flush(120)
    except KafkaException as exc:
        raise RuntimeError(f"produce to {topic}: {exc}") from exc
    bar.update(count, final=True)
    if remaining:
        raise RuntimeError(f"produce to {topic}: {remaining} records still undelivered")
    if errors:
        raise RuntimeError(
            f"produce to {topic}: {len(errors)} records failed delivery, first: {errors[0]}"
        )


def produce(
    stream: StreamSpec,
    count: int,
    *,
    bootstrap: str,
    rate: float | None = None,
    poison_rate: float = 0.0,
    duplicate_rate: float = 0.0,
    late_rate: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Send ``count`` generated events to the stream's topic; raise if any is not delivered."""
    producer = _kafka_producer(bootstrap)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    events = generate(
        stream,
        count,
        seed=seed,
        poison_rate=poison_rate,
        duplicate_rate=duplicate_rate,
        late_rate=late_rate,
    )
    bar = _Progress(count, progress)
    start = time.monotonic()
    by_kind = _send(producer, stream.topic, events, rate, start, bar, on_delivery)
    _flush(producer, stream.topic, errors, bar, count)
    seconds = time.monotonic() - start
    total = sum(by_kind.values())
    return {
        "stream": stream.name,
        "topic": stream.topic,
        "sent": total,
        "by_kind": dict(sorted(by_kind.items())),
        "valid": by_kind[VALID],
        "duplicates": by_kind[DUPLICATE],
        "late": by_kind[LATE],
        "poison": total - by_kind[VALID] - by_kind[DUPLICATE] - by_kind[LATE],
        "seconds": seconds,
        "rate": total / seconds if seconds else 0.0,
    }
