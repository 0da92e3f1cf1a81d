"""The one place that chooses the environment.

``RIVERDELTA_ENV`` selects a profile: ``embedded`` (default: one machine, no
Docker) or ``compose`` (the docker-compose stack in ``docker-compose.yml``). A
profile is a set of defaults (Kafka bootstrap servers, Spark master, storage
root, object-store endpoint, replication, Airflow's URL and database); each
value can still be overridden by its own ``RIVERDELTA_*`` variable. Every other
module asks ``settings()`` rather than reading environment variables itself,
and Airflow's connections (``kafka_default``, ``spark_default``) are derived
from the same values in ``airflow_env.airflow_env``.

``load_settings`` is the one place the variables are read: it hands them, as a
dict, to the ``Settings`` pydantic model (field ``x`` is ``RIVERDELTA_X``), whose
validators fill the defaults that follow from other values; a bad value is one
``ConfigError`` line naming the variable.
"""

from __future__ import annotations

import functools
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from riverdelta.errors import RiverdeltaError

PROJECT_ROOT = Path(__file__).resolve().parents[3]


class ConfigError(RiverdeltaError, ValueError):
    """A configuration problem the operator must fix; the message says how."""


class Environment(StrEnum):
    EMBEDDED = "embedded"
    COMPOSE = "compose"


class ValidationEngine(StrEnum):
    """The quality gate's engine: auto = pandas up to the row bound, Spark above it."""

    AUTO = "auto"
    PANDAS = "pandas"
    SPARK = "spark"


class KafkaProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_SSL = "SASL_SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"

    @classmethod
    def _missing_(cls, value: object) -> Any:
        """Written in lower case in the environment (``sasl_ssl``), as Kafka docs do."""
        return cls.__members__.get(value.upper()) if isinstance(value, str) else None


class SaslMechanism(StrEnum):
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    PLAIN = "PLAIN"


ENVIRONMENTS = tuple(e.value for e in Environment)
VALIDATION_ENGINES = tuple(e.value for e in ValidationEngine)
KAFKA_PROTOCOLS = tuple(p.value for p in KafkaProtocol)
KAFKA_SASL_MECHANISMS = tuple(m.value for m in SaslMechanism)

# The registry shipped with the project; RIVERDELTA_STREAMS points elsewhere.
SHIPPED_STREAMS = PROJECT_ROOT / "include" / "streams.yaml"

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


# Paths as today: resolved against the working directory; the Kafka files also expand "~".
Resolved = Annotated[Path, AfterValidator(Path.resolve)]
UserPath = Annotated[Path, AfterValidator(lambda p: p.expanduser().resolve())]
# A value whose default follows from the fields before it (validated in field order).
Derived = Field(default=None, validate_default=True)
_VAR = "RIVERDELTA_"


class Settings(BaseModel):
    """The environment's settings: every field is the variable ``RIVERDELTA_<FIELD>``.

    Fields are in dependency order: a default computed from other fields (the
    profile's, the ports after ``kafka_port``) only sees the fields above it.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=lambda name: _VAR + name.upper()
    )

    env: Environment = Environment.EMBEDDED
    home: Resolved = PROJECT_ROOT / ".riverdelta"  # runtime state: broker data, Airflow, logs
    cache: Resolved = Derived  # downloaded jars and Maven repository, reused offline
    streams_file: Resolved = Field(SHIPPED_STREAMS, alias=_VAR + "STREAMS")
    kafka_port: int = 9092
    kafka_controller_port: int = Derived
    kafka_internal_port: int = Derived  # embedded secured broker: inter-broker loopback
    kafka_tls_port: int = Derived  # embedded secured broker: the extra mTLS listener
    airflow_port: int = 8080
    # The profile's values (PROFILES), each overridable by its own variable.
    kafka_bootstrap: str = Derived
    spark_master: str = Derived
    # The storage root of Delta tables, checkpoints and _ops (path, file://, s3a://, hdfs://).
    lake: str = Derived
    kafka_replication_factor: int = Derived
    kafka_min_insync_replicas: int = Derived
    s3_endpoint: str | None = Derived  # S3-compatible endpoint (MinIO); None = AWS
    airflow_url: str = Derived
    control: Resolved = Derived  # POSIX directory for locks and pointers (see lake.py)
    validation_engine: ValidationEngine = ValidationEngine.AUTO
    validation_pandas_max_rows: int = 250_000
    # How every Kafka client connects (see kafka/client.py). The password itself is
    # never held here: it is read from RIVERDELTA_KAFKA_SASL_PASSWORD or the 0600 file
    # when a client is built, so printing settings cannot leak it.
    kafka_security_protocol: KafkaProtocol = Field(
        KafkaProtocol.PLAINTEXT, alias=_VAR + "KAFKA_SECURITY"
    )
    kafka_sasl_mechanism: SaslMechanism | None = Derived
    kafka_sasl_username: str | None = None
    kafka_sasl_password_file: UserPath | None = None
    kafka_ssl_ca: UserPath | None = None  # PEM CA bundle: both Java and librdkafka read it
    kafka_ssl_keystore: UserPath | None = None  # PEM: client key + certificate chain (mTLS)

    @field_validator("cache", mode="before")
    @classmethod
    def _cache(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None or "home" not in info.data:
            return value
        return info.data["home"] / "cache"

    @field_validator(
        "kafka_controller_port", "kafka_internal_port", "kafka_tls_port", mode="before"
    )
    @classmethod
    def _next_ports(cls, value: Any, info: ValidationInfo) -> Any:
        offset = {"kafka_controller_port": 1, "kafka_internal_port": 2, "kafka_tls_port": 3}
        if value is not None or "kafka_port" not in info.data:
            return value
        return info.data["kafka_port"] + offset[info.field_name]

    @field_validator(*PROFILES["embedded"], mode="before")
    @classmethod
    def _profile(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        try:
            default = PROFILES[info.data["env"]][info.field_name].format(**info.data)
        except KeyError:  # a field it needs failed: that error is the one reported
            return value
        return default or None  # the embedded profile has no S3 endpoint

    @field_validator("control", mode="before")
    @classmethod
    def _control(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None or not {"lake", "home"} <= set(info.data):
            return value
        return _default_control(info.data["lake"], info.data["home"])

    @field_validator("kafka_sasl_mechanism", mode="before")
    @classmethod
    def _mechanism(cls, value: Any, info: ValidationInfo) -> Any:
        """Only SASL has a mechanism; SCRAM-SHA-512 unless told otherwise."""
        protocol = info.data.get("kafka_security_protocol")
        if protocol is None or not protocol.startswith("SASL_"):
            return None
        return value.upper() if isinstance(value, str) else SaslMechanism.SCRAM_SHA_512

    @model_validator(mode="after")
    def _replicas(self) -> Settings:
        if not 1 <= self.kafka_min_insync_replicas <= self.kafka_replication_factor:
            raise ValueError(
                f"min.insync.replicas={self.kafka_min_insync_replicas} must be between 1 and "
                f"the replication factor {self.kafka_replication_factor} "
                "(RIVERDELTA_KAFKA_MIN_INSYNC_REPLICAS)"
            )
        return self

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


def _default_control(lake: str, home: Path) -> str:
    """Beside the tables when they are on a local disk; under the runtime home otherwise."""
    if "://" not in lake:
        return f"{lake.rstrip('/')}/_ops"
    if lake.startswith("file:"):
        from urllib.parse import urlparse

        return f"{urlparse(lake).path.rstrip('/')}/_ops"
    return str(home / "control")


# What a bad choice says after ``RIVERDELTA_X='value'``.
_CHOICES = {
    "RIVERDELTA_ENV": ": expected one of " + ", ".join(ENVIRONMENTS),
    "RIVERDELTA_VALIDATION_ENGINE": (
        ": expected one of " + ", ".join(VALIDATION_ENGINES) + " (auto chooses by size)"
    ),
    "RIVERDELTA_KAFKA_SECURITY": ": expected one of " + ", ".join(KAFKA_PROTOCOLS).lower(),
    "RIVERDELTA_KAFKA_SASL_MECHANISM": (
        " is not supported: expected one of " + ", ".join(KAFKA_SASL_MECHANISMS)
    ),
}


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """The settings of ``environ`` (default: the process's): the one place variables are read.

    A variable set to "" counts as unset, as before for all but a few.
    """
    environ = os.environ if environ is None else environ
    known = {f.alias for f in Settings.model_fields.values()}
    given = {k: v for k, v in environ.items() if k in known and v != ""}
    try:
        return Settings.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        var = str(err["loc"][0]) if err["loc"] else ""
        cause = (err.get("ctx") or {}).get("error")
        if cause is not None:
            message = f"{var}: {cause}" if var and var not in str(cause) else str(cause)
        elif err["type"] == "enum":
            message = f"{var}={err['input']!r}{_CHOICES[var]}"
        elif err["type"].startswith("int_"):
            message = f"{var}={err['input']!r} is not an integer"
        else:
            message = f"{var}={err['input']!r}: {err['msg']}"
        raise ConfigError(message) from None


@functools.cache
def settings() -> Settings:
    return load_settings()
