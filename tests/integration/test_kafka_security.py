"""Riverdelta against a secured broker: SASL_SSL + SCRAM-SHA-512, and mTLS.

One embedded broker for the module, in a runtime home of its own with its own
ports: a SASL_SSL listener, an mTLS listener and the loopback inter-broker one.
The password sits in a 0600 file outside the runtime home, so the final grep of
every file under the home and every process's argv must not find it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import _free_port
from tests.integration.ingest_helpers import assert_invariants, status, wait_for, wait_gold

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def _secured_broker(protocol: str, mechanism: str, home_name: str):
    """(password, runtime home) of an embedded broker speaking ``protocol``, with SCRAM users."""
    from riverdelta.config.settings import settings
    from riverdelta.embedded import kafka_broker

    password = f"Rd-{secrets.token_urlsafe(16)}"
    secret_dir = Path(tempfile.mkdtemp(prefix="riverdelta-secret-"))
    pw_file = secret_dir / "kafka.password"
    pw_file.touch(mode=0o600)
    pw_file.write_text(password)
    home = Path(os.environ["RIVERDELTA_TEST_HOME"]) / home_name
    env = {
        "RIVERDELTA_HOME": str(home),
        "RIVERDELTA_LAKE": str(home / "lake"),
        "RIVERDELTA_CONTROL": str(home / "lake" / "_ops"),
        "RIVERDELTA_KAFKA_PORT": str(_free_port()),
        "RIVERDELTA_KAFKA_CONTROLLER_PORT": str(_free_port()),
        "RIVERDELTA_KAFKA_INTERNAL_PORT": str(_free_port()),
        "RIVERDELTA_KAFKA_TLS_PORT": str(_free_port()),
        "RIVERDELTA_KAFKA_SECURITY": protocol,
        "RIVERDELTA_KAFKA_SASL_MECHANISM": mechanism,
        "RIVERDELTA_KAFKA_SASL_PASSWORD_FILE": str(pw_file),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RIVERDELTA_KAFKA_BOOTSTRAP", raising=False)
        mp.delenv("RIVERDELTA_KAFKA_SASL_PASSWORD", raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        settings.cache_clear()
        kafka_broker.start()
        try:
            yield password, home
        finally:
            kafka_broker.stop()
            settings.cache_clear()
    settings.cache_clear()


@pytest.fixture(scope="module")
def secured():
    """(password, runtime home) of a SASL_SSL embedded broker started for this module."""
    with _secured_broker("sasl_ssl", "SCRAM-SHA-512", "secured") as started:
        yield started


@pytest.fixture(autouse=True)
def _fresh_settings():
    """A test's monkeypatched variables must not outlive it in the settings cache."""
    from riverdelta.config.settings import settings

    settings.cache_clear()
    yield
    settings.cache_clear()


def _registry(tmp_path: Path, topic: str) -> tuple[str, Path]:
    from riverdelta.config.settings import settings

    data = yaml.safe_load(settings().streams_file.read_text())
    name = f"sec{uuid.uuid4().hex[:6]}"
    data["streams"] = {name: {**data["streams"]["transactions"], "topic": topic}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return name, path


def _grep_argv(needle: str) -> list[str]:
    hits = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle.encode() in cmdline.read_bytes():
                hits.append(str(cmdline))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return hits


def _grep_files(root: Path, needle: str) -> list[str]:
    data = needle.encode()
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and data in path.read_bytes():
                hits.append(str(path))
        except OSError:
            continue
    return hits


def test_sasl_ssl_live_ingest_lag_backfill_and_no_leak(secured, spark, tmp_path, monkeypatch):
    from riverdelta.backfill import replay as backfill
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.embedded import kafka_broker
    from riverdelta.embedded.generator import produce
    from riverdelta.kafka import client as kafka_client
    from riverdelta.kafka import group_offsets
    from riverdelta.kafka.client import client_config
    from riverdelta.launch import procs
    from riverdelta.launch.submit import build_command, ingest_args, submit_env
    from riverdelta.ops.health import compute_health, nest
    from riverdelta.storage.lake import live_checkpoint
    from riverdelta.stream.job import make_job

    password, home = secured
    topic = f"rd.sec-{uuid.uuid4().hex[:6]}"
    assert kafka_client.create_topics({topic: 3}) == [topic]
    # Spark redacts the JAAS option (key and value) wherever it prints conf or options.
    for key, text in (
        ("spark.redaction.regex", client_config().spark_options()["kafka.sasl.jaas.config"]),
        ("spark.sql.redaction.options.regex", "kafka.sasl.jaas.config"),
    ):
        redacted = re.search(spark.conf.get(key), text) is not None  # never print the text
        assert redacted, key
    stream, registry = _registry(tmp_path, topic)
    monkeypatch.setenv("RIVERDELTA_STREAMS", str(registry))
    settings.cache_clear()
    spec = load_registry().get(stream)
    summary = produce(
        spec,
        3000,
        bootstrap=settings().kafka_bootstrap,
        seed=21,
        poison_rate=0.01,
        duplicate_rate=0.01,
    )
    assert summary["sent"] == 3000

    args = ingest_args(stream, "live", trigger="2 seconds")
    name = f"sec-live-{stream}"
    info = procs.start_detached(
        name, build_command(args, name=name), log=home / "logs" / f"{name}.log", env=submit_env()
    )
    try:
        cp = live_checkpoint(stream)

        def caught_up():
            h = compute_health(cp, settings().kafka_bootstrap, topic)
            return h.lag_records == 0 and h.last_batch_id is not None and h

        health = wait_for(caught_up, 240, "the live driver to drain the topic", driver=info)
        assert health.lag_records == 0
        job = make_job(spec, "live")
        wait_gold(job, driver=info)
        # Every secured-run argv, including the live driver's, while it runs.
        assert _grep_argv(password) == []
        # Kafka's own view of the stream's progress: the group holds what the checkpoint holds.
        wait_for(
            lambda: group_offsets.committed(stream, topic) == health.committed_offsets,
            30,
            "the consumer group to hold the committed offsets",
        )
    finally:
        procs.stop(name, timeout=20)
    # With the driver stopped, new records are lag to both views, and to the same count.
    more = produce(spec, 120, bootstrap=settings().kafka_bootstrap, seed=22)["sent"]
    health = compute_health(live_checkpoint(stream), settings().kafka_bootstrap, topic)
    assert health.lag_records == more == group_offsets.group_lag(stream, topic) == 120
    # What Kafka people run: kafka-consumer-groups --describe (Kafka's own tool, on the
    # broker's loopback listener) shows the same offsets and the same lag.
    rows = kafka_broker.consumer_groups_describe(
        group_offsets.group_id(stream), f"127.0.0.1:{settings().kafka_internal_port}"
    )
    assert {tp: int(r["CURRENT-OFFSET"]) for tp, r in rows.items()} == health.committed_offsets
    assert sum(int(r["LAG"]) for r in rows.values()) == health.lag_records == 120
    assert status(stream)["lag_records"] == 120
    assert_invariants(spark, spec, job, summary)

    # A range backfill over SASL_SSL: offsets resolved through the secured look-ups,
    # a spark-submit replay that re-reads the range and finds every record present.
    run_id = f"sec-{uuid.uuid4().hex[:6]}"
    p = backfill.plan(stream, mode="range", from_="earliest", to="latest", run_id=run_id)
    # The range stops at what the live stream committed: the 120 new records are its to ingest.
    assert p["range"]["end"] == nest(health.committed_offsets)
    try:
        result = backfill.replay(p)
    finally:
        backfill.release_lock(stream, run_id)
    assert result["records"] == summary["sent"]
    counts = result["counts"]
    assert (counts["already_present"], counts["records_in"]) == (summary["sent"], 0)

    assert _grep_argv(password) == []
    assert _grep_files(home, password) == []
    assert _grep_files(tmp_path, password) == []
    # The grep itself works: it finds the password where it is meant to be.
    pw_file = Path(os.environ["RIVERDELTA_KAFKA_SASL_PASSWORD_FILE"])
    assert _grep_files(pw_file.parent, password) == [str(pw_file)]


def test_mtls_produce_and_replay(secured, spark, tmp_path, monkeypatch):
    from riverdelta.backfill import replay as backfill
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.embedded.generator import produce
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops.health import compute_health
    from riverdelta.stream.ingest import start_query
    from riverdelta.stream.job import make_job
    from tests.integration.ingest_helpers import finish_gold, read

    topic = f"rd.mtls-{uuid.uuid4().hex[:6]}"
    kafka_client.create_topics({topic: 3})  # over SASL_SSL, before switching
    stream, registry = _registry(tmp_path, topic)
    monkeypatch.setenv("RIVERDELTA_STREAMS", str(registry))
    monkeypatch.setenv("RIVERDELTA_KAFKA_SECURITY", "ssl")
    monkeypatch.setenv(
        "RIVERDELTA_KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ['RIVERDELTA_KAFKA_TLS_PORT']}"
    )
    settings.cache_clear()
    try:
        spec = load_registry().get(stream)
        sent = produce(spec, 800, bootstrap=settings().kafka_bootstrap, seed=31)["sent"]
        job = make_job(
            spec,
            "replay",
            checkpoint=str(tmp_path / "cp"),
            tables_root=str(tmp_path / "tables"),
            ops_root=str(tmp_path / "_ops"),
        )
        query = start_query(spark, job, starting="earliest")
        query.awaitTermination()
        assert query.exception() is None
        finish_gold(job)
        assert read(spark, job.tables["bronze"]).count() == sent == 800
        # Lag and backfill resolution over mTLS too.
        bootstrap = settings().kafka_bootstrap
        assert compute_health(job.checkpoint, bootstrap, topic).lag_records == 0
        assert backfill.resolve(topic, bootstrap).records == 800
    finally:
        settings.cache_clear()


def _driver(stream_registry: Path, stream: str, env: dict[str, str]):
    cmd = [sys.executable, str(ROOT / "spark_apps" / "ingest.py"), "--stream", stream]
    cmd += ["--registry", str(stream_registry)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - t0


def test_bad_settings_fail_fast_with_one_line_and_show_in_status(secured, tmp_path, monkeypatch):
    """The driver's pre-flight refuses before Spark starts; status shows it as the last error."""
    from riverdelta.config.settings import settings
    from riverdelta.launch.submit import submit_env
    from riverdelta.ops.status import progress_file
    from riverdelta.stream.listener import read_record

    assert secured
    stream, registry = _registry(tmp_path, "rd.any")
    wrong = tmp_path / "wrong.password"
    wrong.touch(mode=0o600)
    wrong.write_text("not-the-password")
    leaky = tmp_path / "leaky.password"
    leaky.write_text("whatever-it-is")
    leaky.chmod(0o644)
    port = os.environ["RIVERDELTA_KAFKA_PORT"]
    cases = {
        "wrong password": (
            {"RIVERDELTA_KAFKA_SASL_PASSWORD_FILE": str(wrong)},
            "rejected the credentials",
        ),
        "mechanism the broker lacks": (
            {"RIVERDELTA_KAFKA_SASL_MECHANISM": "PLAIN"},
            "does not offer SASL mechanism PLAIN",
        ),
        "unknown mechanism": (
            {"RIVERDELTA_KAFKA_SASL_MECHANISM": "KERBEROS5"},
            "RIVERDELTA_KAFKA_SASL_MECHANISM='KERBEROS5' is not supported",
        ),
        "untrusted certificate": (
            {"RIVERDELTA_KAFKA_SSL_CA": "/etc/ssl/certs/ca-certificates.crt"},
            "not trusted by",
        ),
        "plaintext client on the TLS port": (
            {
                "RIVERDELTA_KAFKA_SECURITY": "plaintext",
                "RIVERDELTA_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
            },
            "the listener speaks TLS but the client does not",
        ),
        "missing truststore": (
            {"RIVERDELTA_KAFKA_SSL_CA": str(tmp_path / "absent.pem")},
            "absent.pem: no such file",
        ),
        "password file readable by others": (
            {"RIVERDELTA_KAFKA_SASL_PASSWORD_FILE": str(leaky)},
            "is readable by others (mode 0644): chmod 600",
        ),
    }
    for what, (override, expected) in cases.items():
        env = {**submit_env(), **override}
        proc, seconds = _driver(registry, stream, env)
        err = proc.stderr.strip()
        assert proc.returncode == 2, (what, proc.stdout, err)
        assert len(err.splitlines()) == 1 and expected in err, (what, err)
        assert seconds < 15, (what, seconds)
    # The last refusal is the stream's last error.
    settings.cache_clear()
    record = read_record(progress_file(stream))
    assert record is not None and "is readable by others" in record["last_exception"]
    monkeypatch.setenv("RIVERDELTA_STREAMS", str(registry))
    settings.cache_clear()
    assert "is readable by others" in status(stream)["last_error"]
    assert json.dumps(record).count("\n") == 0


def test_sasl_plaintext_through_the_kafka_default_connection(spark, tmp_path, monkeypatch):
    """SASL_PLAINTEXT + SCRAM-SHA-256, set only on the Airflow connection (password too).

    The settings keep the broker's address only for starting it; inside
    ``kafka_connection`` the look-ups, the generator and the Spark source read the
    connection. Outside it the settings say PLAINTEXT and the broker refuses them.
    """
    from riverdelta.airflow.env import kafka_connection
    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.embedded.generator import produce
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops.health import watermarks

    with _secured_broker("sasl_plaintext", "SCRAM-SHA-256", "sasl-plaintext") as (password, _):
        bootstrap = settings().kafka_bootstrap
        extra = {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
        }
        conn = {"conn_type": "kafka", "extra": extra, "login": "riverdelta", "password": password}
        with pytest.MonkeyPatch.context() as mp:
            for key in ("SECURITY", "SASL_MECHANISM", "SASL_PASSWORD_FILE"):
                mp.delenv(f"RIVERDELTA_KAFKA_{key}")
            mp.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(conn))
            settings.cache_clear()
            with pytest.raises(kafka_client.KafkaClientError):
                kafka_client.check(timeout=10)  # PLAINTEXT against a SASL listener
            topic = f"rd.sp-{uuid.uuid4().hex[:6]}"
            stream, registry = _registry(tmp_path, topic)
            mp.setenv("RIVERDELTA_STREAMS", str(registry))
            with kafka_connection() as cfg:
                assert (cfg.protocol, cfg.mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")
                kafka_client.check(timeout=10)
                assert kafka_client.create_topics({topic: 2}) == [topic]
                spec = load_registry().get(stream)
                sent = produce(spec, 300, bootstrap=bootstrap, seed=41)["sent"]
                marks = watermarks(bootstrap, spec.source)
                assert sum(hi - lo for lo, hi in marks.values()) == sent == 300
                opts = kafka_client.config_for(None).spark_options()
                rows = (
                    spark.read.format("kafka")
                    .options(**opts)
                    .option("subscribe", topic)
                    .load()
                    .count()
                )
                assert rows == 300
            assert settings().kafka_security_protocol == "PLAINTEXT"
