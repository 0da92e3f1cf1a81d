"""The embedded broker is a real Kafka: 10k messages produced and consumed back."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_produce_and_consume_10k(kafka, topic):
    from confluent_kafka import Consumer, Producer

    n = 10_000
    producer = Producer({"bootstrap.servers": kafka, "linger.ms": 20, "acks": "all"})
    for i in range(n):
        producer.produce(topic, key=f"k{i % 97}".encode(), value=f"{i}".encode())
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: set[int] = set()
    partitions: set[int] = set()
    idle = 0
    while len(seen) < n and idle < 30:
        batch = consumer.consume(num_messages=2000, timeout=1.0)
        idle = 0 if batch else idle + 1
        for msg in batch:
            assert msg.error() is None
            seen.add(int(msg.value()))
            partitions.add(msg.partition())
    consumer.close()
    assert seen == set(range(n))
    assert partitions == {0, 1, 2}  # keyed messages spread over every partition


def test_start_is_idempotent(kafka):
    from riverdelta.embedded import kafka_broker
    from riverdelta.launch import procs

    before = procs.running(kafka_broker.NAME)
    again = kafka_broker.start()
    assert before is not None and again.pid == before.pid


def test_stale_pid_file_is_ignored(kafka):
    import json

    from riverdelta.launch import procs

    # A pid file pointing at a live but unrelated process (this test) must not be trusted.
    path = procs.pid_file("ghost")
    path.write_text(
        json.dumps(
            {"name": "ghost", "pid": 1, "start_ticks": -1, "log": "", "cmd": [], "started_at": 0}
        )
    )
    assert procs.running("ghost") is None
    assert not path.exists()
