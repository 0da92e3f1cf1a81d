"""`make bench`: Riverdelta against the limits of this machine, measured side by side.

One run starts its own broker (own runtime home under the output folder, free
ports), produces one fixed dataset, and times on that same data:

- the limit: a raw confluent-kafka consumer reading the whole topic;
- a naive baseline: plain Spark Kafka source -> Delta append of the raw value
  (``Trigger.AvailableNow``);
- Riverdelta's replay (``job.make_job(..., IngestMode.REPLAY)`` + ``start_query``:
  bronze, silver, quarantine, gold and the per-batch counts);
- the live maximum: the live query (the registry's processing-time trigger)
  started on the same backlog, timed until its last committed batch covers the
  topic's end offsets;
- live at a fraction of the replay rate: a producer at a fixed rate for a fixed
  time, latency from the Kafka record timestamp to the Delta commit that made
  the row visible in silver, and the lag left when the producer stops;
- a full GX validation of silver vs one Spark pass computing the same metrics;
- each DAG file's parse time in a fresh interpreter, and the stack's peak RSS.

Throughputs are wall-clock: records / (seconds from starting the reader or
query to the moment every record is committed), start-up included, because
that is what an operator waits for. Targets are reported, never asserted.

Results go to ``<out>/bench-<timestamp>/`` (results.json, results.md, PNGs);
``--write-docs`` also regenerates docs/benchmarks.md, keeping the hand-written
section between the ``where-the-time-goes`` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riverdelta.bench.common import (
    DUPLICATE_RATE,
    LIVE_LOAD,
    POISON_RATE,
    SEED,
    STREAM,
    load_average,
    now,
)
from riverdelta.bench.growth import table_growth
from riverdelta.bench.host import MemorySampler, isolated_home, machine
from riverdelta.bench.latency import live_latency
from riverdelta.bench.measure import (
    dag_parse_times,
    increment_validation,
    live_maximum,
    naive_spark,
    produce_dataset,
    raw_consumer,
    replay,
    validation,
    warmup,
)
from riverdelta.bench.profiler import BatchProfiler
from riverdelta.bench.report import DOCS, plot, render_markdown, write_docs
from riverdelta.bench.targets import evaluate
from riverdelta.config.settings import PROJECT_ROOT, Settings, settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from riverdelta.config.registry import StreamSpec


@dataclasses.dataclass(frozen=True)
class Config:
    records: int = 1_000_000
    live_seconds: float = 120.0
    out: Path = PROJECT_ROOT / "results"
    smoke: bool = False
    write_docs: bool = False
    warmup: bool = True
    drain_timeout: float = 600.0


@dataclasses.dataclass
class _Phases:
    """Runs one phase at a time, recording its figures, duration and load average."""

    found: dict[str, Any]

    def __call__(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        load_before, t = load_average(), now()
        value = fn()
        value["phase_seconds"] = round(now() - t, 3)
        value["load_average"] = {"before": load_before, "after": load_average()}
        self.found[name] = value
        print(f"bench: {name}: {_brief(value)}", file=sys.stderr, flush=True)
        return value


def run(cfg: Config) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (cfg.out / f"bench-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=False)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "records": cfg.records,
            "live_seconds": cfg.live_seconds,
            "live_load": LIVE_LOAD,
            "poison_rate": POISON_RATE,
            "duplicate_rate": DUPLICATE_RATE,
            "seed": SEED,
            "smoke": cfg.smoke,
            "warmup": cfg.warmup,
        },
        "machine": machine(),
        "load_average": {"start": load_average()},
        "phases": {},
        "out": str(out),
    }
    with isolated_home(out / "home"):
        _measure(cfg, results, out)
    results["load_average"]["end"] = load_average()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    evaluate(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(render_markdown(results))
    plot(results, out)
    if cfg.write_docs:
        write_docs(results, DOCS)
    return results


def _measure(cfg: Config, results: dict[str, Any], out: Path) -> None:
    """Every phase against the run's own broker and one Spark session, both stopped after."""
    from riverdelta.config.registry import load_registry
    from riverdelta.embedded import kafka_broker

    s = settings()
    spec = load_registry().get(STREAM)
    spark = sampler = None
    own_spark = False
    try:
        sampler = MemorySampler(kafka_broker.start().pid)
        sampler.start()
        spark, own_spark = _spark()
        phase = _Phases(results["phases"])
        _throughput_phases(cfg, phase, spark, spec, s)
        _later_phases(cfg, phase, spark, spec, s, out)
    except BaseException as exc:
        # What was measured before the failure is still worth reading.
        results["error"] = repr(exc)
        (out / "results.partial.json").write_text(json.dumps(results, indent=2, default=str))
        raise
    finally:
        if sampler is not None:
            results["peak_memory"] = sampler.stop()
        if spark is not None:
            for query in spark.streams.active:
                with contextlib.suppress(Exception):
                    query.stop()
            if own_spark:
                spark.stop()
        kafka_broker.stop()


def _throughput_phases(
    cfg: Config, phase: _Phases, spark: SparkSession, spec: StreamSpec, s: Settings
) -> None:
    """Warm-up, the dataset, then each reader of it: raw, naive, replay, live maximum."""
    lake = Path(s.lake)
    if cfg.warmup:
        phase("warmup", lambda: warmup(spark, spec, lake / "bench-warmup"))
    phase("produce", lambda: produce_dataset(spec, cfg.records, s.kafka_bootstrap))
    phase("raw_consumer", lambda: raw_consumer(spec.topic, s.kafka_bootstrap))
    phase("naive_spark", lambda: naive_spark(spark, spec.topic, lake, cfg.records))
    with BatchProfiler(spark) as prof:
        phase("replay", lambda: replay(spark, spec, lake, cfg.records, default_tables=True))
    phase.found["replay"]["profile"] = prof.report()
    phase(
        "live_max",
        lambda: live_maximum(spark, spec, lake / "bench-live-max", cfg.records, cfg.drain_timeout),
    )


def _later_phases(
    cfg: Config, phase: _Phases, spark: SparkSession, spec: StreamSpec, s: Settings, out: Path
) -> None:
    """Live under load, table growth, validation, DAG parse and (full runs) freshness."""
    lake = Path(s.lake)
    phases = phase.found
    rate = LIVE_LOAD * phases["replay"]["rows_per_second"]
    with BatchProfiler(spark) as prof:
        phase(
            "live",
            lambda: live_latency(
                spark, spec, lake / "bench-live", rate, cfg.live_seconds, cfg.drain_timeout
            ),
        )
    phases["live"]["profile"] = prof.report()
    phase("growth", lambda: table_growth(spark, spec, lake / "bench-growth", str(lake / "tables")))
    phase("validation", lambda: validation(spark))
    phase("increment_validation", lambda: increment_validation(spark))
    phase("dag_parse", dag_parse_times)
    if not cfg.smoke:
        from riverdelta.bench.freshness import validated_freshness

        fresh_rate = LIVE_LOAD * phases["live_max"]["rows_per_second"]
        phase(
            "freshness",
            lambda: validated_freshness(
                STREAM, fresh_rate, cfg.live_seconds, out / "home", cfg.drain_timeout
            ),
        )


def _spark() -> tuple[SparkSession, bool]:
    """The session, and whether this run created it (a session it found stays running)."""
    from pyspark import SparkContext

    from riverdelta.launch.spark import get_spark

    existed = SparkContext._active_spark_context is not None
    spark = get_spark("riverdelta-bench", ui=False)
    spark.sparkContext.setLogLevel("ERROR")
    return spark, not existed


def _brief(value: dict[str, Any]) -> str:
    keys = ("rows", "rows_per_second", "p95_seconds", "ratio", "sent", "phase_seconds")
    parts = [f"{k}={value[k]}" for k in keys if k in value]
    return ", ".join(parts) or f"{len(value)} figures"


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m riverdelta.bench.run",
        description="Measure Riverdelta against the limits of this machine (see docs/benchmarks.md).",
    )
    parser.add_argument("--records", type=int, default=None, help="dataset size (1,000,000)")
    parser.add_argument(
        "--live-seconds", type=float, default=None, help="live producer duration (120)"
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (3,000 records, 10 s live) for tests"
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite docs/benchmarks.md (the full run)"
    )
    args = parser.parse_args(argv)
    records = args.records or (3_000 if args.smoke else 1_000_000)
    live = args.live_seconds or (10.0 if args.smoke else 120.0)
    if records < 100 or live <= 0:
        parser.error("--records must be at least 100 and --live-seconds positive")
    return Config(
        records=records,
        live_seconds=live,
        out=args.out,
        smoke=args.smoke,
        write_docs=args.write_docs,
        # Smoke runs check that every figure is produced, not its value: no warm-up.
        warmup=not args.smoke,
        drain_timeout=120.0 if args.smoke else 600.0,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)

    def terminated(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through run()'s clean-up

    # Only the main thread may set handlers; elsewhere (an embedding test) clean-up relies
    # on the caller's exceptions alone.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    try:
        results = run(cfg)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(render_markdown(results))
    print(f"results: {results['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
