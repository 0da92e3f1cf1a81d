"""The embedded Apache Kafka broker: single node, KRaft, combined broker + controller.

Runs ``kafka.Kafka`` from the cached Maven Central jars with its data under the
runtime home. ``start`` is idempotent and waits until the broker answers a
metadata request; on failure it shows the tail of the broker's log.

Cluster mode (``cluster_nodes``, ``start_cluster``, ``stop_node``,
``stop_cluster``) runs N such nodes on loopback with a static quorum of all N,
one data dir and one pid file (``kafka-<id>``) each, for replication and
broker-failure tests. The single embedded broker is node 1 of a cluster of one.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from riverdelta.config.settings import settings
from riverdelta.embedded import kafka_certs
from riverdelta.embedded.kafka_certs import BrokerTls
from riverdelta.errors import RiverdeltaError
from riverdelta.kafka import client as kafka_client
from riverdelta.launch import jars, procs

NAME = "kafka"


class BrokerError(RiverdeltaError, RuntimeError):
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


def run_tool(main_class: str, *args: str, timeout: float = 120.0) -> str:
    """Run one of Kafka's own command-line tools (the class its bin/ script runs); stdout."""
    done = subprocess.run(
        [_java(), "-cp", _classpath(), main_class, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise BrokerError(f"{main_class} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def consumer_groups_describe(group: str, servers: str) -> dict[tuple[str, int], dict[str, str]]:
    """``kafka-consumer-groups --describe --group``: (topic, partition) -> its row's columns."""
    out = run_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        servers,
        "--describe",
        "--group",
        group,
    )
    lines = [line.split() for line in out.splitlines() if line.strip()]
    header = next(cols for cols in lines if cols[:2] == ["GROUP", "TOPIC"])
    rows = [dict(zip(header, cols, strict=False)) for cols in lines if cols[0] == group]
    return {(r["TOPIC"], int(r["PARTITION"])): r for r in rows}


@dataclass(frozen=True)
class Node:
    """One KRaft node (broker + controller) on loopback; ``home`` holds config/ and data/."""

    node_id: int
    port: int
    controller_port: int
    home: Path
    name: str  # its pid file / log name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"


def _embedded_node() -> Node:
    s = settings()
    return Node(1, s.kafka_port, s.kafka_controller_port, kafka_home(), NAME)


def cluster_nodes(ports: Sequence[tuple[int, int]], root: Path | None = None) -> list[Node]:
    """Nodes 1..N from (listener port, controller port) pairs, homes under ``root``."""
    root = root if root is not None else settings().home / "kafka-cluster"
    flat = [p for pair in ports for p in pair]
    if len(set(flat)) != len(flat):
        raise BrokerError(f"every node needs its own two ports, got {list(ports)}")
    return [
        Node(i, port, cport, root / f"node-{i}", f"{NAME}-{i}")
        for i, (port, cport) in enumerate(ports, start=1)
    ]


def quorum_voters(nodes: Sequence[Node]) -> str:
    return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)


def cluster_bootstrap(nodes: Sequence[Node]) -> str:
    return ",".join(n.address for n in nodes)


def internal_replication(n_nodes: int) -> tuple[int, int]:
    """(replication factor, min ISR) of the internal topics on a cluster of ``n_nodes``.

    Min ISR 2 from three nodes on: acked offset commits and transaction state
    survive one node, and the topics stay writable while one is down.
    """
    return min(n_nodes, 3), 2 if n_nodes >= 3 else 1


def server_properties(node: Node, nodes: Sequence[Node]) -> dict[str, str]:
    """The ``server.properties`` of ``node`` in the cluster ``nodes`` (pure)."""
    rf, min_isr = internal_replication(len(nodes))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": quorum_voters(nodes),
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.data_dir),
        "num.partitions": "3",
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        # Keep a week of data so replays from the earliest offsets have something to read.
        "log.retention.hours": "168",
        "auto.create.topics.enable": "false",
    }


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


def secured_properties(
    node: Node, protocol: str, internal_port: int, tls_port: int, tls: BrokerTls
) -> dict[str, str]:
    """What a secured embedded broker adds to ``server_properties`` (pure).

    The client listener speaks ``protocol`` on the node's port; an SSL listener that
    requires a client certificate (mTLS) runs on ``tls_port`` beside a SASL one;
    brokers talk to each other on a PLAINTEXT listener bound to loopback, which is
    also where the SCRAM users are created (so their passwords never pass argv).
    PLAIN is not enabled on the broker: its users would sit in a file in clear.
    """
    listeners = {protocol: node.port, "INTERNAL": internal_port}
    if protocol != "SSL":
        listeners["SSL"] = tls_port
    protocols = {"CONTROLLER": "PLAINTEXT", "INTERNAL": "PLAINTEXT"}
    protocols.update({name: name for name in listeners if name != "INTERNAL"})
    props = {
        "listeners": ",".join(
            [f"{n}://127.0.0.1:{p}" for n, p in listeners.items()]
            + [f"CONTROLLER://127.0.0.1:{node.controller_port}"]
        ),
        "advertised.listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items()),
        "inter.broker.listener.name": "INTERNAL",
        "listener.security.protocol.map": ",".join(f"{k}:{v}" for k, v in protocols.items()),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(tls.broker_keystore),
        "ssl.keystore.password": tls.storepass(),
        "ssl.key.password": tls.storepass(),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca_pem),
        "listener.name.ssl.ssl.client.auth": "required",
    }
    if protocol.startswith("SASL_"):
        name = protocol.lower()
        props["sasl.enabled.mechanisms"] = ",".join(SCRAM_MECHANISMS)
        for mech in SCRAM_MECHANISMS:
            props[f"listener.name.{name}.{mech.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
    return props


def _embedded_properties(node: Node) -> dict[str, str]:
    props = server_properties(node, [node])
    s = settings()
    if s.kafka_security_protocol == "PLAINTEXT":
        return props
    tls = kafka_certs.ensure(kafka_client.tls_dir(s), _java())
    return {
        **props,
        **secured_properties(
            node, s.kafka_security_protocol, s.kafka_internal_port, s.kafka_tls_port, tls
        ),
    }


def _write_config(node: Node | None = None, nodes: Sequence[Node] | None = None) -> Path:
    """Write the node's config (default: the embedded broker, a cluster of one)."""
    embedded = node is None
    node = node or _embedded_node()
    nodes = nodes or [node]
    (node.home / "config").mkdir(parents=True, exist_ok=True)
    props = node.home / "config" / "server.properties"
    values = _embedded_properties(node) if embedded else server_properties(node, nodes)
    # The keystore password is in it: only the broker's user may read it.
    props.touch(mode=0o600)
    os.chmod(props, 0o600)
    props.write_text("\n".join(f"{k}={v}" for k, v in values.items()) + "\n")
    log4j = node.home / "config" / "log4j2.properties"
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


def _new_cluster_id() -> str:
    # An id starting with "-" is read by kafka-storage's argument parser as an
    # option, leaving --cluster-id empty (1 start in 64 failed so); Kafka's own
    # Uuid.randomUuid() draws again for the same reason.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _cluster_id_of(node: Node) -> str | None:
    meta = node.data_dir / "meta.properties"
    if not meta.exists():
        return None
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return None


def _format_storage(props: Path, node: Node | None = None, cluster_id: str | None = None) -> None:
    node = node or _embedded_node()
    if (node.data_dir / "meta.properties").exists():
        return
    proc = subprocess.run(
        [
            _java(),
            "-cp",
            _classpath(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id or _new_cluster_id(),
            "-c",
            str(props),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BrokerError(f"formatting the KRaft storage failed:\n{proc.stdout}{proc.stderr}")


def _launch(node: Node, props: Path, heap: str) -> procs.ProcInfo:
    s = settings()
    cmd = [
        _java(),
        *os.environ.get("RIVERDELTA_KAFKA_HEAP", heap).split(),
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={props.parent / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={s.log_dir}",
        "-cp",
        _classpath(),
        "kafka.Kafka",
        str(props),
    ]
    return procs.start_detached(node.name, cmd, log=s.log_dir / f"{node.name}.log")


def bootstrap() -> str:
    return settings().kafka_bootstrap


def admin_client(servers: str | None = None, **conf: object):
    """An admin client with the environment's security (kafka_client builds it)."""
    return kafka_client.admin(servers or bootstrap(), **conf)


def _internal_admin(**conf: object):
    """The secured embedded broker's loopback PLAINTEXT listener, for its own set-up."""
    cfg = kafka_client.KafkaClientConfig(f"127.0.0.1:{settings().kafka_internal_port}")
    return kafka_client.admin(cfg=cfg, **conf)


def _brokers(servers: str | None, timeout: float, internal: bool = False) -> set[int] | None:
    """Ids of the brokers registered in the metadata, None when nobody answers."""
    conf: dict[str, object] = {"socket.timeout.ms": int(timeout * 1000)}
    try:
        client = _internal_admin(**conf) if internal else admin_client(servers, **conf)
        return set(client.list_topics(timeout=timeout).brokers)
    except Exception:
        return None


def answers(timeout: float = 2.0, servers: str | None = None) -> bool:
    """True when the broker (any of ``servers``, default the settings') answers metadata."""
    return _brokers(servers, timeout) is not None


def _secured() -> bool:
    return settings().kafka_security_protocol != "PLAINTEXT"


def create_scram_user(username: str, password: str) -> None:
    """Create or update ``username`` for every SCRAM mechanism, through the Admin API.

    ``kafka-storage format --add-scram`` would put the password on a command line.
    """
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    # Hold the client until the futures resolve: a collected client cancels them.
    client = _internal_admin()
    for mech in SCRAM_MECHANISMS:
        # One request per mechanism: a request may alter a user only once.
        info = ScramCredentialInfo(getattr(ScramMechanism, mech.replace("-", "_")), 8192)
        upsert = UserScramCredentialUpsertion(username, info, password.encode())
        for fut in client.alter_user_scram_credentials([upsert], request_timeout=30).values():
            try:
                fut.result()
            except Exception as exc:
                raise BrokerError(f"creating the SCRAM user {username} failed: {exc}") from exc


def _provision_users() -> None:
    """The configured SASL user exists on the embedded broker with the configured password."""
    s = settings()
    if not s.kafka_security_protocol.startswith("SASL_"):
        return
    cfg = kafka_client.client_config(s)
    create_scram_user(cfg.username or kafka_client.EMBEDDED_USER, cfg.password or "")


def start(*, wait_seconds: float = 90.0) -> procs.ProcInfo:
    s = settings()
    info = procs.running(NAME)
    if info is not None:
        if _secured() and _brokers(None, 2.0, internal=True) is not None:
            _provision_users()
        if answers():
            return info
        procs.stop(NAME)
    ports = [s.kafka_port, s.kafka_controller_port]
    if _secured():
        ports += [s.kafka_internal_port, s.kafka_tls_port]
    for port in ports:
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
    t0 = time.monotonic()
    info = _launch(_embedded_node(), props, "-Xms256m -Xmx768m")
    provisioned = not _secured()
    while time.monotonic() - t0 < wait_seconds:
        if not procs.alive(info):
            procs.pid_file(NAME).unlink(missing_ok=True)
            raise BrokerError(
                f"the Kafka broker exited during start-up. Tail of {log}:\n{procs.tail(log)}"
            )
        if not provisioned and _brokers(None, 1.0, internal=True) is not None:
            _provision_users()
            provisioned = True
        if provisioned and answers(timeout=1.0):
            return info
        time.sleep(0.5)
    procs.stop(NAME)
    raise BrokerError(
        f"the Kafka broker did not answer within {wait_seconds:.0f}s. Tail of {log}:\n{procs.tail(log)}"
    )


def stop() -> bool:
    return procs.stop(NAME, timeout=30)


# --------------------------------------------------------------------------- cluster mode


def start_cluster(nodes: Sequence[Node], *, wait_seconds: float = 180.0) -> list[procs.ProcInfo]:
    """Start every node not yet running; return once metadata lists all of them.

    Idempotent like ``start``. On failure every node of ``nodes`` is stopped and
    the error shows the log tail of the node that failed.
    """
    servers = cluster_bootstrap(nodes)
    want = {n.node_id for n in nodes}
    if all(procs.running(n.name) for n in nodes) and _brokers(servers, 2.0) == want:
        return [procs.running(n.name) for n in nodes]
    for n in nodes:
        if procs.running(n.name) is None:
            for port in (n.port, n.controller_port):
                if procs.port_in_use(port):
                    raise BrokerError(
                        f"port {port} on 127.0.0.1 (node {n.node_id}) is already taken by "
                        f"another process (`ss -ltnp | grep {port}` shows it); choose other ports"
                    )
    # One cluster id for all: a node formatted under another id refuses to join.
    cluster_id = next(filter(None, map(_cluster_id_of, nodes)), None) or _new_cluster_id()
    configs = {n.node_id: _write_config(n, nodes) for n in nodes}
    # Formatting starts a JVM per node; in parallel it costs one start-up, not N.
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: _format_storage(configs[n.node_id], n, cluster_id), nodes))
    t0 = time.monotonic()
    infos = {
        n.node_id: procs.running(n.name) or _launch(n, configs[n.node_id], "-Xms128m -Xmx512m")
        for n in nodes
    }
    registered: set[int] | None = None
    while time.monotonic() - t0 < wait_seconds:
        for n in nodes:
            if not procs.alive(infos[n.node_id]):
                log = infos[n.node_id].log
                stop_cluster(nodes)
                raise BrokerError(
                    f"Kafka node {n.node_id} exited during start-up. Tail of {log}:\n"
                    f"{procs.tail(log)}"
                )
        registered = _brokers(servers, 2.0)
        if registered == want:
            return list(infos.values())
        time.sleep(0.5)
    stop_cluster(nodes)
    raise BrokerError(
        f"the Kafka cluster did not register all of {sorted(want)} within {wait_seconds:.0f}s "
        f"(registered: {sorted(registered or [])}). Logs: {settings().log_dir}/{NAME}-<id>.log"
    )


def stop_node(node: Node, *, kill: bool = True) -> bool:
    """Stop one node; by default SIGKILL, a crash.

    A crash is the failure a cluster must survive: no controlled shutdown moves
    leadership away first, so the controller has to notice the lost heartbeats,
    fence the node, shrink the ISRs and elect new leaders. ``kill=False`` is the
    graceful SIGTERM (controlled shutdown) for planned restarts.
    """
    return procs.stop(node.name, timeout=30, sig=signal.SIGKILL if kill else signal.SIGTERM)


def stop_cluster(nodes: Sequence[Node], *, timeout: float = 20.0) -> list[str]:
    """Stop every node gracefully (SIGKILL after ``timeout``); returns the ones stopped."""
    # Signal them all before waiting: stopped one by one, the last ones lose the
    # quorum and sit out their controlled shutdown until the timeout.
    running = [n for n in nodes if procs.running(n.name) is not None]
    for n in running:
        info = procs.running(n.name)
        if info is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(info.pid, signal.SIGTERM)
    for n in running:
        procs.stop(n.name, timeout=timeout)
    return [n.name for n in running]
