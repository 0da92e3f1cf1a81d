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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stream", required=True)
    p.add_argument("--mode", choices=["live", "replay"], default="live")
    p.add_argument(
        "--from",
        dest="starting",
        default=None,
        help="earliest | latest | ISO timestamp | offsets JSON",
    )
    p.add_argument("--max-offsets-per-trigger", type=int, default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--tables-root", default=None)
    p.add_argument(
        "--trigger", default=None, help="processing-time trigger for live mode, e.g. '5 seconds'"
    )
    p.add_argument("--registry", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)

    from riverdelta.ingest import kafka_starting_options, make_job, start_query
    from riverdelta.registry import load_registry

    try:
        spec = load_registry(args.registry).get(args.stream)
        kafka_starting_options(args.starting)
        job = make_job(spec, args.mode, checkpoint=args.checkpoint, tables_root=args.tables_root)
    except ValueError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2

    from riverdelta.spark import get_spark

    spark = get_spark(f"riverdelta-{spec.name}-{args.mode}")
    spark.sparkContext.setLogLevel("WARN")
    # Local mode never prints its application id; the launcher reads it from this line.
    print(f"Riverdelta driver application id: {spark.sparkContext.applicationId}", flush=True)
    if args.mode == "live":
        from riverdelta.listener import make_progress_listener
        from riverdelta.status import progress_file

        # Rates and the last exception for `riverdelta status`; lag itself comes from the checkpoint.
        spark.streams.addListener(make_progress_listener(progress_file(spec.name)))
    query = start_query(
        spark,
        job,
        starting=args.starting,
        max_offsets_per_trigger=args.max_offsets_per_trigger,
        trigger=args.trigger,
    )
    logging.getLogger("riverdelta.ingest").info(
        "started %s (%s) app_id=%s checkpoint=%s", spec.name, args.mode, job.app_id, job.checkpoint
    )
    query.awaitTermination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
