"""A live stream on a three-broker cluster survives the crash of a partition leader.

Three KRaft nodes on loopback (their own ports, not the session broker), a
topic with replication factor 3 and min ISR 2, the live ingest driver from
spark-submit, acks=all traffic; mid-stream the broker leading the most
partitions is SIGKILLed. Every acked record must reach bronze exactly once, the
stream must keep committing and catch up, and the dead broker's partitions must
have new leaders with an ISR of two.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from itertools import pairwise

import pytest
import yaml

from tests.integration.ingest_helpers import (
    assert_invariants,
    spec_on_topic,
    start_live_driver,
    wait_for,
    wait_gold,
)

pytestmark = pytest.mark.integration

STREAM = "transactions"
WARMUP = 300  # sent at once, before the driver is known to be up
TRAFFIC = 2400  # then at RATE/s, with the kill in the middle
RATE = 30.0
SEED = 21


def _free_ports(n: int) -> list[int]:
    # Hold all sockets until every port is chosen, so no port comes back twice.
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture()
def cluster(monkeypatch):
    """Three brokers; settings point at them (bootstrap, replication 3, min ISR 2)."""
    from riverdelta.config.settings import settings
    from riverdelta.embedded import kafka_broker

    ports = _free_ports(6)
    nodes = kafka_broker.cluster_nodes(
        list(zip(ports[::2], ports[1::2], strict=True)),
        root=settings().home / f"kafka-cluster-{uuid.uuid4().hex[:6]}",
    )
    monkeypatch.setenv("RIVERDELTA_KAFKA_BOOTSTRAP", kafka_broker.cluster_bootstrap(nodes))
    monkeypatch.setenv("RIVERDELTA_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("RIVERDELTA_KAFKA_MIN_INSYNC_REPLICAS", "2")
    settings.cache_clear()
    try:
        kafka_broker.start_cluster(nodes)
        yield nodes
    finally:
        kafka_broker.stop_cluster(nodes)
        monkeypatch.undo()
        settings.cache_clear()


class Traffic(threading.Thread):
    """acks=all producer counting delivery reports per kind; pauses after the warm-up."""

    def __init__(self, spec, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.spec, self.bootstrap = spec, bootstrap
        self.go = threading.Event()
        self.sent = 0
        self.acked: Counter[str] = Counter()
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.failure = exc
        finally:
            self.finished_at = time.monotonic()

    def _run(self) -> None:
        from confluent_kafka import Producer

        from riverdelta.embedded.generator import generate

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "partitioner": "murmur2_random",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "log_level": 0,  # the killed broker's refused connections are expected
            }
        )

        def report(kind: str):
            def on_delivery(err, _msg) -> None:
                if err is None:
                    self.acked[kind] += 1
                else:
                    self.errors.append(str(err))

            return on_delivery

        events = generate(
            self.spec,
            WARMUP + TRAFFIC,
            seed=SEED,
            poison_rate=0.01,
            duplicate_rate=0.01,
            late_rate=0.005,
        )
        start = None
        for i, event in enumerate(events):
            if i == WARMUP:
                producer.flush(60)
                if not self.go.wait(600):
                    raise TimeoutError("the test never released the traffic")
                start = time.monotonic()
            if start is not None:
                ahead = start + (i - WARMUP) / RATE - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
            producer.produce(
                self.spec.topic, event.value, event.key, on_delivery=report(event.kind)
            )
            self.sent += 1
            producer.poll(0)
        remaining = producer.flush(180)
        if remaining:
            self.errors.append(f"{remaining} records undelivered after flush")

    def summary(self) -> dict:
        """What assert_invariants expects, from the acked records only."""
        return {
            "sent": sum(self.acked.values()),
            "valid": self.acked["valid"],
            "late": self.acked["late"],
            "duplicates": self.acked["duplicate"],
            "by_kind": dict(self.acked),
        }


def _registry_on_topic(tmp_path, topic: str):
    from riverdelta.config.settings import settings

    data = yaml.safe_load(settings().streams_file.read_text())
    data["streams"] = {STREAM: {**data["streams"][STREAM], "topic": topic}}
    path = tmp_path / "streams.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _bootstrap() -> str:
    from riverdelta.config.settings import settings

    return settings().kafka_bootstrap


def _partitions(topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """partition -> (leader, replicas, ISR), from a fresh metadata request."""
    from riverdelta.embedded import kafka_broker

    meta = kafka_broker.admin_client().list_topics(topic, timeout=10).topics[topic]
    return {p: (m.leader, list(m.replicas), list(m.isrs)) for p, m in meta.partitions.items()}


def _health(lake, topic: str):
    from riverdelta.ops.health import compute_health

    return compute_health(lake / "cp", _bootstrap(), topic)


def test_live_stream_survives_leader_broker_crash(spark, cluster, lake, tmp_path):
    from confluent_kafka.admin import ConfigResource

    from riverdelta.embedded import kafka_broker
    from riverdelta.kafka import client as kafka_client
    from riverdelta.launch import procs
    from riverdelta.stream.job import make_job

    t_start = time.monotonic()
    topic = f"t-cluster-{uuid.uuid4().hex[:6]}"
    assert kafka_client.create_topics({topic: 3}) == [topic]
    # A broker other than the controller may answer before the new topic's metadata
    # reached it: wait until every partition has a leader in a fresh answer.
    layout = wait_for(
        lambda: (lay := _partitions(topic)) and all(v[0] >= 0 for v in lay.values()) and lay,
        30,
        "the new topic's metadata on every broker",
    )
    assert sorted(layout) == [0, 1, 2]
    assert all(len(replicas) == 3 and len(isr) == 3 for _, replicas, isr in layout.values())
    admin = kafka_broker.admin_client()  # kept referenced until the future resolves
    (described,) = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, topic)]
    ).values()
    assert described.result()["min.insync.replicas"].value == "2"

    spec = spec_on_topic(STREAM, topic)
    registry = _registry_on_topic(tmp_path, topic)
    name = f"cluster-{topic}"
    traffic = Traffic(spec, _bootstrap())
    traffic.start()
    from riverdelta.launch.submit import submit_env

    # submit_env hands the driver the resolved settings: the cluster's bootstrap.
    assert submit_env()["RIVERDELTA_KAFKA_BOOTSTRAP"] == _bootstrap()
    driver = start_live_driver(registry, lake, STREAM, name)
    record: dict = {"topic": topic, "layout_before": layout}
    try:
        # The driver is up once it has committed the warm-up.
        wait_for(
            lambda: (h := _health(lake, topic)).last_batch_id is not None and h.lag_records == 0,
            300,
            "the warm-up to be ingested",
            interval=1.0,
            driver=driver,
        )
        record["driver_up_s"] = round(time.monotonic() - t_start, 1)
        traffic.go.set()
        # Kill a third into the traffic, whatever the batches are doing: on a loaded machine
        # a batch can take a minute, and the kill must still land while records flow.
        wait_for(
            lambda: sum(traffic.acked.values()) >= WARMUP + TRAFFIC // 3,
            180,
            "a third of the traffic",
            interval=0.2,
            driver=driver,
        )
        layout = _partitions(topic)
        leaders = Counter(leader for leader, _, _ in layout.values())
        victim_id = min(leaders, key=lambda b: (-leaders[b], b))
        victim = next(n for n in cluster if n.node_id == victim_id)
        led = sorted(p for p, (leader, _, _) in layout.items() if leader == victim_id)
        before = _health(lake, topic)
        record.update(
            killed_broker=victim_id,
            partitions_led_by_killed=led,
            acked_at_kill=sum(traffic.acked.values()),
            sent_at_kill=traffic.sent,
            batches_before_kill=before.last_batch_id + 1,
        )
        t_kill = time.monotonic()
        assert kafka_broker.stop_node(victim, kill=True)

        def failed_over():
            now = _partitions(topic)
            ok = all(
                leader not in (victim_id, -1) and victim_id not in isr and len(isr) == 2
                for leader, _, isr in now.values()
            )
            return now if ok else None

        after_layout = wait_for(
            failed_over, 120, "new leaders and ISR of 2", interval=1.0, driver=driver
        )
        record["failover_s"] = round(time.monotonic() - t_kill, 1)
        record["layout_after"] = after_layout
        wait_for(
            lambda: _health(lake, topic).last_batch_id > before.last_batch_id,
            180,
            "a batch committed after the kill",
            interval=1.0,
            driver=driver,
        )
        record["first_batch_after_kill_s"] = round(time.monotonic() - t_kill, 1)
        traffic.join(300)
        assert not traffic.is_alive(), "the producer did not finish"
        assert traffic.failure is None, traffic.failure
        assert traffic.errors == []
        acked = sum(traffic.acked.values())

        def caught_up():
            h = _health(lake, topic)
            done = h.lag_records == 0 and sum(h.topic_end_offsets.values()) == acked
            return h if done else None

        final = wait_for(
            caught_up, 240, "lag 0 over every acked record", interval=1.0, driver=driver
        )
        record.update(
            sent=traffic.sent,
            acked=acked,
            acked_after_kill=acked - record["acked_at_kill"],
            topic_end_offsets=sum(final.topic_end_offsets.values()),
            batches_total=final.last_batch_id + 1,
            batches_after_kill=final.last_batch_id - before.last_batch_id,
            catch_up_after_kill_s=round(time.monotonic() - t_kill, 1),
            catch_up_after_producer_s=round(time.monotonic() - traffic.finished_at, 1),
        )
        wait_gold(
            make_job(spec, "live", checkpoint=str(lake / "cp"), tables_root=str(lake / "tables")),
            driver=driver,
        )
    finally:
        procs.stop(name, timeout=10)

    assert traffic.sent == WARMUP + TRAFFIC
    assert acked == traffic.sent  # acks=all with 2 of 3 in sync: no record refused
    assert record["topic_end_offsets"] == acked  # idempotent producer: no retry written twice
    assert record["batches_after_kill"] >= 1
    assert led and all(after_layout[p][0] != victim_id for p in led)
    job = make_job(spec, "live", checkpoint=str(lake / "cp"), tables_root=str(lake / "tables"))
    counts = assert_invariants(spark, spec, job, traffic.summary())
    rows = (
        spark.read.format("delta")
        .load(job.batches_path)
        .where(f"app_id = '{job.txn_app_id}'")
        .orderBy("batch_id")
        .collect()
    )
    # One row per committed batch, each reconciling on its own.
    assert [r["batch_id"] for r in rows] == list(range(record["batches_total"]))
    for r in rows:
        assert r["records_in"] + r["resolved"] == r["silver"] + r["duplicates"] + r["quarantined"]
    # The batches' offset ranges tile every partition from 0 to its end: nothing
    # skipped or read twice across the failover.
    ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for r in rows:
        for t, parts in json.loads(r["offsets"]).items():
            for part, (lo, hi) in parts.items():
                ranges.setdefault((t, int(part)), []).append((lo, hi))
    for tp, spans in ranges.items():
        assert spans[0][0] == 0
        assert all(b[0] == a[1] + 1 for a, b in pairwise(spans)), spans
        assert spans[-1][1] + 1 == final.topic_end_offsets[tp], (tp, spans)
    assert sum(spans[-1][1] + 1 for spans in ranges.values()) == acked
    record.update(
        bronze=counts["bronze"],
        silver=counts["silver"],
        quarantined=sum(counts["quarantine"].values()),
        duplicates=counts["duplicates"],
        total_s=round(time.monotonic() - t_start, 1),
        load_avg=[round(x, 2) for x in os.getloadavg()],
    )
    out = json.dumps(record, default=str, sort_keys=True)
    (tmp_path / "broker_failure.json").write_text(out)
    print(f"\nbroker-failure record: {out}")
