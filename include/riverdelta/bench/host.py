"""The machine a benchmark runs on: an isolated runtime home, peak memory, versions."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from riverdelta.config.settings import settings
from riverdelta.launch import procs


@contextlib.contextmanager
def isolated_home(home: Path) -> Iterator[None]:
    """Own runtime home and free ports, like tests/conftest.py; the jar cache is shared."""
    saved = dict(os.environ)
    cache = settings().cache  # resolved before the home moves: jars stay where they are
    for name in ("RIVERDELTA_LAKE", "RIVERDELTA_KAFKA_BOOTSTRAP", "RIVERDELTA_ENV"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "RIVERDELTA_HOME": str(home),
            "RIVERDELTA_CACHE": str(cache),
            "RIVERDELTA_KAFKA_PORT": str(procs.free_port()),
            "RIVERDELTA_KAFKA_CONTROLLER_PORT": str(procs.free_port()),
            "RIVERDELTA_AIRFLOW_PORT": str(procs.free_port()),
        }
    )
    settings.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        settings.cache_clear()


class MemorySampler(threading.Thread):
    """Peak of broker JVM + Spark driver JVM + this Python process RSS, sampled twice a second."""

    def __init__(self, broker_pid: int, interval: float = 0.5) -> None:
        super().__init__(name="bench-memory", daemon=True)
        import psutil

        self.me = psutil.Process()
        self.broker = psutil.Process(broker_pid)
        self.interval = interval
        self.peak: dict[str, float] = {"total": 0.0, "broker": 0.0, "spark": 0.0, "python": 0.0}
        self._halt = threading.Event()

    def _spark_jvms(self) -> list[Any]:
        found = []
        for child in self.me.children(recursive=True):
            with contextlib.suppress(Exception):
                if "org.apache.spark.deploy.SparkSubmit" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    def sample(self) -> None:
        import psutil

        parts = {"python": self.me.memory_info().rss, "broker": 0, "spark": 0}
        with contextlib.suppress(psutil.Error):
            parts["broker"] = self.broker.memory_info().rss
        for jvm in self._spark_jvms():
            with contextlib.suppress(psutil.Error):
                parts["spark"] += jvm.memory_info().rss
        total = sum(parts.values())
        if total > self.peak["total"] * 2**20:
            self.peak = {k: v / 2**20 for k, v in {**parts, "total": total}.items()}

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join(timeout=5)
        return {f"{k}_mb": round(v, 1) for k, v in self.peak.items()}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    import psutil

    from riverdelta.launch import jars

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    kafka = next(
        (
            p.name.removeprefix("kafka_").removesuffix(".jar")
            for p in jars.jars("kafka")
            if p.name.startswith("kafka_2")
        ),
        None,
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "versions": {
            "python": platform.python_version(),
            "java": java.splitlines()[0] if java else None,
            "kafka": kafka,
            "pyspark": _version("pyspark"),
            "delta-spark": _version("delta-spark"),
            "great-expectations": _version("great-expectations"),
            "apache-airflow": _version("apache-airflow"),
            "confluent-kafka": _version("confluent-kafka"),
        },
    }
