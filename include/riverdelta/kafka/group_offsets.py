"""A stream's processed offsets, committed to a Kafka consumer group for Kafka's own tools.

Spark's Kafka source keeps its positions in the checkpoint, so ``kafka-consumer-groups
--describe``, Kafka UIs and lag exporters see nothing. After every committed batch
the driver commits the batch's end offsets to the group ``riverdelta-<stream>``:
reporting only. Nothing ever reads from that group, and the checkpoint stays the
truth (a commit lost in a crash is overwritten by the next batch's).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from riverdelta.config.registry import TopicSource

log = logging.getLogger("riverdelta.kafka.group_offsets")


def group_id(stream: str) -> str:
    return f"riverdelta-{stream}"


def end_offsets_of_progress(progress: dict[str, Any]) -> dict[str, dict[int, int]]:
    """topic -> partition -> next offset to read, from a query progress's Kafka sources."""
    found: dict[str, dict[int, int]] = {}
    for source in progress.get("sources") or []:
        if not str(source.get("description", "")).startswith("KafkaV2"):
            continue
        end = source.get("endOffset")
        if isinstance(end, str):
            end = json.loads(end)
        for topic, parts in (end or {}).items():
            found.setdefault(topic, {}).update({int(p): int(o) for p, o in parts.items()})
    return found


def commit(stream: str, offsets: dict[str, dict[int, int]], timeout: float = 10.0) -> None:
    """Commit ``offsets`` to the stream's group without joining it (a standalone commit)."""
    from confluent_kafka import TopicPartition

    from riverdelta.kafka import client as kafka_client

    tps = [TopicPartition(t, p, o) for t, parts in offsets.items() for p, o in parts.items()]
    if not tps:
        return
    consumer = kafka_client.consumer(**{"group.id": group_id(stream), "socket.timeout.ms": 10000})
    try:
        consumer.commit(offsets=tps, asynchronous=False)
    finally:
        consumer.close()


def committed(
    stream: str, source: TopicSource | str, timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> offset the group holds (the Kafka tools' CURRENT-OFFSET)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from riverdelta.config.settings import settings
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops.health import end_offsets

    parts = sorted(end_offsets(settings().kafka_bootstrap, source))
    request = ConsumerGroupTopicPartitions(
        group_id(stream), [TopicPartition(t, p) for t, p in parts]
    )
    admin = kafka_client.admin()
    futures = admin.list_consumer_group_offsets([request], request_timeout=timeout)
    result = futures[group_id(stream)].result()
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def group_lag(stream: str, source: TopicSource | str) -> int:
    """LAG summed as ``kafka-consumer-groups --describe`` computes it: end - committed."""
    from riverdelta.config.settings import settings
    from riverdelta.ops.health import end_offsets

    held = committed(stream, source)
    ends = end_offsets(settings().kafka_bootstrap, source)
    return sum(max(end - held.get(p, 0), 0) for p, end in ends.items())


def make_group_committer(stream: str, query_name: str) -> Any:
    """A ``StreamingQueryListener`` committing each batch's end offsets of ``query_name``."""
    from pyspark.sql.streaming import StreamingQueryListener

    class GroupCommitter(StreamingQueryListener):
        def __init__(self) -> None:
            self.last: dict[str, dict[int, int]] | None = None

        def onQueryStarted(self, event: Any) -> None:
            pass

        def onQueryProgress(self, event: Any) -> None:
            # Reporting must never take the stream down: a failed commit is logged only.
            try:
                progress = json.loads(event.progress.json)
                if progress.get("name") != query_name:
                    return
                offsets = end_offsets_of_progress(progress)
                if offsets and offsets != self.last:
                    commit(stream, offsets)
                    self.last = offsets
            except Exception as exc:
                log.warning("could not commit offsets to group %s: %s", group_id(stream), exc)

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            pass

    return GroupCommitter()
