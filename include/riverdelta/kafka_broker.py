"""The embedded Apache Kafka broker: single node, KRaft, combined broker + controller.

Runs ``kafka.Kafka`` from the cached Maven Central jars with its data under the
runtime home. ``start`` is idempotent and waits until the broker answers a
metadata request; on failure it shows the tail of the broker's log.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from riverdelta import jars, procs
from riverdelta.settings import settings

NAME = "kafka"


class BrokerError(RuntimeError):
    pass


def kafka_home() -> Path:
    return settings().home / "kafka"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError("Java not found: install OpenJDK 17 or set JAVA_HOME (see `make setup`)")
    return java


def _classpath() -> str:
    return os.pathsep.join(str(p) for p in jars.jars("kafka"))


def _write_config() -> Path:
    s = settings()
    home = kafka_home()
    (home / "config").mkdir(parents=True, exist_ok=True)
    props = home / "config" / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={home / 'data'}",
                "num.partitions=3",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # Keep a week of data so replays from the earliest offsets have something to read.
                "log.retention.hours=168",
                "auto.create.topics.enable=false",
                "",
            ]
        )
    )
    log4j = home / "config" / "log4j2.properties"
    log4j.write_text(
        "\n".join(
            [
                "status = warn",
                "appender.console.type = Console",
                "appender.console.name = STDOUT",
                "appender.console.layout.type = PatternLayout",
                "appender.console.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.stdout.ref = STDOUT",
                "logger.kafka.name = kafka",
                "logger.kafka.level = WARN",
                "logger.org.name = org.apache.kafka",
                "logger.org.level = WARN",
                "",
            ]
        )
    )
    return props


def _format_storage(props: Path) -> None:
    if (kafka_home() / "data" / "meta.properties").exists():
        return
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    proc = subprocess.run(
        [
            _java(),
            "-cp",
            _classpath(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(props),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BrokerError(f"formatting the KRaft storage failed:\n{proc.stdout}{proc.stderr}")


def bootstrap() -> str:
    return settings().kafka_bootstrap


def admin_client(**conf: object):
    from confluent_kafka.admin import AdminClient

    # librdkafka logs every refused connection to stderr; start-up polling makes many.
    return AdminClient({"bootstrap.servers": bootstrap(), "log_level": 0, **conf})


def answers(timeout: float = 2.0) -> bool:
    """True when the broker answers a metadata request."""
    admin = admin_client(**{"socket.timeout.ms": int(timeout * 1000)})
    try:
        admin.list_topics(timeout=timeout)
        return True
    except Exception:
        return False


def start(*, wait_seconds: float = 90.0) -> procs.ProcInfo:
    s = settings()
    info = procs.running(NAME)
    if info is not None:
        if answers():
            return info
        procs.stop(NAME)
    for port in (s.kafka_port, s.kafka_controller_port):
        if procs.port_in_use(port):
            raise BrokerError(
                f"port {port} on 127.0.0.1 is already taken by another process, so the embedded "
                "broker cannot listen there. Stop that process (`ss -ltnp | grep "
                f"{port}` shows it) or choose free ports with RIVERDELTA_KAFKA_PORT / "
                "RIVERDELTA_KAFKA_CONTROLLER_PORT."
            )
    props = _write_config()
    _format_storage(props)
    log = s.log_dir / "kafka.log"
    heap = os.environ.get("RIVERDELTA_KAFKA_HEAP", "-Xms256m -Xmx768m").split()
    cmd = [
        _java(),
        *heap,
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={props.parent / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={s.log_dir}",
        "-cp",
        _classpath(),
        "kafka.Kafka",
        str(props),
    ]
    t0 = time.monotonic()
    info = procs.start_detached(NAME, cmd, log=log)
    while time.monotonic() - t0 < wait_seconds:
        if not procs.alive(info):
            procs.pid_file(NAME).unlink(missing_ok=True)
            raise BrokerError(
                f"the Kafka broker exited during start-up. Tail of {log}:\n{procs.tail(log)}"
            )
        if answers(timeout=1.0):
            return info
        time.sleep(0.5)
    procs.stop(NAME)
    raise BrokerError(
        f"the Kafka broker did not answer within {wait_seconds:.0f}s. Tail of {log}:\n{procs.tail(log)}"
    )


def stop() -> bool:
    return procs.stop(NAME, timeout=30)


def create_topics(topics: dict[str, int]) -> list[str]:
    """Create missing topics (name -> partitions); returns the ones created."""
    from confluent_kafka.admin import NewTopic

    admin = admin_client()
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(t, num_partitions=n, replication_factor=1)
        for t, n in topics.items()
        if t not in existing
    ]
    if not wanted:
        return []
    for topic, fut in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"creating topic {topic} failed: {exc}") from exc
    return [t.topic for t in wanted]


def delete_topics(topics: list[str]) -> None:
    admin = admin_client()
    for fut in admin.delete_topics(topics, operation_timeout=30).values():
        try:
            fut.result()
        except Exception as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise
