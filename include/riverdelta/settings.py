"""The one place that chooses the environment.

``RIVERDELTA_ENV`` selects ``embedded`` (default: one machine, no Docker) or
``distributed`` (docker-compose stack). Every other module asks ``settings()``
rather than reading environment variables itself.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A configuration problem the operator must fix; the message says how."""


@dataclass(frozen=True)
class Settings:
    env: str
    home: Path  # runtime state: broker data, Airflow home, lake, logs, pids
    cache: Path  # downloaded jars and Maven repository, reused offline
    kafka_bootstrap: str
    kafka_port: int
    kafka_controller_port: int
    spark_master: str
    lake: str  # root of Delta tables and checkpoints (path or s3a:// URI)
    airflow_port: int
    streams_file: Path

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


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an integer") from exc


def load_settings() -> Settings:
    env = os.environ.get("RIVERDELTA_ENV", "embedded")
    if env not in ("embedded", "distributed"):
        raise ConfigError(f"RIVERDELTA_ENV={env!r}: expected 'embedded' or 'distributed'")
    home = Path(os.environ.get("RIVERDELTA_HOME", PROJECT_ROOT / ".riverdelta")).resolve()
    cache = Path(os.environ.get("RIVERDELTA_CACHE", home / "cache")).resolve()
    kafka_port = _int("RIVERDELTA_KAFKA_PORT", 9092)
    controller_port = _int("RIVERDELTA_KAFKA_CONTROLLER_PORT", kafka_port + 1)
    if env == "embedded":
        bootstrap = os.environ.get("RIVERDELTA_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka_port}")
        master = os.environ.get("RIVERDELTA_SPARK_MASTER", "local[2]")
        lake = os.environ.get("RIVERDELTA_LAKE", str(home / "lake"))
    else:
        bootstrap = os.environ.get("RIVERDELTA_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
        master = os.environ.get("RIVERDELTA_SPARK_MASTER", "spark://spark-master:7077")
        lake = os.environ.get("RIVERDELTA_LAKE", "s3a://riverdelta/lake")
    streams = Path(
        os.environ.get("RIVERDELTA_STREAMS", PROJECT_ROOT / "include" / "streams.yaml")
    ).resolve()
    return Settings(
        env=env,
        home=home,
        cache=cache,
        kafka_bootstrap=bootstrap,
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        spark_master=master,
        lake=lake,
        airflow_port=_int("RIVERDELTA_AIRFLOW_PORT", 8080),
        streams_file=streams,
    )


@functools.cache
def settings() -> Settings:
    return load_settings()
