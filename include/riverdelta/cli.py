"""``riverdelta`` command line."""

from __future__ import annotations

import argparse
import sys


def _cmd_jars(args: argparse.Namespace) -> int:
    from riverdelta import jars

    jars.fetch_all(force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riverdelta", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("jars", help="manage the cached JVM jars")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--force", action="store_true", help="resolve again even if the cache verifies")
    p.set_defaults(func=_cmd_jars)
    return parser


def main(argv: list[str] | None = None) -> int:
    from riverdelta.settings import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"riverdelta: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
