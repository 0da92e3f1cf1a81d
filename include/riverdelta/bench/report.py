"""The benchmark's results rendered: markdown, plots and docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from riverdelta.bench.common import DUPLICATE_RATE, LIVE_LOAD, POISON_RATE, SEED
from riverdelta.config.settings import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
MANUAL_START = "<!-- where-the-time-goes:start (hand-written, kept by make bench) -->"
MANUAL_END = "<!-- where-the-time-goes:end -->"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _increment_lines(inc: dict[str, Any] | None) -> list[str]:
    if not inc:
        return []
    p, s = inc["pandas"], inc["spark"]
    return [
        f"Increment of {inc['rows']:,} rows of `{inc['table']}` validated in a fresh process "
        f"(as an Airflow task): GX pandas over delta-rs {p['wall_seconds']} s wall, of which "
        f"{p['import_seconds']} s importing GX and {p['validate_seconds']} s validating; "
        f"GX Spark {s['wall_seconds']} s wall ({s['import_seconds']} s importing GX, "
        f"{s['validate_seconds']} s validating, the JVM start included); same verdict: "
        f"{p['success'] == s['success'] and p['rows'] == s['rows']}.",
        "",
    ]


def _freshness_lines(fr: dict[str, Any] | None) -> list[str]:
    if not fr:
        return []
    ing, val = fr["ingest"], fr["validated"]
    return [
        f"Validated freshness at {LIVE_LOAD:.0%} of the live maximum ({fr['input_rate']} "
        f"records/s for {fr['produced']:,} records), the stream deployed by its DAG and the "
        f"gate started by its asset watcher ({fr['publications']} publications of silver; "
        f"gate runs by type {fr['gate_runs']}), seconds:",
        "",
        _table(
            ["Kafka timestamp →", "p50", "p95", "max", "rows"],
            [
                [
                    "silver commit",
                    ing["p50_seconds"],
                    ing["p95_seconds"],
                    ing["max_seconds"],
                    fr["rows"],
                ],
                [
                    "silver version published",
                    val["p50_seconds"],
                    val["p95_seconds"],
                    val["max_seconds"],
                    fr["rows"] - fr["rows_unpublished"],
                ],
            ],
        ),
        "",
    ]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio_rows(results: dict[str, Any]) -> list[list[Any]]:
    return [
        ["Riverdelta replay ÷ raw consumer (rows/s)", results["ratios"]["ingest_vs_raw_consumer"]],
        ["Riverdelta replay ÷ naive Spark (rows/s)", results["ratios"]["ingest_vs_naive_spark"]],
        ["GX validation ÷ one Spark scan (s)", results["ratios"]["validation_vs_scan"]],
        ["backfill (replay) ÷ live maximum (rows/s)", results["ratios"]["backfill_vs_live"]],
    ]


def _target_rows(results: dict[str, Any]) -> list[list[Any]]:
    return [
        [t["label"], t["target"], t["value"], "met" if t["met"] else "**missed**"]
        for t in results["targets"]
    ]


def _absolute_rows(ph: dict[str, Any]) -> list[list[Any]]:
    live = ph["live"]
    return [
        ["produce (generator → Kafka)", ph["produce"]["sent"], ph["produce"]["rate"], "records/s"],
        [
            "raw confluent-kafka consumer",
            ph["raw_consumer"]["rows"],
            ph["raw_consumer"]["rows_per_second"],
            f"rows/s ({ph['raw_consumer']['mb_per_second']} MB/s)",
        ],
        [
            "naive Spark (Kafka → Delta, AvailableNow)",
            ph["naive_spark"]["rows"],
            ph["naive_spark"]["rows_per_second"],
            "rows/s",
        ],
        [
            "Riverdelta replay (AvailableNow)",
            ph["replay"]["rows"],
            ph["replay"]["rows_per_second"],
            "rows/s",
        ],
        [
            f"Riverdelta live maximum (trigger {ph['live_max']['trigger']})",
            ph["live_max"]["rows"],
            ph["live_max"]["rows_per_second"],
            "rows/s",
        ],
        [
            f"live at {LIVE_LOAD:.0%} of replay rate: input",
            live["produced"],
            live["input_rate"],
            "records/s in",
        ],
        [
            "live at that load: processed per second of batch time",
            sum(b["records"] for b in live.get("profile", {}).get("batches", [])),
            live.get("sustained_rows_per_second"),
            "rows/s",
        ],
    ]


def _latency_table(live: dict[str, Any]) -> str:
    keys = (
        "p50_seconds",
        "p95_seconds",
        "p99_seconds",
        "max_seconds",
        "final_lag_records",
        "final_lag_seconds",
        "drain_seconds",
        "kept_up",
    )
    return _table(
        ["p50", "p95", "p99", "max", "lag at stop (records)", "lag (s)", "drain (s)", "kept up"],
        [[live[k] for k in keys]],
    )


def _headline_lines(results: dict[str, Any], h: str) -> list[str]:
    return [
        f"{h} Riverdelta benchmark — {results['started_at']}",
        "",
        f"{results['config']['records']:,} transactions "
        f"({POISON_RATE:.0%} poison, {DUPLICATE_RATE:.0%} duplicates, seed {SEED}); "
        f"live run {results['config']['live_seconds']:.0f} s"
        + (" (smoke sizes)" if results["config"]["smoke"] else "")
        + ".",
        "",
        f"{h}# Ratios",
        "",
        _table(["ratio", "value"], _ratio_rows(results)),
        "",
        f"{h}# Targets (reported, never asserted)",
        "",
        _table(["target", "wanted", "measured", ""], _target_rows(results)),
        "",
    ]


def _figure_lines(results: dict[str, Any], h: str) -> list[str]:
    ph = results["phases"]
    val = ph["validation"]
    return [
        f"{h}# Absolute figures",
        "",
        _table(["what", "records", "rate", "unit"], _absolute_rows(ph)),
        "",
        f"Latency at {LIVE_LOAD:.0%} load (Kafka timestamp → silver commit), seconds:",
        "",
        _latency_table(ph["live"]),
        "",
        f"Validation of `{val['table']}` ({val['rows']:,} rows): full GX validation "
        f"{val['validation_seconds']} s (GX checkpoint alone {val['gx_seconds']} s), one Spark "
        f"scan of the same metrics {val['scan_seconds']} s.",
        "",
        *_increment_lines(ph.get("increment_validation")),
        *_freshness_lines(ph.get("freshness")),
        "DAG file parse (DagBag in a fresh interpreter, Airflow already imported):",
        "",
        _table(
            ["file", "parse (s)", "importing Airflow first (s)", "DAGs"],
            [
                [f, d["parse_seconds"], d["airflow_import_seconds"], d["dags"]]
                for f, d in ph["dag_parse"]["files"].items()
            ],
        ),
        "",
    ]


def _machine_lines(results: dict[str, Any], h: str) -> list[str]:
    m, mem = results["machine"], results.get("peak_memory", {})
    loads = [
        [name, p["load_average"]["before"], p["load_average"]["after"]]
        for name, p in results["phases"].items()
    ]
    return [
        f"Peak RSS of the stack: {_fmt(mem.get('total_mb'))} MB (broker "
        f"{_fmt(mem.get('broker_mb'))}, Spark driver JVM {_fmt(mem.get('spark_mb'))}, "
        f"Python {_fmt(mem.get('python_mb'))}) at the sample with the largest sum.",
        "",
        f"{h}# Machine",
        "",
        f"{m['cores']} cores ({m['cpu']}), {m['ram_gb']} GB RAM, {m['os']}. Load average "
        f"(1/5/15 min) at start {results['load_average']['start']}, at end "
        f"{results['load_average']['end']}; other jobs may share the machine.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        _table(["phase", "load average before", "after"], loads),
        "",
    ]


def render_markdown(results: dict[str, Any], *, heading: str = "#") -> str:
    parts = [
        *_headline_lines(results, heading),
        *_figure_lines(results, heading),
        *_machine_lines(results, heading),
    ]
    return "\n".join(parts)


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ph = results["phases"]
    bars = [
        ("raw consumer", ph["raw_consumer"]["rows_per_second"]),
        ("naive Spark", ph["naive_spark"]["rows_per_second"]),
        ("Riverdelta replay", ph["replay"]["rows_per_second"]),
        ("Riverdelta live max", ph["live_max"]["rows_per_second"]),
        (f"live input ({LIVE_LOAD:.0%})", ph["live"]["input_rate"]),
        ("live processed", ph["live"].get("sustained_rows_per_second")),
    ]
    bars = [(label, value) for label, value in bars if value]  # log scale: no zero bars
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="#3b7dd8")
    ax.set_xscale("log")
    ax.set_xlabel("rows / s (log scale)")
    for i, (_, v) in enumerate(bars[::-1]):
        ax.text(v, i, f" {v:,.0f}", va="center")
    ax.set_title(f"Throughput, {results['config']['records']:,} transactions")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    hist = ph["live"]["histogram"]
    total = sum(n for _, n in hist) or 1
    xs, ys, seen = [], [], 0
    for value, n in hist:
        seen += n
        xs.append(value)
        ys.append(seen / total)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.step(xs, ys, where="post")
    for q in ("p50", "p95", "p99"):
        v = ph["live"][f"{q}_seconds"]
        if v is not None:
            ax.axvline(v, ls="--", lw=0.8, color="grey")
            ax.text(v, 0.02, f" {q} {v:.1f}s", rotation=90, va="bottom", fontsize=8)
    ax.set_xlabel("seconds from Kafka timestamp to silver commit")
    ax.set_ylabel("fraction of rows")
    ax.set_title(
        f"Live latency CDF at {ph['live']['input_rate']:,.0f} records/s "
        f"(trigger {ph['live']['trigger']})"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)


def manual_section(text: str | None) -> str:
    """The hand-written section between the markers, markers included."""
    if text and MANUAL_START in text and MANUAL_END in text:
        start = text.index(MANUAL_START)
        return text[start : text.index(MANUAL_END, start) + len(MANUAL_END)]
    return f"{MANUAL_START}\n## Where the time goes\n\n(not written yet)\n{MANUAL_END}"


METHOD = """\
## Method

`make bench` (`python -m riverdelta.bench.run --write-docs`) starts its own Kafka broker
(KRaft, own runtime home under the output folder, free ports) and one Spark session
(`riverdelta.launch.spark.get_spark`, `local[2]`, 1 GB driver), and stops both at the end,
even on failure. On one dataset — `riverdelta.embedded.generator` transactions with 1 % poison
and 1 % duplicates, fixed seed, to a topic with the registry's partitions — it measures,
in this order,
after an untimed warm-up (the naive and replay paths once on 5,000 records, so that
class loading and code generation are not charged to whichever phase runs first):

- **raw consumer** (the limit): a confluent-kafka consumer assigned to every partition
  from the beginning, `consume(10 000)` until the end offsets read at start; rows/s
  and MB/s of key + value bytes. Nothing is decoded or written.
- **naive Spark**: `readStream.format("kafka")` → `select("value")` → Delta append,
  `Trigger.AvailableNow`, fresh checkpoint; wall time from `start()` to termination.
- **Riverdelta replay**: `job.make_job(spec, IngestMode.REPLAY)` + `start_query(...,
  starting="earliest")` (AvailableNow, no `maxOffsetsPerTrigger`, as `riverdelta run
  --mode replay` defaults): bronze, silver, quarantine, gold and `_ops/ingest_batches`;
  wall time from `start_query` to termination, start-up included. Bronze must hold
  exactly the records produced.
- **Riverdelta live maximum**: the live query (`mode="live"`, the registry's
  processing-time trigger, no `maxOffsetsPerTrigger`) started on the same full
  backlog with a fresh checkpoint and tables; rows / seconds from `start_query` until
  the checkpoint's last committed batch covers the topic's end offsets. *backfill ÷
  live* is the replay rate over this rate.
- **Live latency**: a fresh topic and tables, the live query running, then a producer
  thread (`generator.produce(rate=…)`) at 60 % of the measured replay rate for the
  live duration. A row is *visible* when the Delta version of silver that added it is
  committed: the commit's `commitInfo.timestamp` in `_delta_log`, found through the
  `txn` action (appId = the job's app id, version = the batch id) every ingest write
  carries. Latency = that commit time - the record's Kafka timestamp (producer
  CreateTime), for every silver row, bucketed at 10 ms; p50/p95/p99 from the buckets.
  Publication by the quality gate (analysts' reads) comes later and is not included.
  *Final lag* = topic end offsets - the last committed batch's end offsets when the
  producer stops; *kept up* = the query then drains that lag and it is at most two
  trigger intervals of input.
- **Validation vs scan**: `quality.benchmark.time_validation_vs_scan("transactions_silver")`:
  a full validation (GX checkpoint, history row, Data Docs, publication) vs one Spark
  aggregation computing the suite's metrics on the same pinned version.
- **DAG parse**: each file in `dags/` through `DagBag` in a fresh interpreter with
  the Airflow environment, timed after `airflow` is imported (the DAG processor has
  it loaded already); the import time is reported beside it.
- **Peak memory**: RSS of the broker JVM + the Spark driver JVM + the Python process,
  sampled every 0.5 s with psutil; the largest sum.

Every phase records the load average before and after: other jobs share this machine,
so compare the ratios (measured side by side) rather than the absolute rates. Targets
are reported as met / missed, never asserted. Each run's results.json, results.md,
throughput.png and latency_cdf.png are in `results/bench-<timestamp>/` (not committed).
"""


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def write_docs(results: dict[str, Any], path: Path) -> None:
    existing = path.read_text() if path.exists() else None
    body = render_markdown(results).split("\n", 1)[1]
    text = "\n".join(
        [
            "# Benchmarks",
            "",
            "Regenerated by `make bench` (except the hand-written section between the "
            "markers). Latest run: "
            f"{results['started_at']}, results in `{_shown(Path(results['out']))}/`.",
            body.rstrip(),
            "",
            METHOD,
            manual_section(existing),
            "",
        ]
    )
    path.write_text(text)
