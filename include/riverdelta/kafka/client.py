"""Every Kafka client, from one configuration.

``KafkaClientConfig`` says how to reach Kafka (bootstrap servers, security
protocol, SASL mechanism and credentials, CA and client key for TLS). It is
built once per environment from the settings (``client_config``) or from the
Airflow ``kafka_default`` connection (``from_connection``), and renders the same
thing twice: ``librdkafka()`` for confluent-kafka (the look-ups, the generator,
topic admin) and ``spark_options()`` for the Spark Kafka source (``kafka.*``).
The two mappings invert (``from_librdkafka``, ``from_spark_options``) and the
unit tests hold them together. ``consumer``, ``producer`` and ``admin`` (and
``transactional_producer`` / ``committed_consumer`` over them) are the
only places a confluent-kafka client is constructed, as the Airflow Kafka
provider's hooks own connection -> client.
``create_topics`` creates what the registry declares over ``admin``: the
platform_topics DAG, the gold Kafka sinks, the CLI and the embedded stack share it.

The password is read when a client is built, from ``RIVERDELTA_KAFKA_SASL_PASSWORD``
or a file only its owner can read, and is kept out of ``repr`` and of every
message this module raises.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riverdelta.config.settings import ConfigError, Settings, settings
from riverdelta.errors import RiverdeltaError

PASSWORD_ENV = "RIVERDELTA_KAFKA_SASL_PASSWORD"
EMBEDDED_USER = "riverdelta"

_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
_JAAS = re.compile(r'(\S+) required username="((?:[^"\\]|\\.)*)" password="((?:[^"\\]|\\.)*)";')

# Spark shows its conf in the UI and event log and reader options in plans; these keys
# and values carry a secret (the JAAS line holds the password).
SPARK_REDACTION_REGEX = r"(?i)secret|password|token|access[.]?key|jaas|sasl"
SPARK_OPTIONS_REDACTION_REGEX = r"(?i)url|password|jaas|sasl|secret|token"


class KafkaClientError(RiverdeltaError, RuntimeError):
    """Kafka refused or could not be reached; the message names the setting to fix."""


@dataclass(frozen=True)
class KafkaClientConfig:
    bootstrap: str
    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None  # PEM CA bundle
    keystore: str | None = None  # PEM with the client key and certificate chain (mTLS)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.protocol}
        if self.sasl:
            conf["sasl.mechanism"] = self.mechanism or ""
            conf["sasl.username"] = self.username or ""
            conf["sasl.password"] = self.password or ""
        if self.tls and self.ca:
            conf["ssl.ca.location"] = self.ca
        if self.tls and self.keystore:
            # One PEM file holds both: librdkafka picks the certificate and the key out of it.
            conf["ssl.certificate.location"] = self.keystore
            conf["ssl.key.location"] = self.keystore
        return conf

    def spark_options(self) -> dict[str, str]:
        opts = {"kafka.bootstrap.servers": self.bootstrap, "kafka.security.protocol": self.protocol}
        if self.sasl:
            module = _LOGIN_MODULES.get(self.mechanism or "")
            if module is None:
                raise ConfigError(
                    f"SASL mechanism {self.mechanism!r} is not supported: expected one of "
                    f"{', '.join(_LOGIN_MODULES)} (RIVERDELTA_KAFKA_SASL_MECHANISM or the "
                    "kafka_default connection's sasl.mechanism)"
                )
            opts["kafka.sasl.mechanism"] = self.mechanism or ""
            opts["kafka.sasl.jaas.config"] = (
                f'{module} required username="{_jaas_quote(self.username or "")}" '
                f'password="{_jaas_quote(self.password or "")}";'
            )
        if self.tls and self.ca:
            opts["kafka.ssl.truststore.type"] = "PEM"
            opts["kafka.ssl.truststore.location"] = self.ca
        if self.tls and self.keystore:
            opts["kafka.ssl.keystore.type"] = "PEM"
            opts["kafka.ssl.keystore.location"] = self.keystore
        return opts

    @classmethod
    def from_librdkafka(cls, conf: dict[str, Any]) -> KafkaClientConfig:
        protocol = str(conf.get("security.protocol", "PLAINTEXT")).upper()
        sasl = protocol.startswith("SASL_")
        return cls(
            bootstrap=str(conf["bootstrap.servers"]),
            protocol=protocol,
            mechanism=str(conf.get("sasl.mechanism", "GSSAPI")).upper() if sasl else None,
            username=conf.get("sasl.username") if sasl else None,
            password=conf.get("sasl.password") if sasl else None,
            ca=conf.get("ssl.ca.location"),
            keystore=conf.get("ssl.key.location"),
        )

    @classmethod
    def from_spark_options(cls, opts: dict[str, str]) -> KafkaClientConfig:
        protocol = opts.get("kafka.security.protocol", "PLAINTEXT").upper()
        username = password = None
        if "kafka.sasl.jaas.config" in opts:
            match = _JAAS.fullmatch(opts["kafka.sasl.jaas.config"])
            if match is None:
                raise ConfigError("kafka.sasl.jaas.config is not a username/password login")
            username, password = _jaas_unquote(match.group(2)), _jaas_unquote(match.group(3))
        return cls(
            bootstrap=opts["kafka.bootstrap.servers"],
            protocol=protocol,
            mechanism=opts.get("kafka.sasl.mechanism"),
            username=username,
            password=password,
            ca=opts.get("kafka.ssl.truststore.location"),
            keystore=opts.get("kafka.ssl.keystore.location"),
        )

    def to_connection(self) -> dict[str, Any]:
        """An Airflow connection: librdkafka settings in the extra, the password apart.

        ``password`` is the connection's own (masked) field; callers that write the
        connection where others can read it leave it out and let the password come
        from the environment or the file instead.
        """
        extra = self.librdkafka()
        password = extra.pop("sasl.password", None)
        conn: dict[str, Any] = {"conn_type": "kafka", "extra": extra}
        if self.sasl:
            conn.update(login=self.username, password=password)
        return conn

    @classmethod
    def from_connection(
        cls, extra: dict[str, Any], login: str | None = None, password: str | None = None
    ) -> KafkaClientConfig:
        conf = dict(extra)
        if login and "sasl.username" not in conf:
            conf["sasl.username"] = login
        if password:
            conf["sasl.password"] = password
        cfg = cls.from_librdkafka(conf)
        if cfg.sasl and not cfg.password:
            cfg = dataclasses.replace(cfg, password=read_password(settings()))
        return cfg

    def describe(self) -> str:
        """For messages: everything but the secret."""
        who = f" as {self.username} ({self.mechanism})" if self.sasl else ""
        return f"{self.bootstrap} over {self.protocol}{who}"


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _jaas_unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


# --------------------------------------------------------------------------- from settings


def private_file(path: Path, setting: str) -> Path:
    """``path`` exists and only its owner can read it (a password or a private key)."""
    if not path.is_file():
        raise ConfigError(f"{setting}={path}: no such file")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{setting}={path} is readable by others (mode {mode:04o}): chmod 600 {path}"
        )
    return path


def read_password(s: Settings) -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if s.kafka_sasl_password_file is not None:
        path = private_file(s.kafka_sasl_password_file, "RIVERDELTA_KAFKA_SASL_PASSWORD_FILE")
        return path.read_text().rstrip("\r\n")
    raise ConfigError(
        f"RIVERDELTA_KAFKA_SECURITY={s.kafka_security_protocol.lower()} needs a password: set "
        "RIVERDELTA_KAFKA_SASL_PASSWORD_FILE (a 0600 file) or RIVERDELTA_KAFKA_SASL_PASSWORD"
    )


def tls_dir(s: Settings) -> Path:
    """Where the embedded broker keeps its CA and certificates."""
    return s.home / "kafka" / "tls"


def _embedded_defaults(s: Settings) -> tuple[Path | None, Path | None]:
    """CA and client keystore of the embedded secured broker when none is configured."""
    if s.env != "embedded":
        return s.kafka_ssl_ca, s.kafka_ssl_keystore
    ca = s.kafka_ssl_ca or tls_dir(s) / "ca.pem"
    keystore = s.kafka_ssl_keystore
    if keystore is None and s.kafka_security_protocol == "SSL":
        keystore = tls_dir(s) / "client.pem"
    return ca, keystore


def client_config(s: Settings | None = None, bootstrap: str | None = None) -> KafkaClientConfig:
    """The environment's client configuration; bad files fail here, before any client."""
    s = s or settings()
    protocol = s.kafka_security_protocol
    cfg = KafkaClientConfig(bootstrap=bootstrap or s.kafka_bootstrap, protocol=protocol)
    if protocol == "PLAINTEXT":
        return cfg
    if cfg.sasl:
        username = s.kafka_sasl_username or (EMBEDDED_USER if s.env == "embedded" else None)
        if not username:
            raise ConfigError(
                f"RIVERDELTA_KAFKA_SECURITY={protocol.lower()} needs a user: "
                "set RIVERDELTA_KAFKA_SASL_USERNAME"
            )
        cfg = dataclasses.replace(
            cfg, mechanism=s.kafka_sasl_mechanism, username=username, password=read_password(s)
        )
    if cfg.tls:
        ca, keystore = _embedded_defaults(s)
        if ca is not None and not ca.is_file():
            raise ConfigError(
                f"RIVERDELTA_KAFKA_SSL_CA={ca}: no such file (the PEM CA that signed the "
                "broker's certificate)"
            )
        if keystore is not None:
            private_file(keystore, "RIVERDELTA_KAFKA_SSL_KEYSTORE")
        cfg = dataclasses.replace(
            cfg, ca=str(ca) if ca else None, keystore=str(keystore) if keystore else None
        )
    return cfg


def connection_of_settings(s: Settings | None = None) -> dict[str, Any]:
    """The ``kafka_default`` Airflow connection of the settings, without the password.

    Written into Airflow's environment, so the password stays where the settings
    keep it (the 0600 file or RIVERDELTA_KAFKA_SASL_PASSWORD) and ``from_connection``
    reads it from there. Paths are not checked here: the broker may make them later.
    """
    s = s or settings()
    ca, keystore = _embedded_defaults(s)
    cfg = KafkaClientConfig(
        bootstrap=s.kafka_bootstrap,
        protocol=s.kafka_security_protocol,
        mechanism=s.kafka_sasl_mechanism,
        username=s.kafka_sasl_username or (EMBEDDED_USER if s.env == "embedded" else None),
        ca=str(ca) if ca else None,
        keystore=str(keystore) if keystore else None,
    )
    conn = cfg.to_connection()
    conn.pop("password", None)
    return conn


def from_airflow_connection(conn_id: str = "kafka_default") -> KafkaClientConfig:
    """What an Airflow task connects with: the connection's extra, login and password."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return KafkaClientConfig.from_connection(conn.extra_dejson, conn.login, conn.password)


def settings_env(cfg: KafkaClientConfig) -> dict[str, str | None]:
    """The RIVERDELTA_KAFKA_* variables under which ``client_config()`` gives ``cfg``.

    How an Airflow task's ``kafka_default`` connection reaches everything the task
    runs, in its own process and in the drivers and replays it starts: the settings
    are the one thing every one of them reads. ``None`` means "unset this variable".
    The password travels as RIVERDELTA_KAFKA_SASL_PASSWORD (environment, never argv)
    and only when the connection holds one; otherwise the settings' own file or
    variable still provides it.
    """
    env: dict[str, str | None] = {
        "RIVERDELTA_KAFKA_BOOTSTRAP": cfg.bootstrap,
        "RIVERDELTA_KAFKA_SECURITY": cfg.protocol.lower(),
        "RIVERDELTA_KAFKA_SASL_MECHANISM": cfg.mechanism if cfg.sasl else None,
        "RIVERDELTA_KAFKA_SASL_USERNAME": cfg.username if cfg.sasl else None,
        "RIVERDELTA_KAFKA_SSL_CA": cfg.ca if cfg.tls else None,
        "RIVERDELTA_KAFKA_SSL_KEYSTORE": cfg.keystore if cfg.tls else None,
    }
    if cfg.sasl and cfg.password:
        env[PASSWORD_ENV] = cfg.password
    return env


def config_for(bootstrap: str | None) -> KafkaClientConfig:
    """The settings' configuration aimed at ``bootstrap`` (default: the settings')."""
    return client_config(bootstrap=bootstrap)


# --------------------------------------------------------------------------- clients


def _base(bootstrap: str | None, cfg: KafkaClientConfig | None) -> dict[str, Any]:
    cfg = cfg or config_for(bootstrap)
    # librdkafka would log every refused connection to stderr.
    return {**cfg.librdkafka(), "log_level": 0}


def consumer(
    bootstrap: str | None = None, *, cfg: KafkaClientConfig | None = None, **conf: Any
) -> Any:
    """A look-up consumer: a throwaway group that never commits, so looking moves nothing."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            **_base(bootstrap, cfg),
            "group.id": f"riverdelta-health-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            **conf,
        }
    )


def producer(
    bootstrap: str | None = None, *, cfg: KafkaClientConfig | None = None, **conf: Any
) -> Any:
    from confluent_kafka import Producer

    return Producer({**_base(bootstrap, cfg), **conf})


def transactional_producer(
    transactional_id: str, *, cfg: KafkaClientConfig | None = None, **conf: Any
) -> Any:
    """A producer whose sends commit or abort together (``init_transactions`` before use).

    A stable ``transactional_id`` across restarts is the point: the broker fences the
    previous holder of the id (a zombie driver) and aborts its open transaction when
    the next one calls ``init_transactions``. Keys are partitioned like the Java
    clients do (murmur2), so other producers and consumers agree on a key's partition.
    """
    return producer(
        cfg=cfg,
        **{
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            **conf,
        },
    )


def committed_consumer(
    bootstrap: str | None = None, *, cfg: KafkaClientConfig | None = None, **conf: Any
) -> Any:
    """A look-up consumer that sees committed transactions only (``read_committed``)."""
    return consumer(bootstrap, cfg=cfg, **{"isolation.level": "read_committed", **conf})


def admin(bootstrap: str | None = None, *, cfg: KafkaClientConfig | None = None, **conf: Any):
    from confluent_kafka.admin import AdminClient

    return AdminClient({**_base(bootstrap, cfg), **conf})


def create_topics(
    topics: dict[str, int], configs: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """Create missing topics (name -> partitions, optional name -> topic config); returns the ones created.

    On the settings' Kafka (the embedded broker or a real cluster) with its security;
    replication and ``min.insync.replicas`` come from the settings.
    """
    from confluent_kafka.admin import NewTopic

    s = settings()
    client = admin()
    existing = set(client.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(
            t,
            num_partitions=n,
            replication_factor=s.kafka_replication_factor,
            config={
                "min.insync.replicas": str(s.kafka_min_insync_replicas),
                **(configs or {}).get(t, {}),
            },
        )
        for t, n in topics.items()
        if t not in existing
    ]
    if not wanted:
        return []
    for topic, fut in client.create_topics(wanted, operation_timeout=30).items():
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise KafkaClientError(f"creating topic {topic} failed: {exc}") from exc
    return [t.topic for t in wanted]


# --------------------------------------------------------------------------- clear errors


def explain(cfg: KafkaClientConfig, error: str) -> str | None:
    """One line naming the problem and the setting to fix, or None when not a setup error."""
    text = error.lower()
    where = cfg.describe()
    if "authentication failed" in text or "invalid credentials" in text:
        return (
            f"Kafka at {where} rejected the credentials: check "
            "RIVERDELTA_KAFKA_SASL_USERNAME and the password (RIVERDELTA_KAFKA_SASL_PASSWORD_FILE, "
            "RIVERDELTA_KAFKA_SASL_PASSWORD or the kafka_default connection's password)"
        )
    if "unsupported sasl mechanism" in text:
        offered = re.search(r"supported mechanisms: ([A-Z0-9,_-]+)", error)
        return (
            f"Kafka at {where}: the broker does not offer SASL mechanism {cfg.mechanism}; set "
            "RIVERDELTA_KAFKA_SASL_MECHANISM to one it enables"
            + (f" ({offered.group(1)})" if offered else "")
        )
    if "certificate verify failed" in text or "unable to get local issuer" in text:
        return (
            f"Kafka at {where}: the broker's certificate is not trusted by {cfg.ca}; set "
            "RIVERDELTA_KAFKA_SSL_CA to the PEM CA that signed it"
        )
    if "certificate required" in text or "bad certificate" in text:
        return (
            f"Kafka at {where}: the broker requires a client certificate; set "
            "RIVERDELTA_KAFKA_SSL_KEYSTORE to a PEM file with the client key and certificate"
        )
    if "incorrect security.protocol" in text or "connecting to a ssl listener" in text:
        return (
            f"Kafka at {where}: the listener speaks TLS but the client does not; set "
            "RIVERDELTA_KAFKA_SECURITY to ssl or sasl_ssl"
        )
    if "plaintext broker listener" in text or "wrong version number" in text:
        return (
            f"Kafka at {where}: the listener does not speak TLS; set RIVERDELTA_KAFKA_SECURITY "
            "to plaintext or sasl_plaintext (or use the broker's TLS port)"
        )
    if "sasl" in text and ("handshake" in text or "disconnected" in text):
        return (
            f"Kafka at {where}: the listener does not expect this SASL/TLS setup; check "
            "RIVERDELTA_KAFKA_SECURITY against the broker's listener"
        )
    return None


def check(cfg: KafkaClientConfig | None = None, timeout: float = 15.0) -> None:
    """Raise ``KafkaClientError`` (one line) unless Kafka answers metadata with ``cfg``.

    librdkafka retries a refused login forever in the background and only says so
    through the error callback: that callback is read here and the first error that
    is a setup problem ends the wait at once.
    """
    cfg = cfg or client_config()
    errors: list[str] = []
    client = admin(cfg=cfg, error_cb=lambda err: errors.append(str(err)))
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_topics(timeout=1.0)
            return
        except Exception as exc:  # KafkaException: timed out; the reason is in errors
            errors.append(str(exc))
        client.poll(0.2)  # serves the error callback
        for err in errors:
            line = explain(cfg, err)
            if line:
                raise KafkaClientError(line)
        if not cfg.tls and _speaks_tls(cfg.bootstrap):
            raise KafkaClientError(
                f"Kafka at {cfg.describe()}: the listener speaks TLS but the client does not; "
                "set RIVERDELTA_KAFKA_SECURITY to ssl or sasl_ssl"
            )
        if time.monotonic() >= deadline:
            last = errors[-1] if errors else "no answer"
            raise KafkaClientError(
                f"Kafka at {cfg.describe()} did not answer within {timeout:.0f}s ({last}); "
                "check RIVERDELTA_KAFKA_BOOTSTRAP and that the broker runs"
            )


def _speaks_tls(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the first bootstrap server completes a TLS handshake (unverified)."""
    import socket
    import ssl

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host.strip("[]")),
        ):
            return True
    except ssl.SSLError as exc:
        # A listener demanding a client certificate still speaks TLS.
        return "certificate" in str(exc).lower()
    except (OSError, ValueError):
        return False
