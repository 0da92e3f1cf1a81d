"""The one place that chooses the environment.

``RIVERDELTA_ENV`` selects a profile: ``embedded`` (default: one machine, no
Docker) or ``compose`` (the docker-compose stack in ``docker-compose.yml``). A
profile is a set of defaults (Kafka bootstrap servers, Spark master, storage
root, object-store endpoint, replication, Airflow's URL and database); each
value can still be overridden by its own ``RIVERDELTA_*`` variable. Every other
module asks ``settings()`` rather than reading environment variables itself,
and Airflow's connections (``kafka_default``, ``spark_default``) are derived
from the same values in ``airflow_env.airflow_env``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from riverdelta.errors import RiverdeltaError

PROJECT_ROOT = Path(__file__).resolve().parents[3]

ENVIRONMENTS = ("embedded", "compose")
VALIDATION_ENGINES = ("auto", "pandas", "spark")


class ConfigError(RiverdeltaError, ValueError):
    """A configuration problem the operator must fix; the message says how."""


# The registry shipped with the project; RIVERDELTA_STREAMS points elsewhere.
SHIPPED_STREAMS = PROJECT_ROOT / "include" / "streams.yaml"


@dataclass(frozen=True)
class Settings:
    env: str
    home: Path  # runtime state: broker data, Airflow home, lake, logs, pids
    cache: Path  # downloaded jars and Maven repository, reused offline
    kafka_bootstrap: str
    kafka_port: int
    kafka_controller_port: int
    spark_master: str
    lake: str  # storage root of Delta tables, checkpoints and _ops (path, file://, s3a://, hdfs://)
    control: Path  # POSIX directory for locks and pointers (see lake.py)
    airflow_port: int
    streams_file: Path
    kafka_replication_factor: int = 1
    kafka_min_insync_replicas: int = 1
    s3_endpoint: str | None = None  # S3-compatible endpoint (MinIO); None = AWS
    airflow_url: str = "http://localhost:8080"
    # The quality gate's engine: auto = pandas up to the row bound, Spark above it.
    validation_engine: str = "auto"
    validation_pandas_max_rows: int = 250_000
    # How every Kafka client connects (see kafka_client.py). The password itself is
    # never held here: it is read from RIVERDELTA_KAFKA_SASL_PASSWORD or the 0600 file
    # when a client is built, so printing settings cannot leak it.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_ca: Path | None = None  # PEM CA bundle: both Java and librdkafka read it
    kafka_ssl_keystore: Path | None = None  # PEM: client key + certificate chain (mTLS)
    kafka_internal_port: int = 0  # embedded secured broker: inter-broker loopback listener
    kafka_tls_port: int = 0  # embedded secured broker: the extra mTLS listener

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def jar_dir(self) -> Path:
        return self.cache / "jars"


# What each profile means when nothing overrides it. The compose values are the
# service names and ports of docker-compose.yml (tests/unit/test_compose.py
# holds the two together).
PROFILES: dict[str, dict[str, str]] = {
    "embedded": {
        "kafka_bootstrap": "127.0.0.1:{kafka_port}",
        "spark_master": "local[2]",
        "lake": "{home}/lake",
        "kafka_replication_factor": "1",
        "kafka_min_insync_replicas": "1",
        "s3_endpoint": "",
        "airflow_url": "http://localhost:{airflow_port}",
    },
    "compose": {
        "kafka_bootstrap": "kafka-1:9092,kafka-2:9092,kafka-3:9092",
        "spark_master": "spark://spark-master:7077",
        "lake": "s3a://riverdelta/lake",
        "kafka_replication_factor": "3",
        "kafka_min_insync_replicas": "2",
        "s3_endpoint": "http://minio:9000",
        "airflow_url": "http://airflow-apiserver:8080",
    },
}


def _int(name: str, default: int | str) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        raw = str(default)
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an integer") from exc


def _default_control(lake: str, home: Path) -> str:
    """Beside the tables when they are on a local disk; under the runtime home otherwise."""
    if "://" not in lake:
        return f"{lake.rstrip('/')}/_ops"
    if lake.startswith("file:"):
        from urllib.parse import urlparse

        return f"{urlparse(lake).path.rstrip('/')}/_ops"
    return str(home / "control")


def load_settings() -> Settings:
    env = os.environ.get("RIVERDELTA_ENV", "embedded")
    if env not in PROFILES:
        raise ConfigError(f"RIVERDELTA_ENV={env!r}: expected one of {', '.join(ENVIRONMENTS)}")
    home = Path(os.environ.get("RIVERDELTA_HOME", PROJECT_ROOT / ".riverdelta")).resolve()
    cache = Path(os.environ.get("RIVERDELTA_CACHE", home / "cache")).resolve()
    kafka_port = _int("RIVERDELTA_KAFKA_PORT", 9092)
    airflow_port = _int("RIVERDELTA_AIRFLOW_PORT", 8080)
    fill = {"home": home, "kafka_port": kafka_port, "airflow_port": airflow_port}

    def value(key: str) -> str:
        raw = os.environ.get(f"RIVERDELTA_{key.upper()}")
        return raw if raw not in (None, "") else PROFILES[env][key].format(**fill)

    streams = Path(os.environ.get("RIVERDELTA_STREAMS", SHIPPED_STREAMS)).resolve()
    replication = _int("RIVERDELTA_KAFKA_REPLICATION_FACTOR", value("kafka_replication_factor"))
    min_isr = _int("RIVERDELTA_KAFKA_MIN_INSYNC_REPLICAS", value("kafka_min_insync_replicas"))
    if not 1 <= min_isr <= replication:
        raise ConfigError(
            f"min.insync.replicas={min_isr} must be between 1 and the replication factor "
            f"{replication} (RIVERDELTA_KAFKA_MIN_INSYNC_REPLICAS)"
        )
    engine = os.environ.get("RIVERDELTA_VALIDATION_ENGINE") or "auto"
    if engine not in VALIDATION_ENGINES:
        raise ConfigError(
            f"RIVERDELTA_VALIDATION_ENGINE={engine!r}: expected one of "
            f"{', '.join(VALIDATION_ENGINES)} (auto chooses by size)"
        )
    security = _kafka_security()
    lake = value("lake")
    control = os.environ.get("RIVERDELTA_CONTROL") or _default_control(lake, home)
    return Settings(
        env=env,
        home=home,
        cache=cache,
        kafka_bootstrap=value("kafka_bootstrap"),
        kafka_port=kafka_port,
        kafka_controller_port=_int("RIVERDELTA_KAFKA_CONTROLLER_PORT", kafka_port + 1),
        spark_master=value("spark_master"),
        lake=lake,
        control=Path(control).resolve(),
        airflow_port=airflow_port,
        streams_file=streams,
        kafka_replication_factor=replication,
        kafka_min_insync_replicas=min_isr,
        s3_endpoint=value("s3_endpoint") or None,
        airflow_url=value("airflow_url"),
        validation_engine=engine,
        validation_pandas_max_rows=_int("RIVERDELTA_VALIDATION_PANDAS_MAX_ROWS", 250_000),
        kafka_internal_port=_int("RIVERDELTA_KAFKA_INTERNAL_PORT", kafka_port + 2),
        kafka_tls_port=_int("RIVERDELTA_KAFKA_TLS_PORT", kafka_port + 3),
        **security,
    )


KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


def _path(name: str) -> Path | None:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else None


def _kafka_security() -> dict[str, object]:
    """The Kafka security settings, checked for shape; files are checked by kafka_client."""
    protocol = (os.environ.get("RIVERDELTA_KAFKA_SECURITY") or "PLAINTEXT").upper()
    if protocol not in KAFKA_PROTOCOLS:
        raise ConfigError(
            f"RIVERDELTA_KAFKA_SECURITY={protocol.lower()!r}: expected one of "
            f"{', '.join(p.lower() for p in KAFKA_PROTOCOLS)}"
        )
    mechanism = (os.environ.get("RIVERDELTA_KAFKA_SASL_MECHANISM") or "").upper() or None
    if protocol.startswith("SASL_"):
        mechanism = mechanism or "SCRAM-SHA-512"
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise ConfigError(
                f"RIVERDELTA_KAFKA_SASL_MECHANISM={mechanism!r} is not supported: expected one "
                f"of {', '.join(KAFKA_SASL_MECHANISMS)}"
            )
    else:
        mechanism = None
    return {
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": os.environ.get("RIVERDELTA_KAFKA_SASL_USERNAME") or None,
        "kafka_sasl_password_file": _path("RIVERDELTA_KAFKA_SASL_PASSWORD_FILE"),
        "kafka_ssl_ca": _path("RIVERDELTA_KAFKA_SSL_CA"),
        "kafka_ssl_keystore": _path("RIVERDELTA_KAFKA_SSL_KEYSTORE"),
    }


@functools.cache
def settings() -> Settings:
    return load_settings()
