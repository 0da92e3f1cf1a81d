"""`make bench-cluster`: the replay on a 2-worker Spark standalone cluster vs ``local[2]``.

One run starts its own broker (own runtime home under the output folder, free
ports), produces N generated transactions once, then replays the topic with the
ingest driver (``spark_apps/ingest.py --mode replay``: ``Trigger.AvailableNow``,
launched by spark-submit exactly as ``riverdelta run`` does) twice, each with
fresh tables and checkpoint: on ``local[2]``, and on a standalone master with 2
workers (1 core, 1 GB each; one 512 MB executor per worker) started here on
loopback. Both share this machine, so the comparison is of the same cores run
two ways, not of more hardware.

Per run: wall time from spark-submit to its exit (start-up and shutdown
included), and the query's own time from the checkpoint (``offsets/0`` written
when the first batch is planned, to the last ``commits/<n>``: start-up
excluded); bronze must hold exactly N rows and the per-batch counts must
reconcile. The load average is sampled every 2 s. Results go to
``<out>/bench-cluster-<timestamp>/`` (results.json, results.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from riverdelta.config.settings import PROJECT_ROOT, settings

STREAM = "transactions"
WORKERS = 2


class LoadSampler(threading.Thread):
    """1-minute load average every ``interval`` seconds, with the phase it was taken in."""

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__(name="load-sampler", daemon=True)
        self.interval = interval
        self.phase = "idle"
        self.samples: list[tuple[str, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.samples.append((self.phase, os.getloadavg()[0]))

    def during(self, phase: str) -> dict[str, float | None]:
        values = [v for p, v in self.samples if p == phase]
        if not values:
            return {"mean": None, "max": None}
        return {"mean": round(sum(values) / len(values), 2), "max": round(max(values), 2)}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


@contextlib.contextmanager
def spark_master(master: str) -> Iterator[None]:
    """Point settings and the ``spark_default`` connection at ``master`` for the block."""
    from riverdelta.airflow.env import airflow_env

    names = ("RIVERDELTA_SPARK_MASTER", "AIRFLOW_CONN_SPARK_DEFAULT")
    saved = {n: os.environ.get(n) for n in names}
    os.environ["RIVERDELTA_SPARK_MASTER"] = master
    settings.cache_clear()
    os.environ["AIRFLOW_CONN_SPARK_DEFAULT"] = airflow_env()["AIRFLOW_CONN_SPARK_DEFAULT"]
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings.cache_clear()


def _bronze_rows(path: str) -> int:
    from deltalake import DeltaTable

    return DeltaTable(path).to_pyarrow_table(columns=["offset"]).num_rows


def _batches(path: str, txn_app_id: str) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    return [r for r in rows if r["app_id"] == txn_app_id]


def _query_window(checkpoint: Path) -> tuple[float, float]:
    """(first batch planned, last batch committed) as epoch seconds, from the checkpoint files."""
    commits = [p for p in (checkpoint / "commits").iterdir() if p.name.isdigit()]
    last = max(commits, key=lambda p: int(p.name))
    return (checkpoint / "offsets" / "0").stat().st_mtime, last.stat().st_mtime


def replay(
    label: str, master: str, root: Path, expected: int, conf: dict[str, str] | None
) -> dict[str, Any]:
    """One replay of the whole topic by spark-submit on ``master``; timings and counts."""
    from riverdelta.config.registry import load_registry
    from riverdelta.launch.submit import build_command, ingest_args, submit_env
    from riverdelta.stream.job import IngestMode, make_job

    spec = load_registry().get(STREAM)
    checkpoint = root / label / "_checkpoint"
    tables = root / label / "tables"
    with spark_master(master):
        # Claimed here so the per-batch rows can be found by the job's app id afterwards.
        job = make_job(spec, IngestMode.REPLAY, checkpoint=str(checkpoint), tables_root=str(tables))
        args = ingest_args(
            STREAM,
            IngestMode.REPLAY,
            starting="earliest",
            checkpoint=str(checkpoint),
            tables_root=str(tables),
        )
        cmd = build_command(args, name=f"riverdelta-bench-{label}", conf=conf)
        env = submit_env()
    log = settings().log_dir / f"bench-cluster-{label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    submitted = time.time()
    with log.open("ab") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=3600, check=False
        )
    ended = time.time()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{label}: spark-submit exited {proc.returncode}; {log}:\n{tail}")
    bronze = _bronze_rows(job.tables["bronze"])
    if bronze != expected:
        raise RuntimeError(f"{label}: bronze holds {bronze} rows, expected {expected}")
    batches = _batches(job.batches_path, job.txn_app_id)
    reconciles = (
        all(
            b["records_in"] + (b["resolved"] or 0)
            == b["silver"] + b["duplicates"] + b["quarantined"]
            for b in batches
        )
        and sum(b["bronze"] for b in batches) == expected
    )
    if not reconciles:
        raise RuntimeError(f"{label}: the per-batch counts do not reconcile: {batches}")
    first, last = _query_window(checkpoint)
    wall, query = ended - submitted, last - first
    return {
        "master": master,
        "conf": conf or {},
        "rows": bronze,
        "batches": len(batches),
        "wall_seconds": round(wall, 2),
        "rows_per_second_wall": round(bronze / wall, 1),
        "startup_seconds": round(first - submitted, 2),
        "query_seconds": round(query, 2),
        "rows_per_second_query": round(bronze / query, 1),
        "shutdown_seconds": round(ended - last, 2),
        "log": str(log),
    }


def run(records: int, out_root: Path, order: list[str]) -> dict[str, Any]:
    from riverdelta.airflow.env import ensure_airflow_env
    from riverdelta.bench.host import isolated_home, machine
    from riverdelta.bench.measure import produce_dataset
    from riverdelta.config.registry import load_registry
    from riverdelta.embedded import kafka_broker, spark_cluster

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (out_root / f"bench-cluster-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=False)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "records": records,
        "order": order,
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "runs": {},
        "out": str(out),
    }
    sampler = LoadSampler()
    sampler.start()
    with isolated_home(out / "home"):
        ensure_airflow_env()
        lake = Path(settings().lake)
        cluster = None
        try:
            kafka_broker.start()
            sampler.phase = "produce"
            spec = load_registry().get(STREAM)
            results["produce"] = produce_dataset(spec, records, settings().kafka_bootstrap)
            for label in order:
                conf = None
                master = "local[2]"
                if label == "cluster":
                    sampler.phase = "cluster-start"
                    t = time.monotonic()
                    cluster = spark_cluster.start(WORKERS, cores=1, memory="1g")
                    results["cluster_start_seconds"] = round(time.monotonic() - t, 2)
                    master, conf = cluster.master_url, spark_cluster.executor_conf(WORKERS)
                print(f"bench-cluster: {label} ({master}) ...", file=sys.stderr, flush=True)
                before = [round(x, 2) for x in os.getloadavg()]
                sampler.phase = label
                value = replay(label, master, lake / "bench-cluster", records, conf)
                sampler.phase = "idle"
                value["load_average"] = {
                    "before": before,
                    "during_1min": sampler.during(label),
                    "after": [round(x, 2) for x in os.getloadavg()],
                }
                if label == "cluster" and cluster is not None:
                    # Executors ran on the workers: each keeps the app's dir in its work dir.
                    value["workers_with_executor_dirs"] = sum(
                        1 for w in cluster.workers if any(w.work_dir.glob("app-*/*/stderr"))
                    )
                    spark_cluster.stop(cluster)
                    cluster = None
                results["runs"][label] = value
                print(f"bench-cluster: {label}: {_brief(value)}", file=sys.stderr, flush=True)
        except BaseException as exc:
            results["error"] = repr(exc)
            (out / "results.partial.json").write_text(json.dumps(results, indent=2, default=str))
            raise
        finally:
            sampler.stop()
            if cluster is not None:
                spark_cluster.stop(cluster)
            kafka_broker.stop()
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    runs = results["runs"]
    if "local" in runs and "cluster" in runs:
        results["cluster_vs_local"] = {
            k: round(runs["cluster"][k] / runs["local"][k], 3)
            for k in ("rows_per_second_wall", "rows_per_second_query")
        }
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(render_markdown(results))
    return results


def _brief(value: dict[str, Any]) -> str:
    keys = (
        "rows",
        "wall_seconds",
        "rows_per_second_wall",
        "query_seconds",
        "rows_per_second_query",
    )
    return ", ".join(f"{k}={value[k]}" for k in keys)


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Spark standalone (2 workers) vs local[2]: {results['records']:,} records",
        "",
        f"Run {results['started_at']}; load average at start {results['load_average_start']}, "
        f"at end {results.get('load_average_end')}; cluster start-up "
        f"{results.get('cluster_start_seconds', '-')} s (not in the figures).",
        "",
        "| run | master | batches | wall s | rows/s (wall) | start-up s | query s | "
        "rows/s (query) | load 1-min during (mean/max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["runs"].items():
        during = r["load_average"]["during_1min"]
        lines.append(
            f"| {label} | `{r['master']}` | {r['batches']} | {r['wall_seconds']} | "
            f"{r['rows_per_second_wall']:,.0f} | {r['startup_seconds']} | {r['query_seconds']} | "
            f"{r['rows_per_second_query']:,.0f} | {during['mean']}/{during['max']} |"
        )
    ratio = results.get("cluster_vs_local")
    if ratio:
        lines += [
            "",
            f"cluster ÷ local[2]: {ratio['rows_per_second_wall']} (wall), "
            f"{ratio['rows_per_second_query']} (query only).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m riverdelta.bench.cluster",
        description="Replay throughput on a 2-worker Spark standalone cluster vs local[2].",
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument(
        "--order", default="local,cluster", help="which runs, in which order (local,cluster)"
    )
    args = parser.parse_args(argv)
    order = [o.strip() for o in args.order.split(",") if o.strip()]
    if not order or any(o not in ("local", "cluster") for o in order) or args.records < 100:
        parser.error("--order takes local and/or cluster; --records at least 100")

    def terminated(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through run()'s clean-up: cluster, broker

    signal.signal(signal.SIGTERM, terminated)
    results = run(args.records, args.out, order)
    print(render_markdown(results))
    print(f"results: {results['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
