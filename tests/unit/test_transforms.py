"""Pure transforms on hand-made Kafka DataFrames (no broker): exact outcomes."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from riverdelta.config.registry import REASONS, load_registry
from riverdelta.stream import transforms as T

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[2] / "include" / "streams.yaml"
KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, "
    "timestamp timestamp, timestampType int"
)
KAFKA_TS = datetime(2024, 5, 1, 12, 0)

# A stream the code has never heard of, defined only here.
SENSORS_YAML = """
defaults:
  health: {max_lag_seconds: 60, max_batch_age_seconds: 120}
streams:
  sensors:
    topic: test.sensors
    key: sensor_id
    id_column: reading_id
    event_time_column: measured_at
    watermark: "2 minutes"
    max_value_bytes: 2048
    max_future: "1 hour"
    contract:
      fields:
        - {name: reading_id, type: long}
        - {name: sensor_id, type: string, gen: {kind: pool, prefix: "s-", size: 5}}
        - {name: site, type: string, allowed: [north, south, east]}
        - {name: level, type: int, min: 0, allowed: [0, 1, 2, 3]}
        - {name: temperature, type: double, min: -50}
        - {name: calibrated, type: boolean, nullable: true}
        - {name: battery, type: "decimal(5,3)", required: false, min: 0}
        - {name: measured_at, type: timestamp}
    gold:
      - name: site_1m
        group_by: [site]
        window: "1 minute"
        aggregates:
          - {name: readings, fn: count}
          - {name: sensors, fn: count_distinct, column: sensor_id}
          - {name: avg_temp, fn: avg, column: temperature}
          - {name: min_temp, fn: min, column: temperature}
          - {name: max_temp, fn: max, column: temperature}
          - {name: total_battery, fn: sum, column: battery}
"""


def kafka_df(spark, values, keys=None, *, partitions=None, topic="t"):
    """A DataFrame with the Kafka source schema; offsets count per partition."""
    keys = keys or [b"k"] * len(values)
    partitions = partitions or [0] * len(values)
    next_offset: dict[int, int] = {}
    rows = []
    for key, value, partition in zip(keys, values, partitions, strict=True):
        offset = next_offset.get(partition, 0)
        next_offset[partition] = offset + 1
        rows.append((key, value, topic, partition, offset, KAFKA_TS, 0))
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def sensors_spec(tmp_path):
    path = tmp_path / "sensors.yaml"
    path.write_text(SENSORS_YAML)
    return load_registry(path).get("sensors")


@pytest.fixture(scope="module")
def tx():
    return load_registry(SHIPPED).get("transactions")


@pytest.fixture(scope="module")
def pv():
    return load_registry(SHIPPED).get("page_views")


GOOD = {
    "event_id": "e-1",
    "user_id": "u-1",
    "action": "purchase",
    "amount": Decimal("12.50"),
    "currency": "USD",
    "merchant": "Acme",
    "event_time": "2024-05-01T10:00:00Z",
}
DROP = object()


def tx_value(**changes) -> bytes:
    from riverdelta.embedded.generator import dumps

    record = {k: v for k, v in {**GOOD, **changes}.items() if v is not DROP}
    return dumps(record).encode()


# (id, value, reason, fragment of the detail)
CASES = [
    ("valid", tx_value(), None, None),
    ("decimal_as_string", tx_value(amount="12.50"), None, None),
    ("decimal_trailing_zeros", tx_value(amount=Decimal("12.500")), None, None),
    ("decimal_integer", tx_value(amount=7), None, None),
    ("offset_timestamp", tx_value(event_time="2024-05-01T12:00:00.250+02:00"), None, None),
    (
        "too_large",
        b'{"x":"' + b"y" * 70_000 + b'"}',
        "too_large",
        "70008 bytes, above the limit of 65536",
    ),
    ("not_utf8", b'{"event_id":"caf\xe9"}', "not_utf8", "not valid UTF-8"),
    ("tombstone", None, "not_json", "tombstone"),
    ("truncated", b'{"event_id": "e-1", ', "not_json", "not valid JSON"),
    ("empty", b"", "not_json", "not valid JSON"),
    ("duplicate_key", b'{"a":1,"a":2}', "not_json", "not valid JSON"),
    ("array", b"[1, 2]", "not_object", "got ARRAY"),
    ("json_null", b"null", "not_object", "got null"),
    ("number", b"42", "not_object", "got BIGINT"),
    ("missing", tx_value(merchant=DROP), "missing_field", "required field 'merchant' is missing"),
    ("null", tx_value(currency=None), "null_field", "field 'currency' is null but not nullable"),
    (
        "string_as_number",
        tx_value(merchant=5),
        "wrong_type",
        "field 'merchant' = 5 is not a string",
    ),
    (
        "decimal_exponent",
        tx_value(amount="1e3"),
        "wrong_type",
        "field 'amount' = \"1e3\" is not a decimal(18,2)",
    ),
    (
        "decimal_too_precise",
        tx_value(amount=Decimal("1.005")),
        "wrong_type",
        "at most 2 decimal places",
    ),
    ("decimal_overflow", tx_value(amount=Decimal("1" * 17)), "wrong_type", "16 integer digits"),
    ("decimal_bool", tx_value(amount=True), "wrong_type", "field 'amount' = true"),
    ("decimal_padded", tx_value(amount=" 12.50"), "wrong_type", "is not a decimal"),
    ("ts_number", tx_value(event_time=1714557600), "wrong_type", "is not a timestamp"),
    ("ts_naive", tx_value(event_time="2024-05-01T10:00:00"), "bad_timestamp", "with a zone"),
    ("ts_impossible", tx_value(event_time="2024-02-30T10:00:00Z"), "bad_timestamp", "2024-02-30"),
    ("ts_text", tx_value(event_time="yesterday"), "bad_timestamp", '"yesterday"'),
    (
        "future",
        tx_value(event_time="2024-05-03T10:00:00Z"),
        "future_timestamp",
        "more than 1 day ahead",
    ),
    (
        "negative",
        tx_value(amount=Decimal("-3.50")),
        "below_minimum",
        "field 'amount' = -3.50 is below minimum 0",
    ),
    (
        "currency",
        tx_value(currency="XYZ"),
        "not_allowed",
        "field 'currency' = \"XYZ\" is not an allowed value",
    ),
    ("action", tx_value(action="steal"), "not_allowed", "allowed: purchase, refund, transfer"),
    # Several problems: the first reason in REASONS order wins, whatever the field order.
    (
        "first_reason_wins",
        tx_value(amount=Decimal(-1), merchant=DROP, currency=None),
        "missing_field",
        "'merchant'",
    ),
    ("null_before_type", tx_value(user_id=3, action=None), "null_field", "'action'"),
    ("type_before_allowed", tx_value(currency=1, action="steal"), "wrong_type", "'currency'"),
]
NOW = datetime(2024, 5, 2, 9, 0)  # "future" above is 25 hours ahead of it


@pytest.fixture(scope="module")
def validated_cases(spark, tx):
    from pyspark.sql import functions as F

    df = kafka_df(spark, [value for _, value, _, _ in CASES])
    rows = T.validate(df, tx, now_col=F.lit(NOW).cast("timestamp")).orderBy("offset").collect()
    return {case[0]: row for case, row in zip(CASES, rows, strict=True)}


@pytest.mark.parametrize(("case", "value", "reason", "detail"), CASES, ids=[c[0] for c in CASES])
def test_reason_codes(validated_cases, case, value, reason, detail):
    row = validated_cases[case]
    assert row["_reason"] == reason, row["_detail"]
    if detail is None:
        assert row["_detail"] is None
    else:
        assert detail in row["_detail"]


def test_every_reason_code_is_covered():
    assert {c[2] for c in CASES} - {None} == set(REASONS)


def test_valid_values_are_typed_exactly(validated_cases):
    row = validated_cases["valid"]
    assert row["amount"] == Decimal("12.50") and row["event_time"] == datetime(2024, 5, 1, 10, 0)
    assert validated_cases["decimal_as_string"]["amount"] == Decimal("12.50")
    assert validated_cases["decimal_trailing_zeros"]["amount"] == Decimal("12.50")
    assert validated_cases["decimal_integer"]["amount"] == Decimal("7.00")
    # The offset is applied: 12:00:00.250+02:00 is 10:00:00.250 UTC.
    assert validated_cases["offset_timestamp"]["event_time"] == datetime(
        2024, 5, 1, 10, 0, 0, 250000
    )


def test_validated_schema(spark, tx):
    out = T.validate(kafka_df(spark, [tx_value()]), tx)
    assert out.columns == [
        *T.KAFKA_COLUMNS,
        *tx.field_names,
        "_extra",
        "_reason",
        "_detail",
    ]
    types = dict(out.dtypes)
    assert types["amount"] == "decimal(18,2)" and types["event_time"] == "timestamp"
    assert types["_extra"] == "string" and types["kafka_timestamp"] == "timestamp"


def test_extra_fields_are_kept_as_json(spark, tx):
    value = tx_value(channel="web", meta={"a": [1, 2]})
    row = T.validate(kafka_df(spark, [value, tx_value()]), tx).orderBy("offset").collect()
    assert row[0]["_reason"] is None
    assert json.loads(row[0]["_extra"]) == {"channel": "web", "meta": {"a": [1, 2]}}
    assert row[1]["_extra"] is None


def test_optional_and_nullable_fields(spark, pv):
    base = {
        "event_id": "p-1",
        "session_id": "s-1",
        "url": "https://example.com/",
        "referrer": None,
        "user_agent": "ua",
        "event_time": "2024-05-01T10:00:00Z",
    }
    values = [
        json.dumps(base).encode(),  # user_id absent: optional
        json.dumps({**base, "user_id": None}).encode(),  # null: nullable
        json.dumps({k: v for k, v in base.items() if k != "referrer"}).encode(),  # required
    ]
    rows = T.validate(kafka_df(spark, values), pv).orderBy("offset").collect()
    assert [r["_reason"] for r in rows] == [None, None, "missing_field"]
    assert rows[0]["user_id"] is None and rows[0]["referrer"] is None
    assert "'referrer'" in rows[2]["_detail"]


def test_split_silver_and_quarantine(spark, tx):
    values = [tx_value(), tx_value(amount=Decimal(-1)), None]
    df = kafka_df(spark, values, keys=[b"a", b"b", None])
    valid, invalid = T.split(T.validate(df, tx))
    silver = T.to_silver(valid, tx)
    assert silver.columns == [
        *tx.field_names,
        "_extra",
        "topic",
        "partition",
        "offset",
        "kafka_timestamp",
    ]
    assert silver.count() == 1
    quarantine = T.to_quarantine(invalid)
    assert dict(quarantine.dtypes) == {
        "key": "binary",
        "value": "binary",
        "topic": "string",
        "partition": "int",
        "offset": "bigint",
        "kafka_timestamp": "timestamp",
        "reason": "string",
        "detail": "string",
        "resolved": "boolean",
        "resolved_at": "timestamp",
        "resolved_by": "string",
    }
    rows = quarantine.orderBy("offset").collect()
    assert [(r["offset"], r["reason"], r["resolved"], r["resolved_at"]) for r in rows] == [
        (1, "below_minimum", False, None),
        (2, "not_json", False, None),
    ]
    # The raw bytes are kept untouched for a later replay.
    assert bytes(rows[0]["value"]) == values[1] and rows[1]["value"] is None
    assert bytes(rows[0]["key"]) == b"b"


def test_dedupe_keeps_first_in_log(spark, tx):
    first = tx_value(merchant="first")
    later = tx_value(merchant="later")
    other = tx_value(event_id="e-2")
    # e-1 arrives at (p1, o0), (p0, o1) and (p0, o0): (0, 0) is the first in the log.
    df = kafka_df(spark, [later, first, later, other], partitions=[1, 0, 0, 2])
    deduped = T.dedupe_batch(T.to_silver(T.split(T.validate(df, tx))[0], tx), tx)
    rows = {r["event_id"]: (r["merchant"], r["partition"], r["offset"]) for r in deduped.collect()}
    assert rows == {"e-1": ("first", 0, 0), "e-2": ("Acme", 2, 0)}


def _silver(spark, stream, records):
    """Silver rows straight from records (bypassing Kafka), typed as the contract says."""
    from riverdelta.embedded.generator import dumps

    df = kafka_df(spark, [dumps(r).encode() for r in records])
    valid, invalid = T.split(T.validate(df, stream))
    assert invalid.count() == 0
    return T.to_silver(valid, stream)


def test_gold_aggregation_is_exact(spark, tx):
    def rec(i, user, amount, at):
        return {
            **GOOD,
            "event_id": f"e{i}",
            "user_id": user,
            "amount": Decimal(amount),
            "event_time": at,
        }

    silver = _silver(
        spark,
        tx,
        [
            rec(1, "u1", "10.00", "2024-05-01T10:01:00Z"),
            rec(2, "u1", "5.55", "2024-05-01T10:04:59.999Z"),
            rec(3, "u1", "1.00", "2024-05-01T10:05:00Z"),  # the next window: end is exclusive
            rec(4, "u2", "0.10", "2024-05-01T10:02:00Z"),
            rec(5, "u2", "0.20", "2024-05-01T10:03:00Z"),
        ],
    )
    gold = T.aggregate_gold(silver, tx, tx.gold[0])
    assert gold.columns == ["window_start", "window_end", "user_id", "total_amount", "event_count"]
    rows = {tuple(r) for r in gold.collect()}
    w0, w1, w2 = (datetime(2024, 5, 1, 10, m) for m in (0, 5, 10))
    assert rows == {
        (w0, w1, "u1", Decimal("15.55"), 2),
        (w1, w2, "u1", Decimal("1.00"), 1),
        (w0, w1, "u2", Decimal("0.30"), 2),
    }


def test_gold_count_distinct_is_exact(spark, pv):
    def rec(i, session, url, at):
        return {
            "event_id": f"p{i}",
            "session_id": session,
            "url": url,
            "referrer": None,
            "user_agent": "ua",
            "event_time": at,
        }

    records = [rec(i, f"s{i % 3}", "/a", f"2024-05-01T10:00:{i:02d}Z") for i in range(10)]
    records += [
        rec(20, "s9", "/b", "2024-05-01T10:00:30Z"),
        rec(21, "s9", "/a", "2024-05-01T10:01:00Z"),
    ]
    gold = T.aggregate_gold(_silver(spark, pv, records), pv, pv.gold[0])
    rows = {(r["window_start"].minute, r["url"], r["views"], r["sessions"]) for r in gold.collect()}
    assert rows == {(0, "/a", 10, 3), (0, "/b", 1, 1), (1, "/a", 1, 1)}


def test_a_stream_defined_only_in_yaml(spark, tmp_path):
    sensors = sensors_spec(tmp_path)

    def rec(i, site, temp, battery, at, **extra):
        return {
            "reading_id": i,
            "sensor_id": f"s-{i % 2}",
            "site": site,
            "level": 1,
            "temperature": temp,
            "calibrated": None,
            "battery": battery,
            "measured_at": at,
            **extra,
        }

    from riverdelta.embedded.generator import dumps

    good = [
        rec(1, "north", 20.5, Decimal("3.7"), "2024-05-01T10:00:10Z"),
        rec(2, "north", -3, Decimal("3.650"), "2024-05-01T10:00:50Z"),
        rec(3, "south", 11.25, "0.5", "2024-05-01T10:01:00Z"),
    ]
    bad = [
        rec(4, "west", 1.0, Decimal(1), "2024-05-01T10:00:00Z"),
        rec(5, "north", -60.0, Decimal(1), "2024-05-01T10:00:00Z"),
        rec(6, "north", 1.0, Decimal("1.0001"), "2024-05-01T10:00:00Z"),
        rec(7, "north", "warm", Decimal(1), "2024-05-01T10:00:00Z"),
        {**rec(8, "north", 1.0, Decimal(1), "2024-05-01T10:00:00Z"), "level": 9},
        {**rec(9, "north", 1.0, Decimal(1), "2024-05-01T10:00:00Z"), "reading_id": 1.5},
        {**rec(10, "north", 1.0, Decimal(1), "2024-05-01T10:00:00Z"), "calibrated": "yes"},
        rec(11, "north", 1.0, Decimal(1), "2024-05-01T10:00:00Z", pad="x" * 2048),
    ]
    df = kafka_df(spark, [dumps(r).encode() for r in good + bad])
    validated = T.validate(df, sensors)
    reasons = [r["_reason"] for r in validated.orderBy("offset").collect()]
    assert reasons == [None] * 3 + [
        "not_allowed",
        "below_minimum",
        "wrong_type",
        "wrong_type",
        "not_allowed",
        "wrong_type",
        "wrong_type",
        "too_large",
    ]
    silver = T.to_silver(T.split(validated)[0], sensors)
    gold = T.aggregate_gold(silver, sensors, sensors.gold[0]).orderBy("window_start", "site")
    rows = [tuple(r)[2:] for r in gold.collect()]
    assert rows == [
        ("north", 2, 2, 8.75, -3.0, 20.5, Decimal("7.350")),
        ("south", 1, 1, 11.25, 11.25, 11.25, Decimal("0.500")),
    ]
