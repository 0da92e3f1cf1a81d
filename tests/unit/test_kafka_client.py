"""The one Kafka client configuration: librdkafka <-> Spark <-> Airflow connection, and its refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from riverdelta.config.settings import ConfigError, load_settings
from riverdelta.kafka import client as kafka_client
from riverdelta.kafka.client import KafkaClientConfig

pytestmark = pytest.mark.unit

CONFIGS = [
    KafkaClientConfig("h1:9092,h2:9092"),
    KafkaClientConfig("h:9093", "SSL", ca="/tls/ca.pem"),
    KafkaClientConfig("h:9093", "SSL", ca="/tls/ca.pem", keystore="/tls/client.pem"),
    *[
        KafkaClientConfig("h:9094", "SASL_SSL", mech, "alice", 'p"w\\d x', ca="/tls/ca.pem")
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
    ],
    *[
        KafkaClientConfig("h:9095", "SASL_PLAINTEXT", mech, "bob", "secret-pw")
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
    ],
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.protocol}-{c.mechanism}-{c.keystore}")
def test_librdkafka_and_spark_mappings_invert(cfg: KafkaClientConfig) -> None:
    assert KafkaClientConfig.from_librdkafka(cfg.librdkafka()) == cfg
    assert KafkaClientConfig.from_spark_options(cfg.spark_options()) == cfg
    conn = cfg.to_connection()
    assert "sasl.password" not in conn["extra"]
    assert (
        KafkaClientConfig.from_connection(conn["extra"], conn.get("login"), conn.get("password"))
        == cfg
    )


def test_the_two_mappings_name_the_same_things() -> None:
    cfg = KafkaClientConfig(
        "h:9094", "SASL_SSL", "SCRAM-SHA-512", "alice", "pw", "/ca.pem", "/client.pem"
    )
    assert cfg.librdkafka() == {
        "bootstrap.servers": "h:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/client.pem",
        "ssl.key.location": "/client.pem",
    }
    assert cfg.spark_options() == {
        "kafka.bootstrap.servers": "h:9094",
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            'username="alice" password="pw";'
        ),
        "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.location": "/ca.pem",
        "kafka.ssl.keystore.type": "PEM",
        "kafka.ssl.keystore.location": "/client.pem",
    }


def test_password_is_not_in_repr_or_description() -> None:
    cfg = KafkaClientConfig("h:1", "SASL_SSL", "PLAIN", "alice", "hunter2-secret")
    assert "hunter2" not in repr(cfg) and "hunter2" not in cfg.describe()


def test_spark_redaction_covers_the_jaas_option() -> None:
    opts = CONFIGS[3].spark_options()
    for regex in (kafka_client.SPARK_REDACTION_REGEX, kafka_client.SPARK_OPTIONS_REDACTION_REGEX):
        assert re.search(regex, "kafka.sasl.jaas.config")
        assert re.search(regex, opts["kafka.sasl.jaas.config"])


def _secure_env(monkeypatch, tmp_path: Path, **extra: str) -> None:
    for key, value in {
        "RIVERDELTA_KAFKA_SECURITY": "sasl_ssl",
        "RIVERDELTA_HOME": str(tmp_path / "home"),
        **extra,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RIVERDELTA_KAFKA_SASL_PASSWORD", raising=False)


def test_settings_refuse_unknown_protocol_and_mechanism(monkeypatch) -> None:
    monkeypatch.setenv("RIVERDELTA_KAFKA_SECURITY", "tls")
    with pytest.raises(ConfigError, match=r"^RIVERDELTA_KAFKA_SECURITY='tls': expected one of"):
        load_settings()
    monkeypatch.setenv("RIVERDELTA_KAFKA_SECURITY", "sasl_ssl")
    monkeypatch.setenv("RIVERDELTA_KAFKA_SASL_MECHANISM", "gssapi")
    with pytest.raises(ConfigError, match=r"RIVERDELTA_KAFKA_SASL_MECHANISM='GSSAPI' is not"):
        load_settings()


def test_password_file_readable_by_others_is_refused(monkeypatch, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret-value\n")
    pw.chmod(0o644)
    _secure_env(monkeypatch, tmp_path, RIVERDELTA_KAFKA_SASL_PASSWORD_FILE=str(pw))
    with pytest.raises(ConfigError, match=r"is readable by others \(mode 0644\): chmod 600"):
        kafka_client.client_config(load_settings())
    pw.chmod(0o600)
    (tmp_path / "home" / "kafka" / "tls").mkdir(parents=True)
    (tmp_path / "home" / "kafka" / "tls" / "ca.pem").write_text("x")
    cfg = kafka_client.client_config(load_settings())
    assert (cfg.password, cfg.username, cfg.mechanism) == (
        "s3cret-value",
        "riverdelta",
        "SCRAM-SHA-512",
    )


def test_missing_password_and_missing_truststore_are_refused(monkeypatch, tmp_path: Path) -> None:
    _secure_env(monkeypatch, tmp_path)
    with pytest.raises(
        ConfigError, match="needs a password: set RIVERDELTA_KAFKA_SASL_PASSWORD_FILE"
    ):
        kafka_client.client_config(load_settings())
    monkeypatch.setenv("RIVERDELTA_KAFKA_SASL_PASSWORD", "from-the-env")
    monkeypatch.setenv("RIVERDELTA_KAFKA_SSL_CA", str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"RIVERDELTA_KAFKA_SSL_CA=.*nope.pem: no such file"):
        kafka_client.client_config(load_settings())


@pytest.mark.parametrize(
    ("error", "names"),
    [
        (
            "SASL authentication error: Authentication failed during authentication due to "
            "invalid credentials with SASL mechanism SCRAM-SHA-512",
            "RIVERDELTA_KAFKA_SASL_USERNAME and the password",
        ),
        (
            "SASL PLAIN mechanism handshake failed: Broker: Unsupported SASL mechanism: "
            "broker's supported mechanisms: SCRAM-SHA-512,SCRAM-SHA-256",
            "RIVERDELTA_KAFKA_SASL_MECHANISM to one it enables (SCRAM-SHA-512,SCRAM-SHA-256)",
        ),
        (
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
            "RIVERDELTA_KAFKA_SSL_CA",
        ),
        ("ssl/tls alert bad certificate: SSL alert number 42", "RIVERDELTA_KAFKA_SSL_KEYSTORE"),
        (
            "SSL connection closed by peer: connecting to a PLAINTEXT broker listener?",
            "RIVERDELTA_KAFKA_SECURITY to plaintext or sasl_plaintext",
        ),
    ],
)
def test_setup_errors_become_one_line_naming_the_setting(error: str, names: str) -> None:
    cfg = KafkaClientConfig("h:1", "SASL_SSL", "SCRAM-SHA-512", "alice", "pw", "/ca.pem")
    line = kafka_client.explain(cfg, error)
    assert line is not None and "\n" not in line and names in line and "pw" not in line.split()


def test_submit_env_passes_the_password_file_never_the_password(monkeypatch, tmp_path) -> None:
    from riverdelta.config.settings import settings
    from riverdelta.launch import launchers, submit

    pw = tmp_path / "pw"
    pw.write_text("never-on-argv-42")
    pw.chmod(0o600)
    _secure_env(monkeypatch, tmp_path, RIVERDELTA_KAFKA_SASL_PASSWORD_FILE=str(pw))
    settings.cache_clear()
    try:
        env = submit.submit_env({})
    finally:
        settings.cache_clear()
    assert env["RIVERDELTA_KAFKA_SASL_PASSWORD_FILE"] == str(pw)
    assert "never-on-argv-42" not in "".join(env.values())
    with pytest.raises(ValueError, match="a secret value appears in the spark-submit command"):
        launchers.assert_no_secret_in_argv(
            ["spark-submit", "--conf", "x=never-on-argv-42"], launchers._env_secrets(env)
        )


def test_secured_broker_listeners(tmp_path: Path) -> None:
    from riverdelta.embedded.kafka_broker import Node, secured_properties
    from riverdelta.embedded.kafka_certs import BrokerTls

    tls = BrokerTls(tmp_path)
    tls.storepass_file.write_text("store-pass")
    node = Node(1, 9000, 9001, Path("/h"), "kafka")
    props = secured_properties(node, "SASL_SSL", 9002, 9003, tls)
    assert props["listeners"] == (
        "SASL_SSL://127.0.0.1:9000,INTERNAL://127.0.0.1:9002,SSL://127.0.0.1:9003,"
        "CONTROLLER://127.0.0.1:9001"
    )
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512"


def test_group_offsets_come_from_the_kafka_sources_of_a_progress() -> None:
    from riverdelta.kafka.group_offsets import end_offsets_of_progress, group_id

    progress = {
        "name": "riverdelta-tx-live",
        "sources": [
            {"description": "KafkaV2[Subscribe[a]]", "endOffset": {"a": {"0": 5, "1": 7}}},
            {"description": "KafkaV2[Subscribe[b]]", "endOffset": '{"b": {"2": 9}}'},
            {"description": "RateStreamV2", "endOffset": 3},
        ],
    }
    assert end_offsets_of_progress(progress) == {"a": {0: 5, 1: 7}, "b": {2: 9}}
    assert group_id("tx") == "riverdelta-tx"


def test_the_kafka_default_connection_reads_back_as_the_settings_config(
    monkeypatch, tmp_path: Path
) -> None:
    """What airflow_env writes into kafka_default is what the settings connect with."""
    from riverdelta.config.settings import settings

    pw = tmp_path / "pw"
    pw.write_text("conn-pass-123")
    pw.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    _secure_env(
        monkeypatch,
        tmp_path,
        RIVERDELTA_KAFKA_SASL_PASSWORD_FILE=str(pw),
        RIVERDELTA_KAFKA_SSL_CA=str(ca),
        RIVERDELTA_KAFKA_SASL_MECHANISM="scram-sha-256",
    )
    settings.cache_clear()
    try:
        conn = kafka_client.connection_of_settings()
        assert "password" not in conn and "conn-pass-123" not in str(conn)
        assert conn["extra"]["security.protocol"] == "SASL_SSL"
        assert conn["extra"]["ssl.ca.location"] == str(ca)
        back = KafkaClientConfig.from_connection(conn["extra"], conn["login"])
        assert back == kafka_client.client_config()
        assert back.mechanism == "SCRAM-SHA-256" and back.password == "conn-pass-123"
    finally:
        settings.cache_clear()


def test_a_connection_without_a_supported_mechanism_is_refused_in_one_line() -> None:
    cfg = KafkaClientConfig.from_connection(
        {"bootstrap.servers": "h:1", "security.protocol": "SASL_SSL"}, "alice", "pw"
    )
    with pytest.raises(ConfigError, match=r"^SASL mechanism 'GSSAPI' is not supported"):
        cfg.spark_options()


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda d: KafkaClientConfig(bootstrap="a:1,b:2"),
        lambda d: KafkaClientConfig(
            bootstrap="a:1",
            protocol="SASL_SSL",
            mechanism="SCRAM-SHA-512",
            username="alice",
            password="s3cret-pass",
            ca=str(_private(d / "ca.pem", "x")),
        ),
        lambda d: KafkaClientConfig(
            bootstrap="a:1",
            protocol="SSL",
            ca=str(_private(d / "ca.pem", "x")),
            keystore=str(_private(d / "client.pem", "k")),
        ),
        lambda d: KafkaClientConfig(
            bootstrap="a:1",
            protocol="SASL_PLAINTEXT",
            mechanism="PLAIN",
            username="bob",
            password="plain-pass-1",
        ),
    ],
    ids=["plaintext", "sasl_ssl-scram", "mtls", "sasl_plaintext-plain"],
)
def test_settings_env_makes_the_settings_give_back_the_same_config(
    make, monkeypatch, tmp_path: Path
) -> None:
    """What a kafka_default connection becomes for the task's own settings and its children."""
    from riverdelta.config.settings import settings

    cfg = make(tmp_path)
    monkeypatch.setenv("RIVERDELTA_ENV", "compose")  # no embedded defaults to fill in
    for key, value in kafka_client.settings_env(cfg).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    settings.cache_clear()
    try:
        assert kafka_client.client_config() == cfg
    finally:
        settings.cache_clear()
