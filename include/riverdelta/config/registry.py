"""The stream registry: ``include/streams.yaml`` loaded into validated dataclasses.

Streams are configuration only. Everything a stream needs (topic, contract,
tables, gold aggregates, health thresholds) comes from here, and every problem
in the file is reported as a ``ContractError`` naming the stream and the field,
so a bad contract stops ``riverdelta up`` instead of a running query.

DAG files import this module: no pyspark or confluent_kafka here.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from riverdelta.errors import RiverdeltaError

# Quarantine reason codes: exactly one per invalid record, the first that applies in this
# order (riverdelta.stream.transforms.validate; the generator makes poison of each kind).
REASONS = (
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "null_field",
    "wrong_type",
    "bad_timestamp",
    "future_timestamp",
    "below_minimum",
    "not_allowed",
)
SIMPLE_TYPES = ("string", "long", "int", "double", "boolean", "timestamp")
NUMERIC_TYPES = ("long", "int", "double")  # plus decimal(p,s)
ALLOWED_LIST_TYPES = ("string", "long", "int")
AGGREGATE_FNS = ("sum", "count", "count_distinct", "min", "max", "avg")
GEN_KINDS = ("choice", "pool", "range", "uuid", "url", "user_agent")
# Columns the pipeline adds around the contract; a field of that name would collide.
RESERVED_COLUMNS = frozenset(
    {
        "key",
        "value",
        "topic",
        "partition",
        "offset",
        "timestamp",
        "timestampType",
        "kafka_timestamp",
        "window_start",
        "window_end",
        "updated_at",
        "batch_id",
        "reason",
        "detail",
        "resolved",
        "resolved_at",
    }
)

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_DURATION = re.compile(r"^\s*(\d+)\s*([a-z]+?)s?\s*$")
_UNITS = {
    "millisecond": timedelta(milliseconds=1),
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}

DEFAULT_TRIGGER = "2 seconds"

_STREAM_KEYS = frozenset(
    {
        "topic",
        "topics",
        "topic_pattern",
        "partitions",
        "key",
        "id_column",
        "event_time_column",
        "watermark",
        "trigger",
        "gold_trigger",
        "max_offsets_per_trigger",
        "max_value_bytes",
        "max_future",
        "health",
        "restart",
        "maintenance",
        "contract",
        "gold",
    }
)
_FIELD_KEYS = frozenset(
    {"name", "type", "required", "nullable", "min", "allowed", "gen", "sensitive"}
)
_GOLD_KEYS = frozenset({"name", "group_by", "window", "aggregates", "kafka_sink"})
_SINK_KEYS = frozenset({"topic", "key", "partitions"})
# Kafka's legal topic names (at most 249 characters; "." and ".." are not topics).
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# The sink's control topic: one partition holding the marker of every committed refresh.
MARKER_SUFFIX = "-marker"
_AGG_KEYS = frozenset({"name", "fn", "column"})
_HEALTH_REQUIRED = ("max_lag_seconds", "max_batch_age_seconds")
_RESTART_KEYS = ("max_restarts", "window_seconds", "backoff_seconds")
_MAINTENANCE_KEYS = frozenset({"schedule", "retention", "zorder"})
_LAYERS = ("bronze", "silver", "quarantine")


class ContractError(RiverdeltaError, ValueError):
    """The registry does not parse; the message names the stream, the field and the problem."""


class UnknownStreamError(RiverdeltaError, ValueError):
    """No stream of that name; the message lists the known ones."""


def parse_duration(text: str) -> timedelta:
    """``"10 minutes"`` -> ``timedelta(minutes=10)``; the forms Spark also accepts."""
    match = _DURATION.match(text.lower()) if isinstance(text, str) else None
    unit = _UNITS.get(match.group(2)) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"bad duration {text!r}: expected '<n> <unit>' with unit one of "
            + ", ".join(f"{u}s" for u in _UNITS)
        )
    value = int(match.group(1)) * unit
    if value <= timedelta(0):
        raise ValueError(f"bad duration {text!r}: must be positive")
    return value


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # canonical: string | long | int | double | boolean | timestamp | decimal(p,s)
    required: bool = True
    nullable: bool = False
    min: int | float | Decimal | None = None
    allowed: tuple[Any, ...] | None = None
    gen: dict[str, Any] | None = None
    # Values are redacted wherever the gate reports them (messages, Data Docs, failed rows).
    sensitive: bool = False

    @property
    def is_decimal(self) -> bool:
        return self.type.startswith("decimal(")

    @property
    def precision_scale(self) -> tuple[int, int]:
        match = _DECIMAL.match(self.type)
        if match is None:
            raise ValueError(f"field {self.name!r} of type {self.type} is not a decimal")
        return int(match.group(1)), int(match.group(2))

    @property
    def is_numeric(self) -> bool:
        return self.is_decimal or self.type in NUMERIC_TYPES


@dataclass(frozen=True)
class Aggregate:
    name: str
    fn: str
    column: str | None = None


@dataclass(frozen=True)
class KafkaSinkSpec:
    """A gold table's Kafka output: every updated (group, window) row as JSON (riverdelta.stream.kafka_sink)."""

    topic: str
    key: tuple[str, ...]  # group columns in the record key; window_start is always added
    partitions: int = 3

    @property
    def marker_topic(self) -> str:
        """One partition: the marker committed in each refresh's transaction."""
        return self.topic + MARKER_SUFFIX


@dataclass(frozen=True)
class GoldSpec:
    name: str
    group_by: tuple[str, ...]
    window: str
    aggregates: tuple[Aggregate, ...]
    kafka_sink: KafkaSinkSpec | None = None


@dataclass(frozen=True)
class MaintenanceSpec:
    """When ``maintain_<stream>`` runs and what it keeps (see ``riverdelta.ops.maintenance``)."""

    schedule: str
    retention: str = "7 days"
    zorder: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicSource:
    """What a stream reads: named topics, or every topic whose whole name matches a pattern."""

    topics: tuple[str, ...] = ()
    pattern: str | None = None

    @classmethod
    def of(cls, source: TopicSource | str) -> TopicSource:
        return source if isinstance(source, TopicSource) else cls((source,))

    def matches(self, topic: str) -> bool:
        if self.pattern is not None:
            # Kafka's own topics are never a stream's (the Java consumer excludes them too).
            return not topic.startswith("__") and re.fullmatch(self.pattern, topic) is not None
        return topic in self.topics

    def __str__(self) -> str:
        return f"topics matching {self.pattern!r}" if self.pattern else ", ".join(self.topics)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    # The source: named topics (``topic: a`` is ``topics: [a]``), or a pattern, never both.
    topics: tuple[str, ...]
    partitions: int
    key: str
    id_column: str
    event_time_column: str
    watermark: str
    trigger: str
    max_value_bytes: int
    max_future: str
    health: dict[str, float]
    fields: tuple[FieldSpec, ...]
    gold: tuple[GoldSpec, ...] = ()
    restart: dict[str, float] = field(default_factory=dict)
    # The gold refresher's interval: how often touched windows are rewritten.
    gold_trigger: str = "5 seconds"
    # Bound on one live batch: a backlog is worked through in batches of this size.
    max_offsets_per_trigger: int = 100_000
    maintenance: MaintenanceSpec = field(default_factory=lambda: MaintenanceSpec("0 3 * * *"))
    # A regular expression a whole topic name must match (Spark's subscribePattern):
    # topics created later that match are read and reported too.
    topic_pattern: str | None = None

    @property
    def topic(self) -> str:
        """The one topic a producer writes this stream's events to (the first named one)."""
        if not self.topics:
            raise ValueError(
                f"stream {self.name!r} reads topics matching {self.topic_pattern!r}: "
                "name the topic to write to"
            )
        return self.topics[0]

    @property
    def source(self) -> TopicSource:
        return TopicSource(self.topics, self.topic_pattern)

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` is one of this stream's sources."""
        return self.source.matches(topic)

    def on_topic(self, topic: str) -> StreamSpec:
        """The same stream reading ``topic`` alone (tests and benchmarks use their own)."""
        return replace(self, topics=(topic,), topic_pattern=None)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def sensitive_fields(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields if f.sensitive)

    def field_spec(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"stream {self.name!r} has no field {name!r}")

    def spark_schema_ddl(self) -> str:
        """The contract as a Spark DDL schema string, e.g. ``event_id string, ...``."""
        return ", ".join(f"`{f.name}` {f.type}" for f in self.fields)

    def table_names(self) -> dict[str, str]:
        """Layer -> table name: bronze, silver, quarantine and one ``gold_<name>`` per gold."""
        names = {layer: f"{self.name}_{layer}" for layer in ("bronze", "silver", "quarantine")}
        names.update({f"gold_{g.name}": f"{self.name}_gold_{g.name}" for g in self.gold})
        return names


@dataclass(frozen=True)
class Registry:
    path: Path
    streams: dict[str, StreamSpec]

    @property
    def names(self) -> list[str]:
        return sorted(self.streams)

    def __contains__(self, name: object) -> bool:
        return name in self.streams

    def topics(self) -> dict[str, int]:
        """Every topic the registry names -> partitions: sources, gold sinks, sink markers."""
        out: dict[str, int] = {}
        for spec in self.streams.values():
            # A pattern's topics belong to whoever creates them; named ones are created.
            out.update(dict.fromkeys(spec.topics, spec.partitions))
            for gold in spec.gold:
                if gold.kafka_sink is not None:
                    out[gold.kafka_sink.topic] = gold.kafka_sink.partitions
                    out[gold.kafka_sink.marker_topic] = 1
        return out

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Topic configs beyond the broker's defaults: markers are compacted, never expire."""
        return {
            gold.kafka_sink.marker_topic: {"cleanup.policy": "compact"}
            for spec in self.streams.values()
            for gold in spec.gold
            if gold.kafka_sink is not None
        }

    def get(self, name: str) -> StreamSpec:
        try:
            return self.streams[name]
        except KeyError:
            raise UnknownStreamError(
                f"unknown stream {name!r}; known streams: {', '.join(self.names) or '(none)'} "
                f"(registry {self.path})"
            ) from None


# --------------------------------------------------------------------------- loading


def load_registry(path: Path | None = None) -> Registry:
    if path is None:
        from riverdelta.config.settings import settings

        path = settings().streams_file
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"{path}: stream registry not found") from None
    except yaml.YAMLError as exc:
        raise ContractError(f"{path}: not valid YAML: {exc}") from None
    return parse_registry(data, path)


def parse_registry(data: Any, path: Path | str = "<registry>") -> Registry:
    where = str(path)
    if not isinstance(data, dict):
        raise ContractError(f"{where}: expected a mapping with 'defaults' and 'streams'")
    unknown = set(data) - {"defaults", "streams"}
    if unknown:
        raise ContractError(f"{where}: unknown top-level keys {sorted(unknown)}")
    defaults = data.get("defaults") or {}
    streams = data.get("streams")
    if not isinstance(defaults, dict):
        raise ContractError(f"{where}: 'defaults' must be a mapping")
    if not isinstance(streams, dict) or not streams:
        raise ContractError(f"{where}: 'streams' must be a non-empty mapping of name -> stream")
    specs = {
        str(name): _parse_stream(str(name), _merge(defaults, raw, where, str(name)), where)
        for name, raw in streams.items()
    }
    _refuse_shared_topics(specs, where)
    return Registry(path=Path(path), streams=specs)


def _refuse_shared_topics(specs: dict[str, StreamSpec], where: str) -> None:
    """A topic is read by one stream and written by one sink: anything else mixes data."""
    topics: dict[str, str] = {}
    for spec in specs.values():
        for topic in spec.topics:
            if topic in topics:
                raise ContractError(
                    f"{where}: streams {topics[topic]!r} and {spec.name!r} share topic {topic!r}"
                )
            topics[topic] = spec.name
    used = {t: f"stream {n!r} as its source" for t, n in topics.items()}
    for spec in specs.values():
        for gold in spec.gold:
            sink = gold.kafka_sink
            if sink is None:
                continue
            owner = f"stream {spec.name!r} gold {gold.name!r} kafka_sink"
            for t in (sink.topic, sink.marker_topic):
                if t in used:
                    raise ContractError(
                        f"{where}: {owner}: topic {t!r} is already used by {used[t]}"
                    )
                used[t] = owner
    # Two patterns may overlap only on topics nobody names yet: the driver checks those.
    for spec in specs.values():
        if spec.topic_pattern is None:
            continue
        for t, owner in used.items():
            if spec.matches(t) and topics.get(t) != spec.name:
                raise ContractError(
                    f"{where}: stream {spec.name!r}: topic_pattern {spec.topic_pattern!r} "
                    f"matches topic {t!r}, already used by {owner}; narrow the pattern"
                )


def _merge(defaults: dict, raw: Any, where: str, name: str) -> dict:
    if not isinstance(raw, dict):
        raise ContractError(f"{where}: stream {name!r}: expected a mapping")
    merged = {**defaults, **raw}
    for key in ("health", "restart", "maintenance"):
        if isinstance(defaults.get(key), dict) and isinstance(raw.get(key), dict):
            merged[key] = {**defaults[key], **raw[key]}
    return merged


class _Ctx:
    """Builds error messages that say where in the registry the problem is."""

    def __init__(self, where: str, stream: str) -> None:
        self.where, self.stream = where, stream

    def error(self, problem: str, field: str | None = None) -> ContractError:
        at = f"stream {self.stream!r}" + (f", field {field!r}" if field else "")
        return ContractError(f"{self.where}: {at}: {problem}")


def _parse_source(ctx: _Ctx, raw: dict) -> tuple[tuple[str, ...], str | None]:
    """(named topics, pattern) from exactly one of ``topic``, ``topics``, ``topic_pattern``."""
    named = [k for k in ("topic", "topics", "topic_pattern") if k in raw]
    if len(named) != 1:
        raise ctx.error(
            "name exactly one of 'topic', 'topics' or 'topic_pattern'"
            + (f", not {named}" if named else "")
        )
    if "topic_pattern" in raw:
        pattern = _str(ctx, raw, "topic_pattern")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ctx.error(
                f"topic_pattern {pattern!r} is not a regular expression: {exc}"
            ) from None
        return (), pattern
    values = [raw["topic"]] if "topic" in raw else raw["topics"]
    if not isinstance(values, list) or not values:
        raise ctx.error(f"'topics' must be a non-empty list of topic names, got {values!r}")
    for t in values:
        if not isinstance(t, str) or not _TOPIC.match(t) or t in (".", ".."):
            raise ctx.error(f"topic {t!r} is not a Kafka topic name ([A-Za-z0-9._-], at most 249)")
    if len(set(values)) != len(values):
        raise ctx.error(f"'topics' names a topic twice: {values}")
    return tuple(values), None


def _parse_stream(name: str, raw: dict, where: str) -> StreamSpec:
    ctx = _Ctx(where, name)
    if not _STREAM_NAME.match(name):
        raise ctx.error("stream names are lower-case identifiers ([a-z][a-z0-9_]*)")
    unknown = set(raw) - _STREAM_KEYS
    if unknown:
        raise ctx.error(f"unknown keys {sorted(unknown)}; expected some of {sorted(_STREAM_KEYS)}")
    topics, pattern = _parse_source(ctx, raw)
    for key in ("key", "id_column", "event_time_column", "watermark", "contract"):
        if raw.get(key) in (None, ""):
            raise ctx.error(f"missing {key!r}")
    contract = raw["contract"]
    if not isinstance(contract, dict) or not isinstance(contract.get("fields"), list):
        raise ctx.error("'contract' must be a mapping with a 'fields' list")
    fields = tuple(_parse_field(ctx, f) for f in contract["fields"])
    if not fields:
        raise ctx.error("the contract has no fields")
    names = [f.name for f in fields]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ctx.error("declared more than once", field=sorted(dup)[0])
    by_name = {f.name: f for f in fields}

    def column(key: str) -> FieldSpec:
        value = _str(ctx, raw, key)
        if value not in by_name:
            raise ctx.error(f"{key} {value!r} is not a contract field ({', '.join(names)})")
        return by_name[value]

    key_field = column("key")
    id_field = column("id_column")
    et_field = column("event_time_column")
    if id_field.type not in ("string", "long", "int"):
        raise ctx.error("id_column must be of type string, long or int", field=id_field.name)
    for f, role in ((id_field, "id_column"), (et_field, "event_time_column")):
        if not f.required or f.nullable:
            raise ctx.error(f"the {role} must be required and not nullable", field=f.name)
    if et_field.type != "timestamp":
        raise ctx.error(
            f"event_time_column must be of type timestamp, not {et_field.type}", field=et_field.name
        )
    spec = StreamSpec(
        name=name,
        topics=topics,
        topic_pattern=pattern,
        partitions=_positive_int(ctx, raw, "partitions", default=3),
        key=key_field.name,
        id_column=id_field.name,
        event_time_column=et_field.name,
        watermark=_duration(ctx, raw, "watermark"),
        trigger=_duration(ctx, raw, "trigger", default=DEFAULT_TRIGGER),
        gold_trigger=_duration(ctx, raw, "gold_trigger", default="5 seconds"),
        max_offsets_per_trigger=_positive_int(ctx, raw, "max_offsets_per_trigger", default=100_000),
        max_value_bytes=_positive_int(ctx, raw, "max_value_bytes", default=65536),
        max_future=_duration(ctx, raw, "max_future", default="1 day"),
        health=_parse_health(ctx, raw.get("health")),
        restart=_parse_restart(ctx, raw.get("restart")),
        maintenance=_parse_maintenance(ctx, raw.get("maintenance"), set(by_name), name),
        fields=fields,
        gold=(),
    )
    gold_raw = raw.get("gold") or []
    if not isinstance(gold_raw, list):
        raise ctx.error("'gold' must be a list")
    gold = tuple(_parse_gold(ctx, g, by_name, spec.partitions) for g in gold_raw)
    gold_names = [g.name for g in gold]
    if len(set(gold_names)) != len(gold_names):
        raise ctx.error(f"gold names must be unique, got {gold_names}")
    return replace(spec, gold=gold)


def _str(ctx: _Ctx, raw: dict, key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ctx.error(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _positive_int(ctx: _Ctx, raw: dict, key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.error(f"{key!r} must be a positive integer, got {value!r}")
    return value


def _duration(ctx: _Ctx, raw: dict, key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    try:
        parse_duration(value)
    except ValueError as exc:
        raise ctx.error(f"{key}: {exc}") from None
    return value.strip()


def _numbers(ctx: _Ctx, what: str, raw: Any, allowed_keys: tuple[str, ...] | None) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ctx.error(f"{what!r} must be a mapping")
    for key, value in raw.items():
        if allowed_keys is not None and key not in allowed_keys:
            raise ctx.error(f"{what}: unknown key {key!r}; expected some of {list(allowed_keys)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ctx.error(f"{what}.{key} must be a non-negative number, got {value!r}")
    return dict(raw)


def _parse_health(ctx: _Ctx, raw: Any) -> dict[str, float]:
    health = _numbers(ctx, "health", raw, None)
    missing = [k for k in _HEALTH_REQUIRED if k not in health]
    if missing:
        raise ctx.error(f"health: missing {missing}")
    return health


def _parse_maintenance(ctx: _Ctx, raw: Any, fields: set[str], stream: str) -> MaintenanceSpec:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ctx.error("'maintenance' must be a mapping")
    unknown = set(raw) - _MAINTENANCE_KEYS
    if unknown:
        raise ctx.error(
            f"maintenance: unknown keys {sorted(unknown)}; expected some of "
            f"{sorted(_MAINTENANCE_KEYS)}"
        )
    # Default: nightly at a minute of the stream's own, not every stream at once.
    schedule = raw.get("schedule", f"{zlib.crc32(stream.encode()) % 60} 3 * * *")
    if not isinstance(schedule, str) or len(schedule.split()) != 5:
        raise ctx.error(f"maintenance.schedule must be a 5-field cron string, got {schedule!r}")
    zorder_raw = raw.get("zorder") or {}
    if not isinstance(zorder_raw, dict):
        raise ctx.error("maintenance.zorder must map a layer to a list of columns")
    zorder = {}
    for layer, columns in zorder_raw.items():
        if layer not in _LAYERS:
            raise ctx.error(f"maintenance.zorder: layer {layer!r}; expected one of {list(_LAYERS)}")
        if not isinstance(columns, list) or not columns:
            raise ctx.error(f"maintenance.zorder.{layer} must be a non-empty list of columns")
        bad = [c for c in columns if c not in fields]
        if bad:
            raise ctx.error(f"maintenance.zorder.{layer}: {bad} are not contract fields")
        zorder[layer] = tuple(columns)
    return MaintenanceSpec(
        schedule=schedule,
        retention=_duration(ctx, raw, "retention", default=MaintenanceSpec.retention),
        zorder=zorder,
    )


def _parse_restart(ctx: _Ctx, raw: Any) -> dict[str, float]:
    return _numbers(ctx, "restart", raw, _RESTART_KEYS)


def _canonical_type(ctx: _Ctx, name: str, raw: Any) -> str:
    text = str(raw).strip().lower() if isinstance(raw, str) else None
    if text in SIMPLE_TYPES:
        return text
    match = _DECIMAL.match(text or "")
    if match:
        p, s = int(match.group(1)), int(match.group(2))
        if not 1 <= p <= 38 or s > p:
            raise ctx.error(
                f"decimal({p},{s}): need 1 <= precision <= 38 and scale <= precision", field=name
            )
        return f"decimal({p},{s})"
    raise ctx.error(
        f"unknown type {raw!r}; expected one of {', '.join(SIMPLE_TYPES)}, decimal(p,s)", field=name
    )


def _parse_field(ctx: _Ctx, raw: Any) -> FieldSpec:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ctx.error(f"contract fields must be mappings with a 'name', got {raw!r}")
    name = raw["name"]
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ctx.error("field names are identifiers ([A-Za-z][A-Za-z0-9_]*)", field=str(name))
    if name in RESERVED_COLUMNS or name.startswith("_"):
        raise ctx.error("the name is reserved for a pipeline column", field=name)
    unknown = set(raw) - _FIELD_KEYS
    if unknown:
        raise ctx.error(
            f"unknown keys {sorted(unknown)}; expected some of {sorted(_FIELD_KEYS)}", field=name
        )
    if "type" not in raw:
        raise ctx.error("missing 'type'", field=name)
    ftype = _canonical_type(ctx, name, raw["type"])
    flags = {}
    for flag, default in (("required", True), ("nullable", False), ("sensitive", False)):
        flags[flag] = raw.get(flag, default)
        if not isinstance(flags[flag], bool):
            raise ctx.error(f"{flag!r} must be true or false", field=name)
    spec = FieldSpec(name=name, type=ftype, **flags)
    minimum = _parse_min(ctx, spec, raw.get("min"))
    allowed = _parse_allowed(ctx, spec, raw.get("allowed"), minimum)
    gen = raw.get("gen")
    if gen is not None:
        if not isinstance(gen, dict) or gen.get("kind", "range") not in GEN_KINDS:
            raise ctx.error(f"gen must be a mapping with kind one of {list(GEN_KINDS)}", field=name)
        if gen.get("kind") == "choice" and not gen.get("values"):
            raise ctx.error("gen kind 'choice' needs a non-empty 'values' list", field=name)
    return replace(spec, min=minimum, allowed=allowed, gen=gen)


def _parse_min(ctx: _Ctx, spec: FieldSpec, raw: Any) -> int | float | Decimal | None:
    if raw is None:
        return None
    if not spec.is_numeric:
        raise ctx.error(f"'min' applies to numeric types only, not {spec.type}", field=spec.name)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ctx.error(f"'min' must be a number, got {raw!r}", field=spec.name)
    if spec.type in ("int", "long"):
        if raw != int(raw):
            raise ctx.error(f"'min' must be an integer for type {spec.type}", field=spec.name)
        return int(raw)
    if spec.is_decimal:
        # Through str so 0.1 stays 0.1 and does not become the binary float's expansion.
        return Decimal(str(raw))
    return float(raw)


def _parse_allowed(
    ctx: _Ctx, spec: FieldSpec, raw: Any, minimum: int | float | Decimal | None
) -> tuple[Any, ...] | None:
    if raw is None:
        return None
    if spec.type not in ALLOWED_LIST_TYPES:
        raise ctx.error(
            f"'allowed' applies to {', '.join(ALLOWED_LIST_TYPES)} only", field=spec.name
        )
    if not isinstance(raw, list) or not raw:
        raise ctx.error("'allowed' must be a non-empty list", field=spec.name)
    want = str if spec.type == "string" else int
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, want):
            raise ctx.error(f"allowed value {value!r} is not a {spec.type}", field=spec.name)
        if minimum is not None and value < minimum:
            raise ctx.error(f"allowed value {value!r} is below min {minimum}", field=spec.name)
    return tuple(dict.fromkeys(raw))


def _parse_gold(ctx: _Ctx, raw: Any, fields: dict[str, FieldSpec], partitions: int) -> GoldSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ctx.error(f"gold entries must be mappings with a 'name', got {raw!r}")
    name = raw["name"]
    where = f"gold {name!r}"
    if not _STREAM_NAME.match(name):
        raise ctx.error(f"{where}: names are lower-case identifiers")
    unknown = set(raw) - _GOLD_KEYS
    if unknown:
        raise ctx.error(f"{where}: unknown keys {sorted(unknown)}")
    group_by = raw.get("group_by") or []
    if not isinstance(group_by, list) or not all(isinstance(c, str) for c in group_by):
        raise ctx.error(f"{where}: group_by must be a list of field names")
    for col in group_by:
        if col not in fields:
            raise ctx.error(f"{where}: group_by column is not a contract field", field=col)
    try:
        parse_duration(raw.get("window"))
    except ValueError as exc:
        raise ctx.error(f"{where}: window: {exc}") from None
    aggs_raw = raw.get("aggregates")
    if not isinstance(aggs_raw, list) or not aggs_raw:
        raise ctx.error(f"{where}: needs a non-empty 'aggregates' list")
    aggregates = tuple(_parse_aggregate(ctx, where, a, fields) for a in aggs_raw)
    out = ["window_start", "window_end", *group_by, *(a.name for a in aggregates)]
    clash = {c for c in out if out.count(c) > 1}
    if clash:
        raise ctx.error(f"{where}: output column names collide: {sorted(clash)}")
    return GoldSpec(
        name=name,
        group_by=tuple(group_by),
        window=raw["window"].strip(),
        aggregates=aggregates,
        kafka_sink=_parse_sink(ctx, where, raw.get("kafka_sink"), tuple(group_by), partitions),
    )


def _parse_sink(
    ctx: _Ctx, where: str, raw: Any, group_by: tuple[str, ...], partitions: int
) -> KafkaSinkSpec | None:
    if raw is None:
        return None
    where = f"{where}: kafka_sink"
    if not isinstance(raw, dict):
        raise ctx.error(f"{where} must be a mapping with a 'topic' (and optionally 'key')")
    unknown = set(raw) - _SINK_KEYS
    if unknown:
        raise ctx.error(
            f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(_SINK_KEYS)}"
        )
    topic = raw.get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise ctx.error(f"{where}: 'topic' must be a non-empty string, got {topic!r}")
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise ctx.error(
            f"{where}: topic {topic!r} is not a Kafka topic name ([A-Za-z0-9._-], at most 249)"
        )
    if len(topic) + len(MARKER_SUFFIX) > 249:
        raise ctx.error(f"{where}: topic {topic!r} leaves no room for its {MARKER_SUFFIX!r} topic")
    key = raw.get("key", list(group_by))
    if not isinstance(key, list) or not all(isinstance(c, str) for c in key):
        raise ctx.error(f"{where}: 'key' must be a list of group_by columns, got {key!r}")
    not_grouped = [c for c in key if c not in group_by]
    if not_grouped:
        raise ctx.error(
            f"{where}: key columns {not_grouped} are not group_by columns ({list(group_by)})"
        )
    if len(set(key)) != len(key):
        raise ctx.error(f"{where}: key names a column more than once: {key}")
    n = raw.get("partitions", partitions)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ctx.error(f"{where}: 'partitions' must be a positive integer, got {n!r}")
    return KafkaSinkSpec(topic=topic, key=tuple(key), partitions=n)


def _parse_aggregate(ctx: _Ctx, where: str, raw: Any, fields: dict[str, FieldSpec]) -> Aggregate:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ctx.error(f"{where}: aggregates must be mappings with a 'name', got {raw!r}")
    name, fn, column = raw["name"], raw.get("fn"), raw.get("column")
    if not _IDENT.match(name) or set(raw) - _AGG_KEYS:
        raise ctx.error(
            f"{where}: aggregate {name!r}: bad name or unknown keys {sorted(set(raw) - _AGG_KEYS)}"
        )
    if fn not in AGGREGATE_FNS:
        raise ctx.error(
            f"{where}: aggregate {name!r}: unknown fn {fn!r}; expected one of {list(AGGREGATE_FNS)}"
        )
    if column is None and fn != "count":
        raise ctx.error(f"{where}: aggregate {name!r}: fn {fn} needs a 'column'")
    if column is not None:
        if column not in fields:
            raise ctx.error(
                f"{where}: aggregate {name!r}: column is not a contract field", field=str(column)
            )
        if fn in ("sum", "avg") and not fields[column].is_numeric:
            raise ctx.error(
                f"{where}: aggregate {name!r}: {fn} needs a numeric column, not {fields[column].type}",
                field=column,
            )
    return Aggregate(name=name, fn=fn, column=column)
