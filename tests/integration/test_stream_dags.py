"""Airflow runs the streams: deploy, watch, restart, stop (dag.test(), real Kafka/Spark/Delta)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.ingest_helpers import Sent, produce, status, wait_for

pytestmark = pytest.mark.integration


def run_dag(stream: str, action: str = "reconcile"):
    from riverdelta.airflow.stream_dags import stream_dag
    from riverdelta.config.registry import load_registry

    dag = stream_dag(load_registry().get(stream))
    return dag.test(run_conf={"action": action})


def test_deploy_watch_stop_restart(airflow_db, stream_registry, spark):
    from riverdelta.config.registry import load_registry
    from riverdelta.launch import procs
    from riverdelta.ops import state as ops
    from riverdelta.stream.job import make_job
    from tests.integration.ingest_helpers import assert_invariants, wait_gold

    name = stream_registry()
    sent = Sent()
    add = sent.add

    # deploy: the task ends, the driver keeps running detached.
    dr = run_dag(name, "deploy")
    assert dr.state == "success"
    st = ops.load_state(name)
    assert st.desired == "RUNNING" and procs.alive(procs.read(f"stream-{name}"))

    # produce: lag falls to 0 with a small batch age.
    add(produce(name, 3000, seed=1, poison_rate=0.02, duplicate_rate=0.02))
    report = wait_for(
        lambda: (r := status(name))["lag_records"] == 0 and r["last_batch_id"] is not None and r,
        240,
        "lag 0",
    )
    assert report["actual"] == "RUNNING" and report["last_batch_age_seconds"] < 60

    # stop: driver gone, desired STOPPED; lag is exact while stopped.
    assert run_dag(name, "stop").state == "success"
    assert ops.load_state(name).desired == "STOPPED"
    assert procs.running(f"stream-{name}") is None
    add(produce(name, 777, seed=2))
    assert status(name)["lag_records"] == 777
    # reconcile does not start a stopped stream.
    assert run_dag(name).state == "success"
    assert procs.running(f"stream-{name}") is None

    # SIGKILL the driver: the next reconcile restarts it, and nothing is lost.
    assert run_dag(name, "deploy").state == "success"
    info = procs.read(f"stream-{name}")
    wait_for(lambda: status(name)["lag_records"] == 0, 240, "catch-up after deploy")
    add(produce(name, 2000, seed=3, poison_rate=0.02, duplicate_rate=0.02))
    time.sleep(3)
    os.killpg(info.pid, signal.SIGKILL)
    wait_for(lambda: not procs.alive(info), 30, "driver death")
    assert run_dag(name).state == "success"
    restarted = procs.read(f"stream-{name}")
    assert restarted is not None and restarted.pid != info.pid and procs.alive(restarted)
    wait_for(lambda: status(name)["lag_records"] == 0, 300, "catch-up after restart")

    spec = load_registry().get(name)
    job = make_job(spec, "live")
    wait_gold(job, driver=restarted)
    history = [h["event"] for h in ops.history(name)]
    assert history.count("deploy") == 2 and "stop" in history and "restart" in history
    assert run_dag(name, "stop").state == "success"
    assert_invariants(spark, spec, job, sent.summary)


def test_crash_loop_stops_after_k_restarts(airflow_db, stream_registry):
    import json

    from riverdelta.ops import state as ops
    from riverdelta.storage.lake import checkpoint_path

    name = stream_registry(restart={"max_restarts": 2, "window_seconds": 600, "backoff_seconds": 1})
    # An app that fails at start: its checkpoint belongs to another stream.
    cp = checkpoint_path(name, "live")
    os.makedirs(cp, exist_ok=True)
    with open(os.path.join(cp, "_riverdelta.json"), "w") as fh:
        json.dump({"stream": "someone_else", "topic": "x", "mode": "live", "app_id": "x"}, fh)

    assert run_dag(name, "deploy").state == "success"

    def crash_looped():
        dr = run_dag(name)
        return ops.load_state(name).crash_loop and dr.state == "failed"

    wait_for(crash_looped, 300, "crash loop", interval=3)
    state = ops.load_state(name)
    assert len(state.restarts) == 2
    events = [h["event"] for h in ops.history(name)]
    assert events.count("restart") == 2 and "crash_loop" in events and "page" in events
    # Once in a crash loop, reconcile keeps failing loudly and starts nothing.
    assert run_dag(name).state == "failed"
    assert len(ops.load_state(name).restarts) == 2
    crash = [h for h in ops.history(name, "crash_loop")][-1]
    assert "belongs to stream 'someone_else'" in (crash["detail"].get("last_error") or "")
    run_dag(name, "stop")


def test_tasks_connect_with_the_kafka_default_connection(
    airflow_db, stream_registry, kafka, monkeypatch
):
    """An Airflow user's kafka_default is what a task connects with, not the settings.

    The settings point at a port where nothing listens; only the connection names the
    broker. platform_topics creates the registry's topic through it, and a stream DAG's
    health check measures the lag through it.
    """
    import json
    from pathlib import Path

    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from riverdelta.config.settings import settings
    from riverdelta.kafka import client as kafka_client
    from tests.conftest import _free_port

    name = stream_registry()
    registry = Path(os.environ["RIVERDELTA_STREAMS"])
    data = yaml.safe_load(registry.read_text())
    topic = f"rd.{name}.by-connection"
    data["streams"][name]["topic"] = topic
    registry.write_text(yaml.safe_dump(data))
    real = kafka_client.KafkaClientConfig(bootstrap=kafka)
    assert topic not in kafka_client.admin(cfg=real).list_topics(timeout=10).topics

    monkeypatch.setenv("RIVERDELTA_KAFKA_BOOTSTRAP", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAFKA_DEFAULT",
        json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": kafka}}),
    )
    settings.cache_clear()
    bag = DagBag(dag_folder=str(Path(__file__).parents[2] / "dags" / "platform_topics.py"))
    assert bag.dags["platform_topics"].test().state == "success"
    assert topic in kafka_client.admin(cfg=real).list_topics(timeout=10).topics

    from riverdelta.config.registry import load_registry
    from riverdelta.embedded.generator import produce as gen

    gen(load_registry().get(name), 50, bootstrap=kafka, seed=3)
    dr = run_dag(name, "stop")  # no driver; check_health still measures the lag
    assert dr.state == "success", dr.state
    report = dr.get_task_instance("check_health").xcom_pull(task_ids="check_health")
    assert report["lag_records"] == 50, report
