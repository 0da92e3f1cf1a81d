"""The generator: deterministic, contract-driven, and every poison lands in its own reason."""

from __future__ import annotations

import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from riverdelta.config.registry import REASONS, load_registry, parse_duration
from riverdelta.config.settings import SHIPPED_STREAMS
from riverdelta.embedded.generator import Event, generate, poison_kinds, produce
from riverdelta.stream import transforms as T
from tests.unit.test_transforms import kafka_df, sensors_spec

pytestmark = pytest.mark.unit

BASE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def registry_stream(name):
    return load_registry(SHIPPED_STREAMS).get(name)


def events_df(spark, events: list[Event], partitions: int = 3):
    """Events as Kafka would store them: keyed to a partition, offsets per partition."""
    parts = [zlib.crc32(e.key or b"") % partitions for e in events]
    return kafka_df(spark, [e.value for e in events], [e.key for e in events], partitions=parts)


def test_same_seed_same_events():
    tx = registry_stream("transactions")
    rates = {"poison_rate": 0.2, "duplicate_rate": 0.1, "late_rate": 0.1}
    a = list(generate(tx, 300, seed=5, base_time=BASE, **rates))
    b = list(generate(tx, 300, seed=5, base_time=BASE, **rates))
    c = list(generate(tx, 300, seed=6, base_time=BASE, **rates))
    assert a == b
    assert a != c
    # Without base_time only the timestamps may differ, never the kinds or keys.
    d = list(generate(tx, 300, seed=5, **rates))
    assert [(e.kind, e.key) for e in d] == [(e.kind, e.key) for e in a]


def test_poison_kinds_follow_the_contract(tmp_path):
    assert poison_kinds(registry_stream("transactions")) == REASONS
    # page_views has no min and no allowed list.
    assert set(REASONS) - set(poison_kinds(registry_stream("page_views"))) == {
        "below_minimum",
        "not_allowed",
    }
    assert poison_kinds(sensors_spec(tmp_path)) == REASONS


def test_rates_are_checked():
    tx = registry_stream("transactions")
    with pytest.raises(ValueError, match="rates"):
        list(generate(tx, 10, poison_rate=0.8, duplicate_rate=0.3))
    with pytest.raises(ValueError, match="rates"):
        list(generate(tx, 10, late_rate=-0.1))


def test_valid_events_are_realistic_and_time_ordered(spark):
    import json

    tx = registry_stream("transactions")
    events = list(generate(tx, 200, seed=3, base_time=BASE))
    assert {e.kind for e in events} == {"valid"}
    records = [json.loads(e.value) for e in events]
    assert len({r["event_id"] for r in records}) == 200
    assert all(e.key == r["user_id"].encode() for e, r in zip(events, records, strict=True))
    times = [datetime.fromisoformat(r["event_time"]) for r in records]
    assert times == sorted(times) and times[0] == BASE
    assert times[-1] - times[0] <= parse_duration(tx.watermark) / 2


@pytest.mark.parametrize("stream", ["transactions", "page_views", "sensors"])
def test_each_poison_kind_gets_its_reason(spark, tmp_path, stream):
    spec = sensors_spec(tmp_path) if stream == "sensors" else registry_stream(stream)
    events = list(generate(spec, 250, seed=17, poison_rate=1.0, base_time=BASE))
    assert {e.kind for e in events} == set(poison_kinds(spec))
    rows = T.validate(events_df(spark, events, partitions=1), spec).orderBy("offset").collect()
    mismatches = [
        (e.kind, r["_reason"], r["_detail"])
        for e, r in zip(events, rows, strict=True)
        if e.kind != r["_reason"]
    ]
    assert mismatches == []


def test_a_generated_batch_reconciles_exactly(spark):
    """Quarantine per reason == poison per kind; silver == unique valid + late ids."""
    from pyspark.sql import functions as F

    tx = registry_stream("transactions")
    events = list(
        generate(
            tx, 2000, seed=42, poison_rate=0.1, duplicate_rate=0.05, late_rate=0.03, base_time=BASE
        )
    )
    kinds = Counter(e.kind for e in events)
    assert kinds["duplicate"] > 50 and kinds["late"] > 30 and kinds["valid"] > 1500

    validated = T.validate(events_df(spark, events), tx).persist()
    try:
        valid, invalid = T.split(validated)
        by_reason = {
            r["reason"]: r["count"]
            for r in T.to_quarantine(invalid).groupBy("reason").count().collect()
        }
        assert by_reason == {k: n for k, n in kinds.items() if k in REASONS}
        silver = T.dedupe_batch(T.to_silver(valid, tx), tx)
        stats = silver.agg(
            F.count("*").alias("rows"),
            F.count_distinct(tx.id_column).alias("ids"),
            F.sum(
                (F.col("event_time") < F.lit(BASE - 2 * parse_duration(tx.watermark))).cast("int")
            ).alias("late"),
        ).first()
        assert stats["rows"] == stats["ids"] == kinds["valid"] + kinds["late"]
        assert stats["late"] == kinds["late"]
        assert valid.count() - stats["rows"] == kinds["duplicate"]
    finally:
        validated.unpersist()


def test_duplicates_resend_exact_bytes_of_a_recent_valid_event():
    tx = registry_stream("transactions")
    events = list(generate(tx, 500, seed=9, duplicate_rate=0.2, base_time=BASE))
    seen: dict[bytes, int] = {}
    for i, event in enumerate(events):
        if event.kind == "valid":
            seen[event.value] = i
        else:
            assert event.kind == "duplicate"
            assert event.value in seen and i - seen[event.value] < 100
            assert event.key == events[seen[event.value]].key


class FakeProducer:
    instances: list[FakeProducer] = []

    def __init__(self, conf):
        self.conf, self.sent, self.callbacks = conf, [], []
        FakeProducer.instances.append(self)

    def produce(self, topic, value, key, on_delivery):
        self.sent.append((topic, key, value))
        self.callbacks.append(on_delivery)

    def poll(self, _timeout):
        return 0

    def flush(self, _timeout):
        for callback in self.callbacks:
            callback(self.conf.get("_fail"), None)
        self.callbacks = []
        return 0


def test_produce_summarises_what_it_sent(monkeypatch):
    import confluent_kafka

    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    tx = registry_stream("transactions")
    summary = produce(
        tx, 400, bootstrap="x:1", poison_rate=0.1, duplicate_rate=0.05, late_rate=0.05, seed=1
    )
    producer = FakeProducer.instances[-1]
    assert producer.conf["partitioner"] == "murmur2_random"
    assert producer.conf["enable.idempotence"] is True
    assert {t for t, _, _ in producer.sent} == {"rd.transactions"}
    assert summary["stream"] == "transactions" and summary["topic"] == "rd.transactions"
    assert summary["sent"] == 400 == len(producer.sent) == sum(summary["by_kind"].values())
    kinds = summary["by_kind"]
    assert summary["valid"] == kinds["valid"]
    assert summary["duplicates"] == kinds.get("duplicate", 0)
    assert summary["late"] == kinds.get("late", 0)
    assert summary["poison"] == sum(n for k, n in kinds.items() if k in REASONS)
    assert 0 not in kinds.values()
    assert summary["seconds"] >= 0 and summary["rate"] > 0
    # Same seed, same records, in the same order (timestamps aside).
    expected = [(e.key, e.kind) for e in generate(tx, 400, seed=1, poison_rate=0.1,
                                                    duplicate_rate=0.05, late_rate=0.05)]  # fmt: skip
    assert [k for _, k, _ in producer.sent] == [k for k, _ in expected]


def test_produce_honours_rate_and_raises_on_delivery_errors(monkeypatch):
    import time

    import confluent_kafka

    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    tx = registry_stream("transactions")
    start = time.monotonic()
    produce(tx, 30, bootstrap="x:1", rate=100)
    assert time.monotonic() - start >= 0.25

    class Failing(FakeProducer):
        def __init__(self, conf):
            super().__init__({**conf, "_fail": "broker down"})

    monkeypatch.setattr(confluent_kafka, "Producer", Failing)
    with pytest.raises(RuntimeError, match=r"30 records failed delivery, first: broker down"):
        produce(tx, 30, bootstrap="x:1")


def test_late_events_are_older_than_two_watermarks():
    import json

    pv = registry_stream("page_views")
    events = list(generate(pv, 400, seed=4, late_rate=0.2, base_time=BASE))
    limit = BASE - 2 * parse_duration(pv.watermark)
    late = [
        datetime.fromisoformat(json.loads(e.value)["event_time"])
        for e in events
        if e.kind == "late"
    ]
    assert late and all(t < limit for t in late)
    assert all(t > limit - timedelta(hours=1) for t in late)
