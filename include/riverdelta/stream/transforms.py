"""Pure DataFrame transforms: Kafka records -> validated -> silver / quarantine / gold.

No reading or writing here, so every function runs the same on a micro-batch,
a replay or a hand-made test DataFrame. Built-in Spark SQL functions only (no
Python UDFs): the JSON is parsed once into a VARIANT and every check reads it.

Strictness (nothing is coerced or rounded silently; see include/streams.yaml):

* string: a JSON string. long/int: a JSON integer in range. double: any JSON
  number. boolean: true/false.
* decimal(p,s): a JSON number or a string of plain digits (``"12.50"``), with
  at most ``s`` significant decimal places; exponents and overflows are wrong_type.
* timestamp: an ISO-8601 string with an explicit zone (``Z`` or ``+hh:mm``);
  other strings are bad_timestamp, JSON numbers are wrong_type (epoch seconds
  or milliseconds would be a guess). Digits beyond microseconds are truncated.
* Keys outside the contract are kept, as a JSON object, in ``_extra``.
* A JSON object with a duplicate key is not_json (Spark's parser refuses it).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from riverdelta.config.registry import REASONS, FieldSpec, GoldSpec, StreamSpec, parse_duration

KAFKA_COLUMNS = ("key", "value", "topic", "partition", "offset", "kafka_timestamp")
SILVER_KAFKA_COLUMNS = ("topic", "partition", "offset", "kafka_timestamp")

# schema_of_variant() names of JSON scalars.
_INTEGRAL = ("TINYINT", "SMALLINT", "INT", "BIGINT")
_TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$"
_CLIP = 80  # characters of a raw value quoted in a detail message
_MICROS = "decimal(20,0)"  # any long, exactly


def _decimal_re(scale: int) -> str:
    # Trailing zeros beyond the scale are exact, so "1.230" is accepted for scale 2.
    fraction = rf"(\.[0-9]{{1,{scale}}}0*)?" if scale else r"(\.0+)?"
    return rf"^-?[0-9]+{fraction}$"


def _clip(text: Column) -> Column:
    short = F.concat(F.substring(text, 1, _CLIP - 3), F.lit("..."))
    return F.when(F.length(text) > _CLIP, short).otherwise(text)


def _msg(*parts: str | Column) -> Column:
    return F.concat(*(F.lit(p) if isinstance(p, str) else p for p in parts))


def _json_kind(v: Column) -> Column:
    kind = F.schema_of_variant(v)
    return F.when(kind == "VOID", F.lit("null")).otherwise(_clip(kind))


def _is_decimal_kind(kind: Column) -> Column:
    return kind.startswith("DECIMAL")


def _typed(f: FieldSpec, v: Column, kind: Column) -> Column:
    """The JSON value ``v`` read as the field's type; null when it is not one."""
    if f.is_decimal:
        _, scale = f.precision_scale
        text = F.when(
            (kind == "STRING") | kind.isin(*_INTEGRAL) | _is_decimal_kind(kind),
            F.try_variant_get(v, "$", "string"),
        )
        return F.when(text.rlike(_decimal_re(scale)), text.try_cast(f.type))
    if f.type == "timestamp":
        text = F.when(kind == "STRING", F.try_variant_get(v, "$", "string"))
        return F.when(text.rlike(_TIMESTAMP_RE), text.try_cast("timestamp"))
    accepted = {
        "string": kind == "STRING",
        "boolean": kind == "BOOLEAN",
        "int": kind.isin(*_INTEGRAL),
        "long": kind.isin(*_INTEGRAL),
        "double": kind.isin(*_INTEGRAL, "DOUBLE", "FLOAT") | _is_decimal_kind(kind),
    }[f.type]
    return F.when(accepted, F.try_variant_get(v, "$", f.type))


def _type_hint(f: FieldSpec) -> str:
    if f.is_decimal:
        p, s = f.precision_scale
        return (
            f"a {f.type} (a JSON number or numeric string, at most {s} decimal places "
            f"and {p - s} integer digits)"
        )
    if f.type == "timestamp":
        return "a timestamp (an ISO-8601 string with a zone)"
    return {"int": "an int", "long": "a long (JSON integer)"}.get(f.type, f"a {f.type}")


def _allowed_text(f: FieldSpec) -> str:
    values = f.allowed or ()
    if len(values) <= 10:
        return "allowed: " + ", ".join(str(v) for v in values)
    return f"one of {len(values)} allowed values"


def _field_checks(
    stream: StreamSpec, i: int, f: FieldSpec, now: Column
) -> dict[str, tuple[Column, Column]]:
    """reason -> (condition, detail) for one contract field."""
    v, kind, typed = F.col(f"_v{i}"), F.col(f"_k{i}"), F.col(f.name)
    name = f"field '{f.name}'"
    raw = _clip(F.to_json(v))
    present = v.isNotNull() & ~F.is_variant_null(v)
    checks: dict[str, tuple[Column, Column]] = {}
    if f.required:
        checks["missing_field"] = (
            ~F.map_contains_key("_obj", F.lit(f.name)),
            _msg(f"required {name} is missing"),
        )
    if not f.nullable:
        checks["null_field"] = (F.is_variant_null(v), _msg(f"{name} is null but not nullable"))
    is_ts = f.type == "timestamp"
    checks["wrong_type"] = (
        present & typed.isNull() & ((kind != "STRING") if is_ts else F.lit(True)),
        _msg(f"{name} = ", raw, f" is not {_type_hint(f)}"),
    )
    if is_ts:
        checks["bad_timestamp"] = (
            present & (kind == "STRING") & typed.isNull(),
            _msg(
                f"{name} = ", raw, " is not an ISO-8601 timestamp with a zone, "
                "e.g. 2024-05-01T10:00:00Z or 2024-05-01T12:00:00+02:00",
            ),
        )  # fmt: skip
    if f.name == stream.event_time_column:
        ahead = int(parse_duration(stream.max_future).total_seconds() * 1_000_000)
        # The processing time folds into a literal. A long literal is written into the
        # generated Java, so every batch would compile its code afresh; a decimal one is
        # passed by reference. Exact decimals, and a difference rather than a comparison,
        # which the optimizer would unwrap back to longs.
        latest = (F.unix_micros(now) + F.lit(ahead)).cast(_MICROS)
        checks["future_timestamp"] = (
            F.unix_micros(typed).cast(_MICROS) - latest > 0,
            _msg(
                f"{name} = ", typed.cast("string"),
                f" is more than {stream.max_future} ahead of processing time ",
                now.cast("string"),
            ),
        )  # fmt: skip
    if f.min is not None:
        checks["below_minimum"] = (
            typed < F.lit(f.min),
            _msg(f"{name} = ", typed.cast("string"), f" is below minimum {f.min}"),
        )
    if f.allowed is not None:
        checks["not_allowed"] = (
            ~typed.isin(*f.allowed),
            _msg(f"{name} = ", raw, f" is not an allowed value ({_allowed_text(f)})"),
        )
    return checks


def validate(raw: DataFrame, stream: StreamSpec, now_col: Column | None = None) -> DataFrame:
    """Kafka records -> coordinates, one typed column per field, ``_extra``, ``_reason``, ``_detail``.

    ``_reason`` is null for a valid record, else the first reason code of
    ``REASONS`` that applies (fields in contract order within a reason).
    ``now_col`` replaces ``current_timestamp()`` for the future_timestamp check.
    """
    now = now_col if now_col is not None else F.current_timestamp()
    limit = stream.max_value_bytes
    kafka = [F.col(c) for c in KAFKA_COLUMNS[:-1]] + [F.col("timestamp").alias("kafka_timestamp")]
    size = F.octet_length("value")
    # Oversized values are never decoded or parsed: that is what the limit protects.
    utf8 = F.when(size <= limit, F.is_valid_utf8(F.col("value").cast("string")))
    staged = raw.select(*kafka, size.alias("_size"), utf8.alias("_utf8")).select(
        "*",
        F.try_parse_json(F.when(F.col("_utf8"), F.col("value").cast("string"))).alias("_parsed"),
    )
    staged = staged.select(
        "*", F.try_variant_get("_parsed", "$", "map<string,variant>").alias("_obj")
    )
    fields = list(enumerate(stream.fields))
    staged = staged.select(
        "*", *(F.try_element_at("_obj", F.lit(f.name)).alias(f"_v{i}") for i, f in fields)
    )
    names = list(stream.field_names)
    staged = staged.select(
        "*",
        *(F.schema_of_variant(F.col(f"_v{i}")).alias(f"_k{i}") for i, _ in fields),
        F.map_filter("_obj", lambda k, _: ~k.isin(*names)).alias("_extra_map"),
    )
    staged = staged.select(
        "*",
        *(_typed(f, F.col(f"_v{i}"), F.col(f"_k{i}")).alias(f.name) for i, f in fields),
        F.when(F.size("_extra_map") > 0, F.to_json("_extra_map")).alias("_extra"),
    )

    text = F.col("value").cast("string")
    checks: list[tuple[str, Column, Column]] = [
        ("too_large", F.col("_size") > limit,
         _msg("value is ", F.col("_size").cast("string"), f" bytes, above the limit of {limit}")),
        ("not_utf8", ~F.col("_utf8"), _msg("value is not valid UTF-8")),
        ("not_json", F.col("_parsed").isNull(),
         F.when(F.col("value").isNull(), _msg("value is null (a tombstone)"))
         .otherwise(_msg("value is not valid JSON: ", _clip(text)))),
        ("not_object", F.col("_obj").isNull(),
         _msg("expected a JSON object, got ", _json_kind(F.col("_parsed")))),
    ]  # fmt: skip
    per_field = [_field_checks(stream, i, f, now) for i, f in fields]
    for reason in REASONS[4:]:
        checks += [(reason, *fc[reason]) for fc in per_field if reason in fc]

    outcome: Column | None = None
    for reason, cond, detail in checks:
        value = F.struct(F.lit(reason).alias("_reason"), detail.alias("_detail"))
        outcome = F.when(cond, value) if outcome is None else outcome.when(cond, value)
    # The outcome leaves through a generator (one row in, one row out) rather than a
    # projection: the optimizer pushes a filter through a projection by inlining every
    # alias it reads, so split()'s filter on _reason used to end up under the parse with
    # the whole chain expanded (parse_json ~120 times, a ~50k-character plan, generated
    # code beyond the JVM's 64 KB method limit, interpreted fallback: ~10 s per 3000
    # records). A filter on generator output stays above the generator.
    return staged.select(*KAFKA_COLUMNS, *names, "_extra", F.inline(F.array(outcome)))


def split(validated: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(valid, invalid) records of ``validate``'s output."""
    ok = F.col("_reason").isNull()
    return validated.where(ok), validated.where(~ok)


def to_silver(valid: DataFrame, stream: StreamSpec) -> DataFrame:
    return valid.select(*stream.field_names, "_extra", *SILVER_KAFKA_COLUMNS)


def to_quarantine(invalid: DataFrame) -> DataFrame:
    """The raw record and why it was refused; ``resolved*`` are for a later replay."""
    return invalid.select(
        *KAFKA_COLUMNS,
        F.col("_reason").alias("reason"),
        F.col("_detail").alias("detail"),
        F.lit(False).alias("resolved"),
        F.lit(None).cast("timestamp").alias("resolved_at"),
        F.lit(None).cast("string").alias("resolved_by"),
    )


def dedupe_batch(silver: DataFrame, stream: StreamSpec) -> DataFrame:
    """One row per id: the first in the log (lowest topic, partition, offset), so reruns agree."""
    first = Window.partitionBy(stream.id_column).orderBy("topic", "partition", "offset")
    return (
        silver.withColumn("_rank", F.row_number().over(first))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )


_AGGREGATES = {
    "sum": F.sum,
    "count": F.count,
    "count_distinct": F.count_distinct,
    "min": F.min,
    "max": F.max,
    "avg": F.avg,
}


def aggregate_gold(
    silver: DataFrame, stream: StreamSpec, gold: GoldSpec, extra: dict[str, Column] | None = None
) -> DataFrame:
    """Exact aggregates per event-time tumbling window and group (a batch computation).

    ``extra``: more aggregates (name -> column) computed in the same pass, kept after
    the declared ones, e.g. the gold refresher's ``updated_at``.
    """
    extra = extra or {}
    aggs = [
        _AGGREGATES[a.fn](F.col(a.column) if a.column else F.lit(1)).alias(a.name)
        for a in gold.aggregates
    ] + [col.alias(name) for name, col in extra.items()]
    window = F.window(stream.event_time_column, gold.window).alias("_window")
    return (
        silver.groupBy(window, *gold.group_by)
        .agg(*aggs)
        .select(
            F.col("_window.start").alias("window_start"),
            F.col("_window.end").alias("window_end"),
            *gold.group_by,
            *(a.name for a in gold.aggregates),
            *extra,
        )
    )
