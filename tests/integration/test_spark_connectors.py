"""Spark's Kafka source and Delta both load from the jar cache and work together."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_kafka_to_delta_and_back(spark, kafka, topic, lake):
    from confluent_kafka import Producer
    from deltalake import DeltaTable

    n = 1_000
    producer = Producer({"bootstrap.servers": kafka})
    for i in range(n):
        producer.produce(topic, key=str(i % 7).encode(), value=f'{{"i": {i}}}'.encode())
    assert producer.flush(30) == 0

    raw = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", kafka)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    out = str(lake / "raw")
    raw.selectExpr("partition", "offset", "CAST(value AS STRING) AS value").write.format(
        "delta"
    ).save(out)

    back = spark.read.format("delta").load(out)
    assert back.count() == n
    assert back.selectExpr("count(DISTINCT partition, offset)").first()[0] == n
    # An independent reader (delta-rs) sees the same table.
    assert DeltaTable(out).to_pyarrow_table().num_rows == n


def test_session_loads_only_cached_jars(spark):
    from riverdelta.launch import jars

    loaded = spark.sparkContext.getConf().get("spark.jars").split(",")
    assert sorted(loaded) == sorted(str(p) for p in jars.jars("spark"))
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
