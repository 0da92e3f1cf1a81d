"""Gold Kafka sinks: registry parsing (one-line errors) and the record encoding (pure)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import yaml

from riverdelta.config.registry import ContractError, KafkaSinkSpec, load_registry, parse_registry
from riverdelta.config.settings import SHIPPED_STREAMS
from riverdelta.stream.kafka_sink import (
    Marker,
    changed_rows,
    encode_key,
    encode_value,
    json_value,
    transactional_id,
)

pytestmark = pytest.mark.unit


def _with_sink(shipped: dict, sink, stream: str = "transactions") -> dict:
    data = copy.deepcopy(shipped)
    data["streams"][stream]["gold"][0]["kafka_sink"] = sink
    return data


def test_shipped_registry_declares_no_sink_and_names_its_topics():
    reg = load_registry(SHIPPED_STREAMS)
    assert all(g.kafka_sink is None for s in reg.streams.values() for g in s.gold)
    assert reg.topics() == {"rd.transactions": 3, "rd.page_views": 3}
    assert reg.topic_configs() == {}


def test_sink_key_defaults_to_the_group_columns(shipped):
    reg = parse_registry(_with_sink(shipped, {"topic": "transactions_user_5m_out"}))
    gold = reg.get("transactions").gold[0]
    assert gold.kafka_sink == KafkaSinkSpec(
        topic="transactions_user_5m_out", key=("user_id",), partitions=3
    )
    assert gold.kafka_sink.marker_topic == "transactions_user_5m_out-marker"
    assert reg.topics()["transactions_user_5m_out"] == 3
    assert reg.topics()["transactions_user_5m_out-marker"] == 1
    assert reg.topic_configs() == {"transactions_user_5m_out-marker": {"cleanup.policy": "compact"}}
    assert transactional_id("transactions", gold) == (
        "riverdelta-transactions-user_5m-transactions_user_5m_out"
    )


def test_sink_with_explicit_key_and_partitions(shipped):
    reg = parse_registry(_with_sink(shipped, {"topic": "out", "key": ["user_id"], "partitions": 6}))
    assert reg.get("transactions").gold[0].kafka_sink == KafkaSinkSpec("out", ("user_id",), 6)


@pytest.mark.parametrize(
    ("sink", "fragments"),
    [
        ({"topic": ""}, ["kafka_sink", "'topic' must be a non-empty string"]),
        ({"key": ["user_id"]}, ["kafka_sink", "'topic' must be a non-empty string"]),
        ({"topic": "a b"}, ["kafka_sink", "is not a Kafka topic name"]),
        ({"topic": "x" * 249}, ["leaves no room"]),
        ({"topic": "out", "key": ["amount"]}, ["key columns ['amount'] are not group_by columns"]),
        ({"topic": "out", "key": "user_id"}, ["'key' must be a list of group_by columns"]),
        ({"topic": "out", "key": ["user_id", "user_id"]}, ["more than once"]),
        ({"topic": "out", "partitions": 0}, ["'partitions' must be a positive integer"]),
        ({"topic": "out", "acks": "all"}, ["unknown keys ['acks']"]),
        ("out", ["kafka_sink must be a mapping"]),
        ({"topic": "rd.transactions"}, ["already used by stream 'transactions' as its source"]),
        ({"topic": "rd.page_views"}, ["already used by stream 'page_views' as its source"]),
    ],
)
def test_bad_sinks_are_one_line_contract_errors(shipped, sink, fragments):
    with pytest.raises(ContractError) as err:
        parse_registry(_with_sink(shipped, sink))
    message = str(err.value)
    assert "\n" not in message
    assert "stream 'transactions'" in message and "gold 'user_5m'" in message
    for fragment in fragments:
        assert fragment in message


def test_two_sinks_cannot_share_a_topic(shipped):
    data = _with_sink(shipped, {"topic": "out"})
    data["streams"]["page_views"]["gold"][0]["kafka_sink"] = {"topic": "out"}
    with pytest.raises(ContractError, match="topic 'out' is already used by stream"):
        parse_registry(data)


# --------------------------------------------------------------------------- encoding


def test_json_values_are_exact_and_utc():
    assert json_value(datetime(2026, 5, 1, 10, 0, tzinfo=UTC)) == "2026-05-01T10:00:00Z"
    assert json_value(datetime(2026, 5, 1, 10, 0)) == "2026-05-01T10:00:00Z"  # naive is UTC
    plus2 = timezone(timedelta(hours=2))
    assert json_value(datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=plus2)) == (
        "2026-05-01T10:00:00.123000Z"
    )
    assert json_value(Decimal("12345678901234567.10")) == "12345678901234567.10"
    assert [json_value(v) for v in (3, 1.5, "a", None, True)] == [3, 1.5, "a", None, True]


def _gold():
    reg = parse_registry(_with_sink(yaml.safe_load(SHIPPED_STREAMS.read_text()), {"topic": "out"}))
    return reg.get("transactions").gold[0]


ROW = {
    "window_start": datetime(2026, 5, 1, 10, 0, tzinfo=UTC),
    "window_end": datetime(2026, 5, 1, 10, 5, tzinfo=UTC),
    "user_id": "user-7",
    "total_amount": Decimal("100.50"),
    "event_count": 3,
    "updated_at": datetime(2026, 5, 1, 10, 4, 59, tzinfo=UTC),
}
MARKER = Marker(refresh=4, txn_app_id="app", batch=17, gold_version=9, records=1, windows=1)


def test_record_key_is_group_and_window():
    gold = _gold()
    assert json.loads(encode_key(gold.kafka_sink, ROW)) == {
        "user_id": "user-7",
        "window_start": "2026-05-01T10:00:00Z",
    }
    # Deterministic bytes: the same row always lands on the same partition.
    assert encode_key(gold.kafka_sink, dict(reversed(list(ROW.items())))) == encode_key(
        gold.kafka_sink, ROW
    )


def test_record_value_is_the_gold_row_and_the_refresh():
    value = json.loads(encode_value("transactions", _gold(), ROW, MARKER))
    assert value == {
        "user_id": "user-7",
        "window_start": "2026-05-01T10:00:00Z",
        "window_end": "2026-05-01T10:05:00Z",
        "total_amount": "100.50",
        "event_count": 3,
        "updated_at": "2026-05-01T10:04:59Z",
        "_stream": "transactions",
        "_gold": "user_5m",
        "_refresh": 4,
        "_batch": 17,
        "_app_id": "app",
    }


def test_marker_round_trips():
    raw = MARKER.encode("transactions", "user_5m")
    assert json.loads(raw)["stream"] == "transactions"
    assert json.loads(raw)["app_id"] == "app"  # the key markers already on Kafka carry
    assert Marker.decode(raw) == MARKER


def test_only_new_or_changed_rows_are_sent():
    gold = _gold()
    same = dict(ROW, user_id="user-1")
    changed_before = dict(ROW, user_id="user-2", event_count=1)
    changed_now = dict(ROW, user_id="user-2", event_count=2)
    new = dict(ROW, user_id="user-3")
    current = [same, changed_now, new]
    assert changed_rows(gold, current, [same, changed_before]) == [changed_now, new]
    assert changed_rows(gold, current, None) == current  # nothing known: every row
    assert changed_rows(gold, current, current) == []


def test_a_sink_that_does_not_open_is_the_refreshers_error():
    import threading
    from types import SimpleNamespace

    from riverdelta.stream.gold import GoldRefresher
    from riverdelta.stream.ingest import gold_failure
    from riverdelta.stream.job import DriverState
    from riverdelta.stream.kafka_sink import SinkError

    class Unreachable:
        def open(self):
            raise SinkError("kafka sink out: init_transactions failed: timed out")

    spec = load_registry(SHIPPED_STREAMS).get("transactions")
    refresher = GoldRefresher(
        None, spec, {}, "app", 1.0, None, threading.Lock(), sinks={"user_5m": Unreachable()}
    )
    refresher.start()  # no thread, no recovery: the next batch fails with the error
    assert isinstance(refresher.error, SinkError)
    with pytest.raises(RuntimeError, match="gold refresh failed: kafka sink out"):
        refresher.raise_if_failed()
    job = SimpleNamespace(state=DriverState(gold=refresher))
    assert gold_failure(job) == (
        "gold refresh failed: kafka sink out: init_transactions failed: timed out"
    )
    assert gold_failure(SimpleNamespace(state=DriverState())) is None
