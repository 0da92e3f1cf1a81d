"""Cluster config generation of kafka_broker: quorum, ports, replication (no processes)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from riverdelta.embedded import kafka_broker as kb

pytestmark = pytest.mark.unit

PORTS = [(19092, 19093), (19094, 19095), (19096, 19097)]


def _props(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_nodes_are_numbered_from_one_with_own_ports_homes_and_names(tmp_path):
    nodes = kb.cluster_nodes(PORTS, root=tmp_path)
    assert [n.node_id for n in nodes] == [1, 2, 3]
    assert [(n.port, n.controller_port) for n in nodes] == PORTS
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [n.data_dir for n in nodes] == [tmp_path / f"node-{i}" / "data" for i in (1, 2, 3)]
    assert kb.cluster_bootstrap(nodes) == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"


def test_a_port_used_twice_is_refused(tmp_path):
    with pytest.raises(kb.BrokerError, match="own two ports"):
        kb.cluster_nodes([(19092, 19093), (19093, 19094)], root=tmp_path)


def test_every_node_lists_the_same_static_quorum_of_all_nodes(tmp_path):
    nodes = kb.cluster_nodes(PORTS, root=tmp_path)
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    for node in nodes:
        props = kb.server_properties(node, nodes)
        assert props["controller.quorum.voters"] == voters
        assert props["node.id"] == str(node.node_id)
        assert props["process.roles"] == "broker,controller"
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert props["log.dirs"] == str(node.data_dir)


@pytest.mark.parametrize(
    ("n", "rf", "min_isr"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (4, 3, 2), (5, 3, 2)]
)
def test_internal_topics_are_replicated_min_n_3_with_min_isr_2_from_three_nodes(
    tmp_path, n, rf, min_isr
):
    nodes = kb.cluster_nodes([(20000 + 2 * i, 20001 + 2 * i) for i in range(n)], root=tmp_path)
    assert kb.internal_replication(n) == (rf, min_isr)
    props = kb.server_properties(nodes[-1], nodes)
    assert props["offsets.topic.replication.factor"] == str(rf)
    assert props["transaction.state.log.replication.factor"] == str(rf)
    assert props["transaction.state.log.min.isr"] == str(min_isr)
    assert props["share.coordinator.state.topic.replication.factor"] == str(rf)
    assert props["share.coordinator.state.topic.min.isr"] == str(min_isr)


def test_write_config_writes_each_node_its_own_file(tmp_path):
    nodes = kb.cluster_nodes(PORTS, root=tmp_path)
    paths = [kb._write_config(n, nodes) for n in nodes]
    assert len(set(paths)) == 3
    for node, path in zip(nodes, paths, strict=True):
        assert path == node.home / "config" / "server.properties"
        assert _props(path) == kb.server_properties(node, nodes)
        assert (path.parent / "log4j2.properties").exists()


def test_the_embedded_broker_is_still_a_single_node_on_the_settings_ports():
    from riverdelta.config.settings import settings

    s = settings()
    props = _props(kb._write_config())
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == f"1@127.0.0.1:{s.kafka_controller_port}"
    assert props["listeners"] == (
        f"PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}"
    )
    assert props["log.dirs"] == str(kb.kafka_home() / "data")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["share.coordinator.state.topic.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "false"


def test_cluster_id_is_read_back_from_meta_properties(tmp_path):
    (node,) = kb.cluster_nodes([(19092, 19093)], root=tmp_path)
    assert kb._cluster_id_of(node) is None
    node.data_dir.mkdir(parents=True)
    (node.data_dir / "meta.properties").write_text(
        "#\nnode.id=1\nversion=1\ncluster.id=AbCdEf123\ndirectory.id=x\n"
    )
    assert kb._cluster_id_of(node) == "AbCdEf123"


def test_new_cluster_id_never_starts_with_a_dash(monkeypatch):
    # uuid bytes whose base64 starts with "-" (0xf8...), then ordinary ones.
    draws = iter([uuid.UUID(bytes=b"\xf8" + b"\x00" * 15), uuid.UUID(int=1)])
    monkeypatch.setattr(kb.uuid, "uuid4", lambda: next(draws))
    cluster_id = kb._new_cluster_id()
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22
