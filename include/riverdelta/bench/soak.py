"""``make soak``: the embedded stack left running, measured over time.

Both streams deployed through their DAGs, fed at a steady rate for ``--minutes``,
with ``maintain_<stream>`` on a short schedule (``--maintain-every`` minutes) and
the quality gates as deployed. Every minute it samples, per table, the files in
the snapshot (with maintenance) against the files ever added (what the table
would hold without it) and the log's commits; per stream the lag, the last batch
duration and the driver's memory; and the validations' durations. At the end it
drains the streams and reconciles each one from the tables themselves (bronze =
silver + quarantine + duplicates, per ``_ops/ingest_batches``), writes
``results.json`` and a plot beside it, and with ``--write-docs`` copies both to
``docs/soak.md`` / ``docs/soak.png``.

Not part of ``make test``: it runs for as long as it is asked to.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from riverdelta.config.settings import PROJECT_ROOT, settings

DOCS = PROJECT_ROOT / "docs"


def _registry(out: Path, maintain_every: int) -> Path:
    data = yaml.safe_load(settings().streams_file.read_text())
    for name, stream in data["streams"].items():
        maint = dict(stream.get("maintenance") or {})
        maint["schedule"] = f"*/{maintain_every} * * * *"
        stream["maintenance"] = maint
        data["streams"][name] = stream
    path = out / "streams.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def table_files(path: str) -> dict[str, int] | None:
    """The version, files in the current snapshot, and files ever added with data."""
    from riverdelta.storage import roots as storage

    if not storage.is_delta_table(path):
        return None
    from riverdelta.bench.freshness import version_commits

    dt = storage.delta_table(path)
    added = sum(len(files) for _, files in version_commits(path).values())
    return {
        "version": dt.version(),
        "files_now": len(dt.get_add_actions(flatten=True)),
        "files_without_maintenance": added,
    }


def _driver_mb(pid: int | None) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return round(sum(p.memory_info().rss for p in procs) / 2**20, 1)
    except (psutil.Error, TypeError, ValueError):
        return None


def _last_progress(stream: str) -> dict[str, Any]:
    """What the driver's listener last wrote about a batch (duration, rows)."""
    from riverdelta.ops.status import progress_file

    try:
        return json.loads(progress_file(stream).read_text())
    except (OSError, ValueError):
        return {}


def sample(streams: list[str], since: datetime) -> dict[str, Any]:
    import os

    from riverdelta.config.registry import load_registry
    from riverdelta.ops.status import stream_status
    from riverdelta.quality.history import validation_history
    from riverdelta.storage.lake import TableSet

    # The machine is shared: every sample carries the load it was taken under.
    out: dict[str, Any] = {
        "at": time.time(),
        "load_1m": round(os.getloadavg()[0], 2),
        "streams": {},
        "tables": {},
    }
    for name in streams:
        spec = load_registry().get(name)
        report = stream_status(name)
        progress = _last_progress(name)
        out["streams"][name] = {
            "lag_records": report.get("lag_records"),
            "batch_duration_ms": progress.get("batch_duration_ms"),
            "driver_mb": _driver_mb(report.get("pid")),
            "actual": report.get("actual"),
        }
        for layer, path in TableSet.for_stream(spec).paths.items():
            out["tables"][spec.table_names()[layer]] = table_files(path)
    runs = validation_history(since=since)
    out["validation_seconds"] = [round(r["duration"], 3) for r in runs]
    return out


def reconcile(stream: str) -> dict[str, Any]:
    """The stream's counts from its tables and from ``_ops/ingest_batches``."""
    from riverdelta.config.registry import load_registry
    from riverdelta.quality.engine import arrow_table
    from riverdelta.storage import roots as storage
    from riverdelta.storage.lake import TableSet, ops_path

    spec = load_registry().get(stream)
    paths = TableSet.for_stream(spec)
    rows = {
        layer: storage.delta_table(paths[layer]).to_pyarrow_dataset().count_rows()
        for layer in ("bronze", "silver", "quarantine")
    }
    import pyarrow.compute as pc

    batches = arrow_table(ops_path("ingest_batches"), None, None, pc.field("stream") == stream)
    sums = {c: pc.sum(batches.column(c)).as_py() or 0 for c in ("bronze", "silver", "duplicates")}
    sums["quarantined"] = pc.sum(batches.column("quarantined")).as_py() or 0
    balanced = (
        rows["bronze"] == sums["bronze"]
        and rows["silver"] == sums["silver"]
        and rows["quarantine"] == sums["quarantined"]
        and sums["bronze"] == sums["silver"] + sums["quarantined"] + sums["duplicates"]
    )
    return {"tables": rows, "ingest_batches": sums, "balanced": balanced}


def run(minutes: float, rate: float, maintain_every: int, out: Path) -> dict[str, Any]:
    from riverdelta.airflow import api as airflow_api
    from riverdelta.airflow import dag_ids
    from riverdelta.bench import host
    from riverdelta.config.registry import load_registry
    from riverdelta.embedded import airflow_stack, kafka_broker
    from riverdelta.embedded.demo import start_producers
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops import control

    home = out / "home"
    with host.isolated_home(home):
        import os

        os.environ["RIVERDELTA_STREAMS"] = str(_registry(out, maintain_every))
        settings.cache_clear()
        streams = load_registry().names
        started = datetime.now(UTC)
        samples: list[dict[str, Any]] = []
        kafka_broker.start()
        try:
            registry = load_registry()
            kafka_client.create_topics(registry.topics(), registry.topic_configs())
            airflow_stack.start()
            api = airflow_api.ApiClient()
            for name in streams:
                dag_id = dag_ids.stream(name)
                api.wait_for_dag(dag_id)
                run_id = api.trigger(dag_id, {"action": "deploy"})
                if api.wait_for_run(dag_id, run_id) != "success":
                    raise RuntimeError(f"soak: {dag_id} deploy failed")
            start_producers(streams, count=int(rate * minutes * 60), rate=rate)
            deadline = time.monotonic() + minutes * 60
            while time.monotonic() < deadline:
                time.sleep(60)
                samples.append(sample(streams, started))
                print(f"soak: {_line(samples[-1])}", file=sys.stderr, flush=True)
            bench_wait_drained(streams)
            final = {name: reconcile(name) for name in streams}
        finally:
            for name in streams:
                try:
                    control.stop(name, actor="soak")
                except Exception as exc:  # keep stopping the rest
                    print(f"soak: stopping {name}: {exc}", file=sys.stderr)
            airflow_stack.stop()
            kafka_broker.stop()
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "minutes": minutes,
        "rate_per_stream": rate,
        "maintain_every_minutes": maintain_every,
        "machine": host.machine(),
        "samples": samples,
        "reconciliation": final,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, out / "soak.png")
    return results


def bench_wait_drained(streams: list[str], timeout: float = 600.0) -> None:
    from riverdelta.launch import procs
    from riverdelta.ops.status import stream_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        producing = any(procs.running(f"producer-{n}") for n in streams)
        if not producing and all(stream_status(n)["lag_records"] == 0 for n in streams):
            time.sleep(15)  # the last batch's gold and ingest record
            return
        time.sleep(5)
    raise RuntimeError(f"soak: streams not drained within {timeout:.0f} s")


def _line(s: dict[str, Any]) -> str:
    streams = ", ".join(
        f"{n}: lag {v['lag_records']} batch {v['batch_duration_ms']} ms driver {v['driver_mb']} MB"
        for n, v in s["streams"].items()
    )
    files = ", ".join(
        f"{t}: {v['files_now']}/{v['files_without_maintenance']}"
        for t, v in s["tables"].items()
        if v
    )
    return f"load {s.get('load_1m')}; {streams}; files now/without maintenance {files}"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    samples = results["samples"]
    if not samples:
        return
    t0 = samples[0]["at"]
    minutes = [(s["at"] - t0) / 60 + 1 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    for table in samples[-1]["tables"]:
        if table.endswith(("_silver", "_bronze")):
            now = [(s["tables"].get(table) or {}).get("files_now") for s in samples]
            never = [
                (s["tables"].get(table) or {}).get("files_without_maintenance") for s in samples
            ]
            axes[0].plot(minutes, now, label=f"{table} (maintained)")
            axes[0].plot(minutes, never, linestyle="--", label=f"{table} (without)")
    axes[0].set_ylabel("files in table")
    axes[0].legend(fontsize=7)
    for name in samples[-1]["streams"]:
        axes[1].plot(
            minutes, [s["streams"][name]["batch_duration_ms"] for s in samples], label=name
        )
        axes[2].plot(minutes, [s["streams"][name]["driver_mb"] for s in samples], label=name)
    axes[1].set_ylabel("batch duration (ms)")
    axes[2].set_ylabel("driver RSS (MB)")
    for ax in axes[1:3]:
        ax.legend(fontsize=7)
    axes[3].plot(minutes, [s.get("load_1m") for s in samples], color="grey")
    axes[3].set_ylabel("load average (1 min, 2 cores)")
    axes[3].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m riverdelta.bench.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=50.0, help="events per second per stream")
    p.add_argument(
        "--maintain-every", type=int, default=10, help="minutes between maintenance runs"
    )
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "results")
    p.add_argument("--write-docs", action="store_true", help="copy the plot and figures to docs/")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or not 1 <= args.maintain_every <= 59:
        p.error("--minutes and --rate must be positive, --maintain-every 1..59")
    out = (args.out / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}").resolve()
    out.mkdir(parents=True)
    results = run(args.minutes, args.rate, args.maintain_every, out)
    last = results["samples"][-1] if results["samples"] else {}
    print(json.dumps({"reconciliation": results["reconciliation"], "last": last}, indent=2))
    if args.write_docs and (out / "soak.png").exists():
        shutil.copy(out / "soak.png", DOCS / "soak.png")
    print(f"results: {out}")
    return 0 if all(r["balanced"] for r in results["reconciliation"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
