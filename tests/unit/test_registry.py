"""The stream registry: the shipped file parses, bad contracts fail with useful messages."""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal

import pytest
import yaml

from riverdelta.config.registry import (
    AggregateFn,
    ContractError,
    HealthPolicy,
    RestartPolicy,
    UnknownStreamError,
    load_registry,
    parse_duration,
    parse_registry,
)
from riverdelta.config.settings import SHIPPED_STREAMS

pytestmark = pytest.mark.unit


def test_shipped_registry_parses_with_defaults_merged():
    reg = load_registry(SHIPPED_STREAMS)
    assert reg.names == ["page_views", "transactions"]
    tx = reg.get("transactions")
    assert (tx.topic, tx.key, tx.id_column, tx.event_time_column) == (
        "rd.transactions",
        "user_id",
        "event_id",
        "event_time",
    )
    assert (tx.partitions, tx.trigger, tx.max_value_bytes, tx.max_future) == (
        3,
        "2 seconds",
        65536,
        "1 day",
    )
    assert (tx.gold_trigger, tx.max_offsets_per_trigger) == ("5 seconds", 100_000)
    assert tx.health == HealthPolicy(max_lag_seconds=120, max_batch_age_seconds=300)
    assert dict(tx.health) == {"max_lag_seconds": 120, "max_batch_age_seconds": 300}
    assert tx.restart == RestartPolicy()  # the defaults: 3 restarts in 900 s, backoff 15 s
    amount = tx.field_spec("amount")
    assert (amount.type, amount.min, amount.precision_scale) == (
        "decimal(18,2)",
        Decimal(0),
        (18, 2),
    )
    assert len(tx.field_spec("currency").allowed) >= 25
    assert tx.table_names() == {
        "bronze": "transactions_bronze",
        "silver": "transactions_silver",
        "quarantine": "transactions_quarantine",
        "gold_user_5m": "transactions_gold_user_5m",
    }
    gold = tx.gold[0]
    assert (gold.group_by, gold.window) == (("user_id",), "5 minutes")
    assert [(a.name, a.fn, a.column) for a in gold.aggregates] == [
        ("total_amount", "sum", "amount"),
        ("event_count", "count", None),
    ]
    pv = reg.get("page_views")
    user = pv.field_spec("user_id")
    assert (user.required, user.nullable) == (False, True)
    assert pv.table_names()["gold_url_1m"] == "page_views_gold_url_1m"
    assert [a.fn for a in pv.gold[0].aggregates] == ["count", "count_distinct"]


def test_spark_schema_ddl():
    tx = load_registry(SHIPPED_STREAMS).get("transactions")
    assert tx.spark_schema_ddl() == (
        "`event_id` string, `user_id` string, `action` string, `amount` decimal(18,2), "
        "`currency` string, `merchant` string, `event_time` timestamp"
    )


def test_default_path_comes_from_settings(tmp_path, monkeypatch, shipped):
    from riverdelta.config.settings import settings

    data = copy.deepcopy(shipped)
    data["streams"] = {"only_one": data["streams"]["transactions"]}
    path = tmp_path / "streams.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("RIVERDELTA_STREAMS", str(path))
    settings.cache_clear()
    try:
        assert load_registry().names == ["only_one"]
    finally:
        monkeypatch.undo()
        settings.cache_clear()


def test_unknown_stream_lists_known_ones():
    reg = load_registry(SHIPPED_STREAMS)
    with pytest.raises(UnknownStreamError, match="known streams: page_views, transactions") as err:
        reg.get("orders")
    assert isinstance(err.value, ValueError)
    assert "'orders'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 minutes", timedelta(minutes=10)),
        ("1 minute", timedelta(minutes=1)),
        ("1 day", timedelta(days=1)),
        ("500 milliseconds", timedelta(milliseconds=500)),
        ("2 Hours", timedelta(hours=2)),
        ("1 week", timedelta(weeks=1)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["10 mins", "10", "minutes", "0 seconds", "-1 day", "1.5 hours", ""]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


def _fields(stream: dict) -> dict[str, dict]:
    return {f["name"]: f for f in stream["contract"]["fields"]}


def _set_type(stream, name, value):
    _fields(stream)[name]["type"] = value


BAD_CONTRACTS = [
    # (mutation of the transactions stream, fragments the message must contain)
    (
        lambda s: _set_type(s, "amount", "money"),
        ["'transactions'", "'amount'", "unknown type 'money'"],
    ),
    (lambda s: _set_type(s, "amount", "decimal(40,2)"), ["'amount'", "precision"]),
    (
        lambda s: s.update(id_column="id"),
        ["'transactions'", "id_column 'id' is not a contract field"],
    ),
    (
        lambda s: s.update(event_time_column="ts"),
        ["event_time_column 'ts' is not a contract field"],
    ),
    (lambda s: s.update(event_time_column="merchant"), ["'merchant'", "must be of type timestamp"]),
    (lambda s: s.update(key="account"), ["key 'account' is not a contract field"]),
    (lambda s: s.pop("topic"), ["'transactions'", "exactly one of 'topic'"]),
    (
        lambda s: s.update(topic_pattern="rd[.].*"),
        ["exactly one of 'topic', 'topics' or 'topic_pattern', not ['topic', 'topic_pattern']"],
    ),
    (lambda s: s.update(topics=["a", "b"]), ["not ['topic', 'topics']"]),
    (lambda s: (s.pop("topic"), s.update(topics=[])), ["'topics' must be a non-empty list"]),
    (lambda s: (s.pop("topic"), s.update(topics=["a", "a"])), ["names a topic twice"]),
    (lambda s: (s.pop("topic"), s.update(topics=["a b"])), ["'a b' is not a Kafka topic name"]),
    (
        lambda s: (s.pop("topic"), s.update(topic_pattern="rd.(")),
        ["topic_pattern 'rd.(' is not a regular expression"],
    ),
    (
        lambda s: s.update(watermark="10 mins"),
        ["'transactions'", "watermark", "bad duration '10 mins'"],
    ),
    (lambda s: s.update(trigger="soon"), ["trigger", "bad duration 'soon'"]),
    (lambda s: s.update(watermak="10 minutes"), ["unknown keys ['watermak']"]),
    (lambda s: s.update(partitions=0), ["'partitions' must be a positive integer"]),
    (
        lambda s: s.update(max_offsets_per_trigger=-5),
        ["'max_offsets_per_trigger' must be a positive integer"],
    ),
    (lambda s: s.update(gold_trigger="often"), ["gold_trigger", "bad duration 'often'"]),
    (
        lambda s: s.update(health={"max_lag_seconds": "fast"}),
        ["health.max_lag_seconds must be a non-negative number"],
    ),
    (
        lambda s: s.update(restart={"max_restart": 2}),
        ["restart: unknown keys ['max_restart']; expected some of ['backoff_seconds'"],
    ),
    (
        lambda s: s["gold"][0]["aggregates"].append(
            {"name": "p99", "fn": "percentile", "column": "amount"}
        ),
        ["gold 'user_5m'", "aggregate 'p99'", "unknown fn 'percentile'"],
    ),
    (
        lambda s: s["gold"][0]["aggregates"].append({"name": "x", "fn": "sum", "column": "price"}),
        ["gold 'user_5m'", "field 'price'", "not a contract field"],
    ),
    (
        lambda s: s["gold"][0].update(group_by=["country"]),
        ["field 'country'", "group_by column is not a contract field"],
    ),
    (lambda s: s["gold"][0].update(window="5 min"), ["gold 'user_5m'", "window", "bad duration"]),
    (
        lambda s: s["gold"][0]["aggregates"].append(
            {"name": "s", "fn": "sum", "column": "merchant"}
        ),
        ["sum needs a numeric column", "'merchant'"],
    ),
    (
        lambda s: s["gold"][0]["aggregates"].append({"name": "user_id", "fn": "count"}),
        ["output column names collide", "user_id"],
    ),
    (
        lambda s: _fields(s)["merchant"].update(min=0),
        ["'merchant'", "'min' applies to numeric types"],
    ),
    (lambda s: _fields(s)["action"].update(allowed=["buy", 3]), ["'action'", "allowed value 3"]),
    (
        lambda s: _fields(s)["event_id"].update(nullable=True),
        ["'event_id'", "required and not nullable"],
    ),
    (lambda s: _fields(s)["merchant"].update(name="offset"), ["'offset'", "reserved"]),
    (lambda s: _fields(s)["merchant"].update(name="_secret"), ["'_secret'", "identifiers"]),
    (
        lambda s: _fields(s)["merchant"].update(name="user_id"),
        ["'user_id'", "declared more than once"],
    ),
    (lambda s: _fields(s)["merchant"].update(typ="string"), ["'merchant'", "unknown keys ['typ']"]),
    (
        lambda s: _fields(s)["merchant"].update(gen={"kind": "lorem"}),
        ["'merchant'", "unknown gen.kind 'lorem'; expected one of 'choice'"],
    ),
]


@pytest.mark.parametrize(("mutate", "fragments"), BAD_CONTRACTS)
def test_bad_contract_raises_contract_error(shipped, mutate, fragments):
    data = copy.deepcopy(shipped)
    mutate(data["streams"]["transactions"])
    with pytest.raises(ContractError) as err:
        parse_registry(data, "streams.yaml")
    assert isinstance(err.value, ValueError)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_two_streams_cannot_share_a_topic(shipped):
    data = copy.deepcopy(shipped)
    data["streams"]["page_views"]["topic"] = "rd.transactions"
    with pytest.raises(ContractError, match=r"share topic 'rd\.transactions'"):
        parse_registry(data)


def test_dict_defaults_merge_key_by_key(shipped):
    data = copy.deepcopy(shipped)
    data["defaults"]["restart"] = {"max_restarts": 3, "window_seconds": 600}
    data["streams"]["transactions"]["health"] = {"max_lag_seconds": 30}
    data["streams"]["transactions"]["restart"] = {"max_restarts": 5}
    tx = parse_registry(data).get("transactions")
    assert tx.health == HealthPolicy(max_lag_seconds=30, max_batch_age_seconds=300)
    assert tx.restart == RestartPolicy(max_restarts=5, window_seconds=600)


def test_file_problems_are_contract_errors(tmp_path):
    with pytest.raises(ContractError, match="not found"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: [unclosed")
    with pytest.raises(ContractError, match="not valid YAML"):
        load_registry(bad)
    bad.write_text("streams: {}\n")
    with pytest.raises(ContractError, match="non-empty"):
        load_registry(bad)


def test_registry_module_imports_no_heavy_libraries():
    """DAG files import the registry: it must not drag in Spark or Kafka."""
    import subprocess
    import sys

    code = (
        "import sys, riverdelta.config.registry; "
        "bad = [m for m in ('pyspark', 'confluent_kafka') if m in sys.modules]; "
        "import riverdelta.embedded.generator; "
        "bad += [m for m in ('pyspark', 'confluent_kafka') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _with_source(**source) -> dict:
    data = yaml.safe_load(SHIPPED_STREAMS.read_text())
    tx = data["streams"]["transactions"]
    tx.pop("topic")
    tx.update(source)
    return data


def test_a_stream_reads_several_named_topics():
    spec = parse_registry(_with_source(topics=["tx.eu", "tx.us"])).get("transactions")
    assert (spec.topics, spec.topic_pattern, spec.topic) == (("tx.eu", "tx.us"), None, "tx.eu")
    assert spec.matches("tx.us") and not spec.matches("tx.asia")
    reg = parse_registry(_with_source(topics=["tx.eu", "tx.us"]))
    assert {"tx.eu", "tx.us", "rd.page_views"} <= set(reg.topics())


def test_a_stream_reads_the_topics_a_pattern_matches_whole():
    reg = parse_registry(_with_source(topic_pattern=r"tx\..*"))
    spec = reg.get("transactions")
    assert (spec.topics, spec.source.pattern) == ((), r"tx\..*")
    assert not spec.matches("__consumer_offsets")
    assert spec.matches("tx.eu") and not spec.matches("old.tx.eu")  # the whole name, as Java does
    assert not any(spec.matches(t) for t in reg.topics())  # a pattern's topics are not created
    with pytest.raises(ValueError, match="name the topic to write to"):
        _ = spec.topic


def test_a_pattern_matching_another_streams_topic_is_refused():
    with pytest.raises(
        ContractError, match=r"matches topic 'rd.page_views', already used by stream"
    ):
        parse_registry(_with_source(topic_pattern=r"rd\..*"))


def test_policies_are_typed_and_still_read_by_key():
    """ops.control and airflow.stream_dags read the policies as ``policy["key"]``."""
    tx = load_registry(SHIPPED_STREAMS).get("transactions")
    assert tx.health["max_lag_seconds"] == tx.health.max_lag_seconds == 120
    assert "window_seconds" in tx.restart and tx.restart["window_seconds"] == 900.0
    assert [a.fn for a in tx.gold[0].aggregates] == [AggregateFn.SUM, AggregateFn.COUNT]
    assert tx.field_spec("user_id").gen.prefix == "user-"


def test_replace_revalidates_the_spec():
    import dataclasses

    from pydantic import ValidationError

    tx = load_registry(SHIPPED_STREAMS).get("transactions")
    assert dataclasses.replace(tx, gold=()).gold == ()
    with pytest.raises(ValidationError, match="not a contract field"):
        dataclasses.replace(tx, key="nope")
