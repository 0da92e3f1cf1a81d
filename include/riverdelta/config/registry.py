"""The stream registry: ``include/streams.yaml`` loaded into validated pydantic models.

Streams are configuration only. Everything a stream needs (topic, contract,
tables, gold aggregates, health thresholds) comes from here. The specs are
pydantic dataclasses: pydantic checks types and shapes, the validators below
check what relates fields to each other, and every problem in the file is
reported as a one-line ``ContractError`` naming the stream, the field and the
fix, so a bad contract stops ``riverdelta up`` instead of a running query.

They are dataclasses (not ``BaseModel``) so ``dataclasses.replace`` (which
re-validates), positional construction and equality keep working for callers.

DAG files import this module: no pyspark or confluent_kafka here.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import field, replace
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from annotated_types import Ge, Le, MinLen
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from riverdelta.config.settings import ConfigError
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


class AggregateFn(StrEnum):
    SUM = "sum"
    COUNT = "count"
    COUNT_DISTINCT = "count_distinct"
    MIN = "min"
    MAX = "max"
    AVG = "avg"


class GenKind(StrEnum):
    CHOICE = "choice"
    POOL = "pool"
    RANGE = "range"
    UUID = "uuid"
    URL = "url"
    USER_AGENT = "user_agent"


class Layer(StrEnum):
    """The per-stream tables maintenance may Z-order."""

    BRONZE = "bronze"
    SILVER = "silver"
    QUARANTINE = "quarantine"


AGGREGATE_FNS = tuple(f.value for f in AggregateFn)
GEN_KINDS = tuple(k.value for k in GenKind)
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
# Kafka's legal topic names (at most 249 characters; "." and ".." are not topics).
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# The sink's control topic: one partition holding the marker of every committed refresh.
MARKER_SUFFIX = "-marker"
DEFAULT_TRIGGER = "2 seconds"

_CONFIG = ConfigDict(extra="forbid")


class ContractError(ConfigError):
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


# --------------------------------------------------------------------------- field types


class _Problem(RiverdeltaError, ValueError):
    """A validator's complaint, with the contract field it is about when it is about one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class _Expected(_Problem):
    """``must be <what>, got <value>``: the key is put in front, not before a colon."""


def _expect(what: str) -> WrapValidator:
    """Any failure of the wrapped type reads as one plain sentence instead of pydantic's."""

    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise _Expected(f"must be {what}, got {value!r}") from None

    return WrapValidator(check)


def _duration(value: Any) -> str:
    parse_duration(value)
    return value.strip()


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Expected(f"must be a non-empty string, got {value!r}")
    if not _TOPIC.match(value) or value in (".", ".."):
        raise ValueError(f"topic {value!r} is not a Kafka topic name ([A-Za-z0-9._-], at most 249)")
    return value


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ValueError("names are identifiers ([A-Za-z][A-Za-z0-9_]*)")
    return value


def _field_name(value: Any) -> str:
    if _identifier(value) in RESERVED_COLUMNS:
        raise ValueError("the name is reserved for a pipeline column")
    return value


def _lower_ident(what: str):
    def check(value: Any) -> str:
        if not isinstance(value, str) or not _STREAM_NAME.match(value):
            raise ValueError(f"{what} are lower-case identifiers ([a-z][a-z0-9_]*)")
        return value

    return BeforeValidator(check)


def _canonical_type(raw: Any) -> str:
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text in SIMPLE_TYPES:
        return text
    match = _DECIMAL.match(text or "")
    if match:
        p, s = int(match.group(1)), int(match.group(2))
        if not 1 <= p <= 38 or s > p:
            raise ValueError(f"decimal({p},{s}): need 1 <= precision <= 38 and scale <= precision")
        return f"decimal({p},{s})"
    raise ValueError(
        f"unknown type {raw!r}; expected one of {', '.join(SIMPLE_TYPES)}, decimal(p,s)"
    )


def _layer(value: Any) -> Layer:
    try:
        return Layer(value)
    except ValueError:
        raise ValueError(f"layer {value!r}; expected one of {[x.value for x in Layer]}") from None


def _cron(value: Any) -> str:
    if not isinstance(value, str) or len(value.split()) != 5:
        raise _Expected(f"must be a 5-field cron string, got {value!r}")
    return value


Duration = Annotated[str, BeforeValidator(_duration)]
Topic = Annotated[str, BeforeValidator(_topic)]
PositiveInt = Annotated[int, Strict(), Ge(1), _expect("a positive integer")]
NonNegativeInt = Annotated[int, Strict(), Ge(0), _expect("a non-negative integer")]
NonNegative = Annotated[StrictInt | StrictFloat, Ge(0), _expect("a non-negative number")]
Rate = Annotated[StrictInt | StrictFloat, Ge(0), Le(1), _expect("a number in [0, 1]")]
Number = Annotated[StrictInt | StrictFloat | Annotated[Decimal, Strict()], _expect("a number")]
Flag = Annotated[bool, Strict(), _expect("true or false")]
Name = Annotated[str, Strict(), MinLen(1), _expect("a non-empty string")]
Names = Annotated[tuple[StrictStr, ...], _expect("a list of field names")]
SinkKey = Annotated[tuple[StrictStr, ...], _expect("a list of group_by columns")]
Allowed = Annotated[tuple[Any, ...], MinLen(1), _expect("a non-empty list")]
Columns = Annotated[tuple[StrictStr, ...], MinLen(1), _expect("a non-empty list of columns")]


def _refuse_unknown(cls: type, data: Any) -> Any:
    """extra="forbid" says which key is wrong; this also says which keys are right."""
    if isinstance(data, dict):
        known = set(cls.__pydantic_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    return data


# --------------------------------------------------------------------------- policies


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return _refuse_unknown(cls, data)


@dataclass(frozen=True, config=_CONFIG)
class _Spec:
    """The specs' base: what every one refuses (subclasses inherit the validator)."""

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return _refuse_unknown(cls, data)


class _Policy(_Model):
    """A stream's thresholds: typed fields, still readable as ``policy["key"]``."""

    # ops.control and airflow.stream_dags read these by key.
    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields


class HealthPolicy(_Policy):
    """Alert thresholds of ``check_health`` (``dict(policy)`` gives both)."""

    max_lag_seconds: NonNegative
    max_batch_age_seconds: NonNegative


class RestartPolicy(_Policy):
    """The crash-loop policy: at most ``max_restarts`` within ``window_seconds``."""

    max_restarts: NonNegativeInt = 3
    window_seconds: NonNegative = 900.0
    backoff_seconds: NonNegative = 15.0


class GenHint(_Model):
    """How the generator makes a field's values; unset means derived from the type."""

    kind: GenKind | None = None
    values: tuple[Any, ...] = ()
    prefix: StrictStr | None = None
    size: PositiveInt = 100
    min: Number | None = None
    max: Number | None = None
    null_rate: Rate = 0.1
    absent_rate: Rate = 0.1

    @model_validator(mode="after")
    def _choice_has_values(self) -> GenHint:
        if self.kind == GenKind.CHOICE and not self.values:
            raise ValueError("kind 'choice' needs a non-empty 'values' list")
        return self


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, config=_CONFIG)
class FieldSpec(_Spec):
    name: Annotated[str, BeforeValidator(_field_name)]
    # canonical: string | long | int | double | boolean | timestamp | decimal(p,s)
    type: Annotated[str, BeforeValidator(_canonical_type)]
    required: Flag = True
    nullable: Flag = False
    min: Number | None = None
    allowed: Allowed | None = None
    gen: GenHint | None = None
    # Values are redacted wherever the gate reports them (messages, Data Docs, failed rows).
    sensitive: Flag = False

    @field_validator("min")
    @classmethod
    def _min(cls, value: Any, info: ValidationInfo) -> int | float | Decimal | None:
        ftype = info.data.get("type")
        if value is None or ftype is None:
            return value
        if not _is_numeric(ftype):
            raise ValueError(f"'min' applies to numeric types only, not {ftype}")
        if ftype in ("int", "long"):
            if value != int(value):
                raise ValueError(f"'min' must be an integer for type {ftype}")
            return int(value)
        if ftype.startswith("decimal("):
            # Through str so 0.1 stays 0.1 and does not become the binary float's expansion.
            return Decimal(str(value))
        return float(value)

    @field_validator("allowed")
    @classmethod
    def _allowed(cls, value: Any, info: ValidationInfo) -> tuple[Any, ...] | None:
        ftype, minimum = info.data.get("type"), info.data.get("min")
        if value is None or ftype is None:
            return value
        if ftype not in ALLOWED_LIST_TYPES:
            raise ValueError(f"'allowed' applies to {', '.join(ALLOWED_LIST_TYPES)} only")
        want = str if ftype == "string" else int
        for v in value:
            if isinstance(v, bool) or not isinstance(v, want):
                raise ValueError(f"allowed value {v!r} is not a {ftype}")
            if minimum is not None and v < minimum:
                raise ValueError(f"allowed value {v!r} is below min {minimum}")
        return tuple(dict.fromkeys(value))

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
        return _is_numeric(self.type)


def _is_numeric(ftype: str) -> bool:
    return ftype.startswith("decimal(") or ftype in NUMERIC_TYPES


@dataclass(frozen=True, config=_CONFIG)
class Aggregate(_Spec):
    name: Annotated[str, BeforeValidator(_identifier)]
    fn: AggregateFn
    column: StrictStr | None = None

    @model_validator(mode="after")
    def _needs_column(self) -> Aggregate:
        if self.column is None and self.fn != AggregateFn.COUNT:
            raise ValueError(f"fn {self.fn} needs a 'column'")
        return self


@dataclass(frozen=True, config=_CONFIG)
class KafkaSinkSpec(_Spec):
    """A gold table's Kafka output: every updated (group, window) row as JSON (riverdelta.stream.kafka_sink)."""

    topic: Topic
    key: SinkKey  # group columns in the record key; window_start is always added
    partitions: PositiveInt = 3

    @field_validator("topic")
    @classmethod
    def _room_for_marker(cls, topic: str) -> str:
        if len(topic) + len(MARKER_SUFFIX) > 249:
            raise ValueError(f"topic {topic!r} leaves no room for its {MARKER_SUFFIX!r} topic")
        return topic

    @field_validator("key")
    @classmethod
    def _distinct(cls, key: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(key)) != len(key):
            raise ValueError(f"key names a column more than once: {list(key)}")
        return key

    @property
    def marker_topic(self) -> str:
        """One partition: the marker committed in each refresh's transaction."""
        return self.topic + MARKER_SUFFIX


@dataclass(frozen=True, config=_CONFIG)
class GoldSpec(_Spec):
    name: Annotated[str, _lower_ident("gold names")]
    window: Duration
    aggregates: tuple[Aggregate, ...]
    group_by: Names = ()
    kafka_sink: KafkaSinkSpec | None = None

    @field_validator("aggregates")
    @classmethod
    def _some(cls, aggregates: tuple[Aggregate, ...]) -> tuple[Aggregate, ...]:
        if not aggregates:
            raise ValueError("'aggregates' must be a non-empty list")
        return aggregates

    @model_validator(mode="after")
    def _columns(self) -> GoldSpec:
        out = ["window_start", "window_end", *self.group_by, *(a.name for a in self.aggregates)]
        clash = {c for c in out if out.count(c) > 1}
        if clash:
            raise ValueError(f"output column names collide: {sorted(clash)}")
        sink = self.kafka_sink
        not_grouped = [c for c in sink.key if c not in self.group_by] if sink else []
        if not_grouped:
            raise ValueError(
                f"kafka_sink: key columns {not_grouped} are not group_by columns "
                f"({list(self.group_by)})"
            )
        return self


@dataclass(frozen=True, config=_CONFIG)
class MaintenanceSpec(_Spec):
    """When ``maintain_<stream>`` runs and what it keeps (see ``riverdelta.ops.maintenance``)."""

    schedule: Annotated[str, BeforeValidator(_cron)]
    retention: Duration = "7 days"
    zorder: dict[Annotated[Layer, BeforeValidator(_layer)], Columns] = field(default_factory=dict)


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


@dataclass(frozen=True, config=_CONFIG)
class StreamSpec(_Spec):
    name: Annotated[str, _lower_ident("stream names")]
    key: Name
    id_column: Name
    event_time_column: Name
    watermark: Duration
    health: HealthPolicy
    fields: tuple[FieldSpec, ...]
    # The source: named topics (``topic: a`` is ``topics: [a]``), or a pattern, never both.
    topics: tuple[Topic, ...] = ()
    partitions: PositiveInt = 3
    trigger: Duration = DEFAULT_TRIGGER
    max_value_bytes: PositiveInt = 65536
    max_future: Duration = "1 day"
    gold: tuple[GoldSpec, ...] = ()
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # The gold refresher's interval: how often touched windows are rewritten.
    gold_trigger: Duration = "5 seconds"
    # Bound on one live batch: a backlog is worked through in batches of this size.
    max_offsets_per_trigger: PositiveInt = 100_000
    maintenance: MaintenanceSpec = field(default_factory=lambda: MaintenanceSpec("0 3 * * *"))
    # A regular expression a whole topic name must match (Spark's subscribePattern):
    # topics created later that match are read and reported too.
    topic_pattern: str | None = None

    @field_validator("fields")
    @classmethod
    def _some(cls, fields: tuple[FieldSpec, ...]) -> tuple[FieldSpec, ...]:
        if not fields:
            raise ValueError("the contract has no fields")
        return fields

    @field_validator("topics")
    @classmethod
    def _distinct_topics(cls, topics: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(topics)) != len(topics):
            raise ValueError(f"names a topic twice: {list(topics)}")
        return topics

    @model_validator(mode="after")
    def _consistent(self) -> StreamSpec:
        """What relates the stream's parts: the columns they name are contract fields."""
        by_name = _check_roles(self)
        _check_gold(self.gold, by_name)
        for layer, columns in self.maintenance.zorder.items():
            bad = [c for c in columns if c not in by_name]
            if bad:
                raise ValueError(f"maintenance.zorder.{layer}: {bad} are not contract fields")
        return self

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
        names = {layer.value: f"{self.name}_{layer.value}" for layer in Layer}
        names.update({f"gold_{g.name}": f"{self.name}_gold_{g.name}" for g in self.gold})
        return names


def _check_roles(spec: StreamSpec) -> dict[str, FieldSpec]:
    """The key, id and event-time columns are contract fields fit for their role."""
    names = [f.name for f in spec.fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _Problem("declared more than once", field=dup[0])
    by_name = {f.name: f for f in spec.fields}
    for role in ("key", "id_column", "event_time_column"):
        value = getattr(spec, role)
        if value not in by_name:
            raise ValueError(f"{role} {value!r} is not a contract field ({', '.join(names)})")
    id_field, et_field = by_name[spec.id_column], by_name[spec.event_time_column]
    if id_field.type not in ("string", "long", "int"):
        raise _Problem("id_column must be of type string, long or int", field=id_field.name)
    for f, role in ((id_field, "id_column"), (et_field, "event_time_column")):
        if not f.required or f.nullable:
            raise _Problem(f"the {role} must be required and not nullable", field=f.name)
    if et_field.type != "timestamp":
        raise _Problem(
            f"event_time_column must be of type timestamp, not {et_field.type}", field=et_field.name
        )
    return by_name


def _check_gold(golds: tuple[GoldSpec, ...], fields: dict[str, FieldSpec]) -> None:
    names = [g.name for g in golds]
    if len(set(names)) != len(names):
        raise ValueError(f"gold names must be unique, got {names}")
    for gold in golds:
        where = f"gold {gold.name!r}"
        for col in gold.group_by:
            if col not in fields:
                raise _Problem(f"{where}: group_by column is not a contract field", field=col)
        for a in gold.aggregates:
            if a.column is None:
                continue
            if a.column not in fields:
                raise _Problem(
                    f"{where}: aggregate {a.name!r}: column is not a contract field", field=a.column
                )
            if a.fn in (AggregateFn.SUM, AggregateFn.AVG) and not fields[a.column].is_numeric:
                raise _Problem(
                    f"{where}: aggregate {a.name!r}: {a.fn} needs a numeric column, "
                    f"not {fields[a.column].type}",
                    field=a.column,
                )


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


def _merge(defaults: dict, raw: Any, where: str, name: str) -> dict:
    if not isinstance(raw, dict):
        raise ContractError(f"{where}: stream {name!r}: expected a mapping")
    merged = {**defaults, **raw}
    for key in ("health", "restart", "maintenance"):
        if isinstance(defaults.get(key), dict) and isinstance(raw.get(key), dict):
            merged[key] = {**defaults[key], **raw[key]}
    return merged


def _parse_stream(name: str, raw: dict, where: str) -> StreamSpec:
    try:
        shaped = _shape(name, raw)
        return StreamSpec(**shaped)
    except _Problem as exc:  # from _shape, before pydantic
        raise ContractError(_message(where, name, exc.field, str(exc))) from None
    except ValidationError as exc:
        raise ContractError(_one_line(exc, where, name, shaped)) from None


def _shape(name: str, raw: dict) -> dict[str, Any]:
    """The stream as the file spells it -> the spec's keyword arguments."""
    # The spec's own keys, with the source and the contract spelled as the file spells them.
    known = set(StreamSpec.__pydantic_fields__) - {"name", "fields"} | {"topic", "contract"}
    unknown = set(raw) - known
    if unknown:
        raise _Problem(f"unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    shaped = {k: v for k, v in raw.items() if k not in ("topic", "contract")}
    shaped["name"] = name
    shaped["topics"], shaped["topic_pattern"] = _source(raw)
    contract = raw.get("contract")
    if not isinstance(contract, dict) or not isinstance(contract.get("fields"), list):
        raise _Problem("'contract' must be a mapping with a 'fields' list")
    shaped["fields"] = contract["fields"]
    # An empty `gold:` or `restart:` (YAML null) means none, as an absent one does.
    shaped = {k: v for k, v in shaped.items() if v is not None or k not in ("gold", "restart")}
    maintenance = raw.get("maintenance") or {}
    if isinstance(maintenance, dict):
        # Default: nightly at a minute of the stream's own, not every stream at once.
        crc = zlib.crc32(name.encode()) % 60
        shaped["maintenance"] = {"schedule": f"{crc} 3 * * *", **maintenance}
        if maintenance.get("zorder", {}) is None:
            del shaped["maintenance"]["zorder"]
    if isinstance(raw.get("gold"), list):
        shaped["gold"] = [_sink_defaults(g, raw.get("partitions", 3)) for g in raw["gold"]]
    return shaped


def _sink_defaults(gold: Any, partitions: Any) -> Any:
    """A sink's key defaults to all of group_by and its partitions to the stream's."""
    if isinstance(gold, dict) and gold.get("group_by", ()) is None:
        gold = {k: v for k, v in gold.items() if k != "group_by"}  # `group_by:` is none
    if not isinstance(gold, dict) or not isinstance(gold.get("kafka_sink"), dict):
        return gold
    defaults = {"topic": None, "key": gold.get("group_by") or [], "partitions": partitions}
    sink = {**defaults, **gold["kafka_sink"]}
    return {**gold, "kafka_sink": sink}


def _source(raw: dict) -> tuple[Any, str | None]:
    """(named topics, pattern) from exactly one of ``topic``, ``topics``, ``topic_pattern``."""
    named = [k for k in ("topic", "topics", "topic_pattern") if k in raw]
    if len(named) != 1:
        raise _Problem(
            "name exactly one of 'topic', 'topics' or 'topic_pattern'"
            + (f", not {named}" if named else "")
        )
    if "topic_pattern" in raw:
        pattern = raw["topic_pattern"]
        if not isinstance(pattern, str) or not pattern.strip():
            raise _Problem(f"'topic_pattern' must be a non-empty string, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _Problem(
                f"topic_pattern {pattern!r} is not a regular expression: {exc}"
            ) from None
        return (), pattern
    values = [raw["topic"]] if "topic" in raw else raw["topics"]
    if not isinstance(values, list) or not values:
        raise _Problem(f"'topics' must be a non-empty list of topic names, got {values!r}")
    return values, None


def _message(where: str, stream: str, field: str | None, problem: str) -> str:
    at = f"stream {stream!r}" + (f", field {field!r}" if field else "")
    return f"{where}: {at}: {problem}"


def _one_line(exc: ValidationError, where: str, stream: str, shaped: dict) -> str:
    """Pydantic's first error as one sentence: stream, field, the part of it, the fix."""
    err = exc.errors()[0]
    field, parts, path = _locate(err["loc"], shaped)
    cause = (err.get("ctx") or {}).get("error")
    if path[-1:] == ["[key]"]:  # a mapping's key (a zorder layer): the mapping is the place
        path = path[:-2]
    key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
    if isinstance(cause, _Problem) and cause.field:
        field = cause.field
    if isinstance(cause, _Expected):
        problem = f"{_subject(key, path, parts)} {cause}".lstrip()
    elif cause is not None:
        # "'min' applies to ...", "allowed value 3 ...": the message names the key already.
        named = not key or str(cause).lstrip("'").startswith(key)
        problem = str(cause) if named else f"{key}: {cause}"
    elif err["type"] == "missing":
        problem = f"missing {key!r}"
    elif err["type"] == "enum":
        problem = f"unknown {key} {err['input']!r}; expected one of {err['ctx']['expected']}"
    elif err["type"] in _SHAPES:
        shape = _SHAPES[err["type"]]
        problem = f"{_subject(key, path, parts)} must be {shape}, got {err['input']!r}".lstrip()
    else:
        problem = f"{key}: {err['msg']}, got {err['input']!r}" if key else err["msg"]
    return _message(where, stream, field, ": ".join([*parts, problem]))


def _subject(key: str, path: list, parts: list[str]) -> str:
    """Of ``<subject> must be ...``: 'partitions', health.max_lag_seconds, kafka_sink."""
    if key:
        return repr(key) if len(path) == 1 else key
    return parts.pop() if parts else ""


# Pydantic's wrong-shape errors, said the way the YAML says it.
_SHAPES = {
    "dataclass_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
}


def _locate(loc: tuple, shaped: dict) -> tuple[str | None, list[str], list[str | int]]:
    """Pydantic's location -> (contract field, named parts such as ``gold 'x'``, key path)."""
    field, parts, path = None, [], []
    node: Any = shaped
    i = 0
    while i < len(loc):
        seg, nxt = loc[i], loc[i + 1] if i + 1 < len(loc) else None
        child = node.get(seg) if isinstance(node, dict) else None
        if seg in ("fields", "gold", "aggregates") and isinstance(nxt, int) and not path:
            item = child[nxt] if isinstance(child, list) and nxt < len(child) else None
            label = item.get("name") if isinstance(item, dict) else None
            if label is None:
                path += [seg, nxt]
            elif seg == "fields":
                field = str(label)
            else:
                parts.append(f"{'gold' if seg == 'gold' else 'aggregate'} {label!r}")
            node, i = item, i + 2
            continue
        if seg == "kafka_sink" and not path:
            parts.append("kafka_sink")
        else:
            path.append(seg)
        node, i = child, i + 1
    return field, parts, path


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
