"""Create every topic the stream registry declares (sources, gold Kafka sinks and their markers).

Manual or daily; idempotent (existing topics are left as they are). Useful on a
distributed stack where `make up` does not create topics.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["riverdelta", "platform"],
    doc_md=__doc__,
)
def platform_topics():
    @task
    def create_topics() -> list[str]:
        from riverdelta.airflow.env import kafka_connection
        from riverdelta.config.registry import load_registry
        from riverdelta.kafka import client as kafka_client

        registry = load_registry()
        with kafka_connection():  # the kafka_default connection, as every Riverdelta task
            return kafka_client.create_topics(registry.topics(), registry.topic_configs())

    create_topics()


platform_topics()
