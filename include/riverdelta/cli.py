"""``riverdelta`` command line."""

from __future__ import annotations

import argparse
import sys


def jars_sets() -> tuple[str, ...]:
    from riverdelta.launch.jars import SETS

    return SETS


def _cmd_jars(args: argparse.Namespace) -> int:
    from riverdelta.launch import jars

    if args.sets:
        for name in args.sets:
            print(f"jars: {name}: {len(jars.fetch(name, force=args.force))} jars verified")
    else:
        jars.fetch_all(force=args.force)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    import time

    from riverdelta.airflow import env as airflow_env
    from riverdelta.config.registry import load_registry
    from riverdelta.embedded import airflow_stack, kafka_broker
    from riverdelta.kafka import client as kafka_client

    registry = load_registry()  # a contract that does not parse fails before anything starts
    t0 = time.monotonic()
    kafka_broker.start()
    kafka_client.check()
    print(
        f"up: Kafka broker answering on {kafka_client.client_config().describe()} "
        f"({time.monotonic() - t0:.1f}s)"
    )
    created = kafka_client.create_topics(registry.topics(), registry.topic_configs())
    for topic in created:
        print(f"up: created topic {topic}")
    if args.kafka_only:
        return 0
    t1 = time.monotonic()
    airflow_stack.start()
    print(f"up: Airflow healthy at {airflow_env.api_url()} ({time.monotonic() - t1:.1f}s)")
    print(f"up: Airflow {airflow_stack.login_line()}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from riverdelta.config.settings import settings
    from riverdelta.embedded import airflow_stack, kafka_broker
    from riverdelta.launch import procs

    # Airflow first: a reconcile run would otherwise restart the drivers stopped next.
    for comp in airflow_stack.stop():
        print(f"down: stopped airflow {comp}")
    # Then drivers and producers (twice: a task in flight may have just launched one),
    # so nothing writes while the broker goes away.
    for _ in range(2):
        for pid_file in sorted(settings().run_dir.glob("*.pid")):
            name = pid_file.stem
            if name.startswith(("stream-", "producer-")) and procs.stop(name, timeout=30):
                print(f"down: stopped {name}")
    if kafka_broker.stop():
        print("down: stopped the Kafka broker")
    print("down: nothing else of ours is running")
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    import json

    from riverdelta.config.registry import load_registry
    from riverdelta.config.settings import settings
    from riverdelta.embedded.generator import produce

    spec = load_registry().get(args.stream)
    summary = produce(
        spec,
        args.count,
        bootstrap=settings().kafka_bootstrap,
        rate=args.rate,
        poison_rate=args.poison_rate,
        duplicate_rate=args.duplicate_rate,
        late_rate=args.late_rate,
        seed=args.seed,
        progress=not args.json and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(summary["by_kind"].items()))
        print(
            f"produce: sent {summary['sent']} records to {summary['topic']} in "
            f"{summary['seconds']:.1f}s ({summary['rate']:.0f}/s): {kinds}"
        )
    return 0


def run_command(args: argparse.Namespace) -> list[str]:
    """The spark-submit command of ``riverdelta run``: every option it accepts is passed on."""
    from riverdelta.config.registry import load_registry
    from riverdelta.launch.submit import build_command, ingest_args
    from riverdelta.stream.job import IngestMode

    spec = load_registry().get(args.stream)  # unknown stream: fail before spark-submit starts
    if args.mode == IngestMode.LIVE and (args.until or args.skip_present):
        raise ValueError(
            "--until and --skip-present bound a replay: add --mode replay "
            "(or use `riverdelta backfill --mode range`)"
        )
    return build_command(
        ingest_args(
            spec.name,
            args.mode,
            starting=args.starting,
            max_offsets_per_trigger=args.max_offsets_per_trigger,
            checkpoint=args.checkpoint,
            until=args.until,
            skip_present=args.skip_present,
        ),
        name=f"riverdelta-{spec.name}-{args.mode}",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from riverdelta.airflow.env import airflow_env
    from riverdelta.launch.submit import submit_env

    os.environ.update(airflow_env())  # the Spark connection the DAGs use
    try:
        cmd = run_command(args)
    except ValueError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 2
    return subprocess.run(cmd, env=submit_env()).returncode


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from riverdelta.config.registry import load_registry
    from riverdelta.ops.status import format_table, stream_status

    names = [args.stream] if args.stream else list(load_registry().streams)
    reports = [stream_status(n) for n in names]
    print(json.dumps(reports, indent=2, default=str) if args.json else format_table(reports))
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    import json

    from riverdelta.ops import control

    result = getattr(control, args.command)(args.stream, actor="cli")
    print(json.dumps(result, indent=2, default=str))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from riverdelta.embedded.demo import main as demo

    return demo()


def _cmd_validate(args: argparse.Namespace) -> int:
    import json

    from riverdelta.quality.gate import ValidationFailedError, validate_table

    try:
        res = validate_table(args.table, full=args.full)
    except ValidationFailedError as exc:
        print(json.dumps(exc.result, indent=2, default=str))
        print(f"riverdelta: validation failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2, default=str))
    return 0


def _cmd_suites(args: argparse.Namespace) -> int:
    import json

    from riverdelta.quality.gx import load_suite
    from riverdelta.quality.tables import all_tables

    if args.show is None:
        for table in all_tables():
            doc = load_suite(table)
            by_file = sum(e["meta"]["source"] == "file" for e in doc["expectations"])
            print(f"{table}: {len(doc['expectations'])} expectations ({by_file} from its file), "
                  f"checks {[c['check'] for c in doc['riverdelta_checks']]}")  # fmt: skip
        return 0
    print(json.dumps(load_suite(args.show), indent=2, default=str))
    return 0


def _cmd_failed_rows(args: argparse.Namespace) -> int:
    import json

    from riverdelta.quality.failures import failed_rows
    from riverdelta.quality.tables import resolve_table

    resolve_table(args.table)  # an unknown table is an error, not an empty answer
    for row in failed_rows(args.table, args.run_id):
        print(json.dumps(row, default=str))
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    import json

    from riverdelta.quality.read import tables_report

    report = tables_report()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for t in report:
        last = t.get("last_validation") or {}
        print(
            f"{t['table']:<34} latest v{t['latest_version']}  validated v{t['validated_version']}  "
            f"rows {t['rows_latest']}/{t['rows_validated']}  last check "
            f"{'ok' if last.get('success') else ('FAILED' if last else '-')}  {t['path']}"
        )
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    from riverdelta.backfill.replay import follow_backfill

    conf = {
        "mode": args.mode,
        "from": args.from_,
        "to": args.to,
        "max_offsets_per_trigger": args.max_offsets_per_trigger,
        "dry_run": args.dry_run,
    }
    return follow_backfill(args.stream, conf, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riverdelta", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # One group after another: the order is the order `riverdelta --help` lists them in.
    _add_setup_commands(sub)
    _add_stream_commands(sub)
    p = sub.add_parser("demo", help="run the whole product on the embedded stack")
    p.set_defaults(func=_cmd_demo)
    _add_quality_commands(sub)
    _add_stack_commands(sub)
    return parser


def _add_setup_commands(sub: argparse._SubParsersAction) -> None:
    """Jars and generated events: what a stream needs before it runs."""
    p = sub.add_parser("jars", help="manage the cached JVM jars")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--force", action="store_true", help="resolve again even if the cache verifies")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        choices=jars_sets(),
        help="fetch this set (repeatable); default: the sets this configuration needs",
    )
    p.set_defaults(func=_cmd_jars)

    p = sub.add_parser("produce", help="produce generated events to a stream's topic")
    p.add_argument("stream")
    p.add_argument("--count", type=int, required=True)
    p.add_argument(
        "--rate", type=float, default=None, help="events per second (default: as fast as possible)"
    )
    p.add_argument("--poison-rate", type=float, default=0.0)
    p.add_argument("--duplicate-rate", type=float, default=0.0)
    p.add_argument("--late-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_produce)


def _add_stream_commands(sub: argparse._SubParsersAction) -> None:
    """Running, inspecting, controlling and backfilling a stream."""
    from riverdelta.launch.submit import add_ingest_arguments

    p = sub.add_parser("run", help="run a stream's ingest app in the foreground via spark-submit")
    p.add_argument("stream")
    add_ingest_arguments(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="desired vs actual state, lag, batch age, rates per stream")
    p.add_argument("stream", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    for action, text in (
        ("deploy", "record RUNNING as desired state and start the stream's driver"),
        ("stop", "record STOPPED as desired state and stop the driver"),
        ("restart", "stop and start the driver"),
        ("reconcile", "bring the stream to its desired state once (what the DAG does)"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("stream")
        p.set_defaults(func=_cmd_control)

    p = sub.add_parser(
        "backfill",
        help="trigger backfill_<stream> through the Airflow REST API and follow it to the end",
    )
    p.add_argument("stream")
    p.add_argument("--mode", choices=["range", "rebuild"], required=True)
    p.add_argument(
        "--from", dest="from_", default="earliest", help="earliest | ISO timestamp | offsets JSON"
    )
    p.add_argument("--to", default="latest", help="latest | ISO timestamp | offsets JSON")
    p.add_argument("--max-offsets-per-trigger", type=int, default=None)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow the run")
    p.set_defaults(func=_cmd_backfill)


def _add_quality_commands(sub: argparse._SubParsersAction) -> None:
    """Validation, suites and the tables analysts read."""
    p = sub.add_parser(
        "validate", help="validate a table with its GX suite and publish it if it passes"
    )
    p.add_argument("table")
    p.add_argument("--full", action="store_true", help="validate every row, not only the new ones")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "suites", help="each table's effective suite: derived from the contract, refined by file"
    )
    p.add_argument("--show", metavar="TABLE", help="print TABLE's effective suite as JSON")
    p.set_defaults(func=_cmd_suites)

    p = sub.add_parser(
        "failed-rows", help="the rows failed validations named, from _ops/failed_rows (JSON lines)"
    )
    p.add_argument("table")
    p.add_argument("--run-id", help="one validation run's rows only")
    p.set_defaults(func=_cmd_failed_rows)

    p = sub.add_parser("tables", help="tables with latest and validated versions, rows, last check")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_tables)


def _add_stack_commands(sub: argparse._SubParsersAction) -> None:
    """The embedded stack: start and stop it."""
    p = sub.add_parser("up", help="start the embedded Kafka broker and Airflow (idempotent)")
    p.add_argument("--kafka-only", action="store_true", help="start only the broker and topics")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("down", help="stop everything `up` started, by pid")
    p.set_defaults(func=_cmd_down)


def main(argv: list[str] | None = None) -> int:
    from riverdelta.config.settings import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"riverdelta: error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # unknown stream or table: the message lists the known ones
        print(f"riverdelta: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
