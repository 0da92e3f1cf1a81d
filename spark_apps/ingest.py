"""Ingest driver: one stream's Kafka topic into its Delta tables.

    spark-submit ... spark_apps/ingest.py --stream transactions --mode live
    spark-submit ... spark_apps/ingest.py --stream transactions --mode replay --from earliest

Every check that can fail (unknown stream, contract, checkpoint owner, --from)
runs before the query starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

MAX_METRICS_BUG_RESTARTS = 3


def is_kafka_metrics_bug(message: str) -> bool:
    """The Kafka source NPE of Spark 4.1.1-4.1.3 (SPARK-55271 / SPARK-57438)."""
    return "scala.Option.get()" in message and "IterableOps.map" in message


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from riverdelta.launch.submit import add_ingest_arguments

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stream", required=True)
    add_ingest_arguments(p)
    p.add_argument("--tables-root", default=None)
    p.add_argument(
        "--trigger", default=None, help="processing-time trigger for live mode, e.g. '5 seconds'"
    )
    p.add_argument("--registry", type=Path, default=None)
    return p.parse_args(argv)


def kafka_problem(spec) -> str | None:
    """Bad Kafka settings, a refused connection or no topic to read, as one line; None if fine.

    Checked before Spark starts: the Kafka source would otherwise retry a refused
    login or handshake inside the query, with a stack trace per attempt, and a
    pattern that matches nothing would run a query that reads nothing, silently.
    """
    from riverdelta.config.settings import ConfigError, settings
    from riverdelta.kafka import client as kafka_client
    from riverdelta.ops.health import source_topics

    try:
        kafka_client.check()
        found = source_topics(settings().kafka_bootstrap, spec.source)
    except (ConfigError, kafka_client.KafkaClientError) as exc:
        return str(exc)
    except RuntimeError as exc:  # a named topic that does not exist
        return f"{exc}; create it (`riverdelta up` creates the registry's topics)"
    if not found:
        return (
            f"stream {spec.name!r}: topic_pattern {spec.topic_pattern!r} matches no topic on "
            f"{settings().kafka_bootstrap}; create a matching topic or fix the pattern"
        )
    return None


def record_error(stream: str, problem: str) -> None:
    """The problem becomes the stream's last error in `riverdelta status`."""
    import time

    from riverdelta.ops.status import progress_file
    from riverdelta.stream.listener import read_record, terminated_record, write_atomic

    path = progress_file(stream)
    record = terminated_record(
        read_record(path), query_id="", run_id="", exception=problem, now=time.time()
    )
    write_atomic(path, record)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)

    from riverdelta.config.registry import load_registry
    from riverdelta.stream.ingest import gold_failure, passed_until, start_query, stop_gold
    from riverdelta.stream.job import IngestMode, make_job
    from riverdelta.stream.source import kafka_starting_options

    try:
        spec = load_registry(args.registry).get(args.stream)
        kafka_starting_options(args.starting)
        until = None
        if args.until:
            from riverdelta.backfill.replay import parse_offsets

            until = parse_offsets(args.until, spec.source)
        job = make_job(
            spec,
            args.mode,
            checkpoint=args.checkpoint,
            tables_root=args.tables_root,
            until=until,
            skip_present=args.skip_present,
        )
    except ValueError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2
    problem = kafka_problem(spec)
    if problem:
        print(f"ingest: error: {problem}", file=sys.stderr)
        if args.mode == IngestMode.LIVE:
            record_error(spec.name, problem)
        return 2

    from riverdelta.launch.spark import get_spark

    spark = get_spark(f"riverdelta-{spec.name}-{args.mode}")
    spark.sparkContext.setLogLevel("WARN")
    # Local mode never prints its application id; the launcher reads it from this line.
    print(f"Riverdelta driver application id: {spark.sparkContext.applicationId}", flush=True)
    if args.mode == IngestMode.LIVE:
        from riverdelta.ops.status import progress_file
        from riverdelta.stream.listener import make_progress_listener

        # Rates and the last exception for `riverdelta status`; lag itself comes from the checkpoint.
        spark.streams.addListener(make_progress_listener(progress_file(spec.name)))
        from riverdelta.kafka.group_offsets import make_group_committer

        # Processed offsets in a consumer group, for Kafka's own lag tools (reporting only).
        spark.streams.addListener(make_group_committer(spec.name, f"riverdelta-{spec.name}-live"))
    log = logging.getLogger("riverdelta.stream.ingest")
    for attempt in range(MAX_METRICS_BUG_RESTARTS + 1):
        query = start_query(
            spark,
            job,
            starting=args.starting,
            max_offsets_per_trigger=args.max_offsets_per_trigger,
            trigger=args.trigger,
        )
        log.info(
            "started %s (%s) txn_app_id=%s checkpoint=%s",
            spec.name,
            args.mode,
            job.txn_app_id,
            job.checkpoint,
        )
        try:
            if job.until is None:
                # Not a bare awaitTermination: a failed gold refresh or Kafka sink stops
                # the query even when no new batch would surface it.
                while not query.awaitTermination(5):
                    failed = gold_failure(job)
                    if failed is not None:
                        query.stop()
                        if args.mode == IngestMode.LIVE:
                            record_error(spec.name, failed)
                        raise RuntimeError(failed)
            else:
                # AvailableNow would read on to the topic's end; a range stops at its own.
                while not query.awaitTermination(2):
                    if passed_until(job):
                        log.info("reached the end offsets %s: stopping", job.until)
                        query.stop()
                        break
            break
        except Exception as exc:  # StreamingQueryException; pyspark's class moved between versions
            if not is_kafka_metrics_bug(str(exc)) or attempt == MAX_METRICS_BUG_RESTARTS:
                raise
            # SPARK-55271: after recovering a planned-but-uncommitted batch from the
            # checkpoint, the Kafka source's progress metrics hit a null *after* the
            # batch committed. Starting the query again plans the next batch normally.
            log.warning("restarting the query after SPARK-55271 (Kafka source metrics NPE)")
    # A replay ends with gold reflecting all it wrote. A stopped or killed live driver
    # leaves its last windows to the next start (GoldRefresher re-announces them).
    stop_gold(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
