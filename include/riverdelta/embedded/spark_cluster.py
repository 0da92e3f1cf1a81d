"""A Spark standalone cluster on loopback, from the pyspark wheel: one master, N workers.

The wheel ships ``bin/spark-class`` but not the ``sbin`` start scripts, so the
master and each worker are ``spark-class org.apache.spark.deploy.…`` processes
started detached through ``procs`` (own session, pid file, log in the runtime
home's log dir). A worker's executors are its child processes in its process
group, so ``kill_worker`` (SIGKILL of the group) takes them down with it, as a
lost machine would.

    cluster = spark_cluster.start(workers=2)
    cluster.master_url          # spark://127.0.0.1:<port>, for RIVERDELTA_SPARK_MASTER
    spark_cluster.kill_worker(cluster, 1)
    spark_cluster.stop(cluster)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riverdelta.config.settings import settings
from riverdelta.errors import RiverdeltaError
from riverdelta.launch import procs

MASTER = "spark-master"


class ClusterError(RiverdeltaError, RuntimeError):
    pass


@dataclass(frozen=True)
class Worker:
    index: int
    name: str
    pid: int
    webui_port: int
    work_dir: Path
    log: Path


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    webui_port: int
    log: Path
    workers: list[Worker] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.port}"

    @property
    def status_url(self) -> str:
        return f"http://{self.host}:{self.webui_port}/json/"


def spark_class() -> Path:
    import pyspark

    path = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not path.exists():
        raise ClusterError(f"{path} not found: the pyspark distribution has no spark-class")
    return path


def worker_name(index: int) -> str:
    return f"spark-worker-{index}"


def _env(host: str) -> dict[str, str]:
    env = dict(os.environ)
    # Executors inherit the worker's environment: any Python they start must be this venv's.
    env["PYSPARK_PYTHON"] = sys.executable
    env["SPARK_LOCAL_IP"] = host
    # The daemons only route messages; their default 1 GB heap would be wasted on 2 cores.
    env.setdefault("SPARK_DAEMON_MEMORY", "256m")
    return env


def executor_conf(
    executors: int, *, cores: int = 1, memory: str = "512m", host: str = "127.0.0.1"
) -> dict[str, str]:
    """spark-submit conf that fits one executor per 1-core worker and keeps the driver on loopback.

    ``spark.cores.max`` caps the app at ``executors`` cores, so with fewer workers
    it keeps what is left instead of waiting; executor memory stays below a
    worker's, or no worker could host one.
    """
    return {
        "spark.cores.max": str(executors * cores),
        "spark.executor.cores": str(cores),
        "spark.executor.memory": memory,
        "spark.driver.host": host,
        "spark.driver.bindAddress": host,
    }


def master_status(cluster: Cluster, timeout: float = 5.0) -> dict[str, Any]:
    """The master's JSON status: workers (state ALIVE/DEAD), active and completed apps."""
    import urllib.request

    with urllib.request.urlopen(cluster.status_url, timeout=timeout) as resp:
        return json.loads(resp.read())


def alive_workers(cluster: Cluster) -> list[dict[str, Any]]:
    try:
        status = master_status(cluster)
    except OSError:
        return []
    return [w for w in status.get("workers", []) if w.get("state") == "ALIVE"]


def wait_for_workers(cluster: Cluster, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(alive_workers(cluster)) == count:
            return
        for info in [procs.read(MASTER), *(procs.read(w.name) for w in cluster.workers)]:
            if info is not None and not procs.alive(info):
                raise ClusterError(
                    f"{info.name} died on start; log {info.log}:\n{procs.tail(info.log)}"
                )
        time.sleep(0.5)
    raise ClusterError(
        f"the master at {cluster.status_url} has {len(alive_workers(cluster))} ALIVE workers "
        f"after {timeout:.0f}s, expected {count}; logs in {cluster.log.parent}"
    )


def _start_worker(
    cluster: Cluster, index: int, ui: int, binary: str, cores: int, memory: str, env: dict[str, str]
) -> Worker:
    """Worker ``index`` of ``cluster``, detached, with its own work dir and log."""
    s = settings()
    name = worker_name(index)
    work_dir = s.home / "spark" / name
    work_dir.mkdir(parents=True, exist_ok=True)
    log = s.log_dir / f"{name}.log"
    info = procs.start_detached(
        name,
        [
            binary,
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            cluster.host,
            "--cores",
            str(cores),
            "--memory",
            memory,
            "--webui-port",
            str(ui),
            "--work-dir",
            str(work_dir),
            cluster.master_url,
        ],
        log=log,
        env=env,
    )
    return Worker(index, name, info.pid, ui, work_dir, log)


def start(
    workers: int = 2,
    *,
    cores: int = 1,
    memory: str = "1g",
    host: str = "127.0.0.1",
    port: int | None = None,
    webui_port: int | None = None,
    worker_webui_ports: list[int] | None = None,
    timeout: float = 120.0,
) -> Cluster:
    """Start a master and ``workers`` workers (free ports unless given); wait until all are ALIVE."""
    s = settings()
    if procs.running(MASTER) is not None:
        raise ClusterError(f"a Spark master already runs from {s.home}; stop it first")
    port = port or procs.free_port()
    webui_port = webui_port or procs.free_port()
    ports = worker_webui_ports or [procs.free_port() for _ in range(workers)]
    if len(ports) != workers:
        raise ValueError(f"{workers} workers need {workers} web UI ports, got {len(ports)}")
    env = _env(host)
    binary = str(spark_class())
    master_log = s.log_dir / f"{MASTER}.log"
    procs.start_detached(
        MASTER,
        [
            binary,
            "org.apache.spark.deploy.master.Master",
            "--host",
            host,
            "--port",
            str(port),
            "--webui-port",
            str(webui_port),
        ],
        log=master_log,
        env=env,
    )
    cluster = Cluster(host, port, webui_port, master_log)
    started: list[Worker] = []
    try:
        for index, ui in enumerate(ports, start=1):
            started.append(_start_worker(cluster, index, ui, binary, cores, memory, env))
        cluster = Cluster(host, port, webui_port, master_log, started)
        wait_for_workers(cluster, workers, timeout)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def kill_worker(cluster: Cluster, index: int, timeout: float = 30.0) -> float:
    """SIGKILL worker ``index`` and its executors (one process group); returns when it is gone."""
    worker = next(w for w in cluster.workers if w.index == index)
    info = procs.read(worker.name)
    if info is None or not procs.alive(info):
        raise ClusterError(f"{worker.name} is not running")
    killed_at = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and procs.group_alive(info.pid):
        time.sleep(0.1)
    if procs.group_alive(info.pid):
        raise ClusterError(f"{worker.name}'s process group {info.pid} survived SIGKILL")
    procs.pid_file(worker.name).unlink(missing_ok=True)
    return killed_at


def stop(cluster: Cluster | None = None, timeout: float = 20.0) -> list[str]:
    """Stop the workers (their executors with them), then the master; the names stopped."""
    names = (
        [w.name for w in cluster.workers]
        if cluster is not None
        else sorted(p.stem for p in settings().run_dir.glob("spark-worker-*.pid"))
    )
    stopped = [n for n in [*names, MASTER] if procs.stop(n, timeout=timeout)]
    return stopped


def main(argv: list[str] | None = None) -> int:
    """``python -m riverdelta.embedded.spark_cluster start|stop``: a cluster for manual runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m riverdelta.embedded.spark_cluster")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--memory", default="1g")
    parser.add_argument("--port", type=int, default=7077)
    parser.add_argument("--webui-port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.action == "stop":
        print("stopped:", ", ".join(stop()) or "nothing")
        return 0
    cluster = start(
        args.workers,
        cores=args.cores,
        memory=args.memory,
        port=args.port,
        webui_port=args.webui_port,
    )
    print(f"{cluster.master_url} (status {cluster.status_url}), {len(cluster.workers)} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
