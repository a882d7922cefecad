"""``hazardwatch`` command line (docs/contract.md §6).

Each command lives in ``hazardwatch/commands/<name>.py`` with ``register(subparsers)``, which
adds its parser and sets ``func`` to a callable taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Module names under hazardwatch.commands, in the order they appear in --help.
COMMANDS = ["run", "demo", "check_config", "db", "token", "status", "simulate", "score", "bench", "dashboards",
            "deploy", "docs"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hazardwatch",
        description="化工园区重大危险源监测预警 — MQTT ingest, rules and escalating alarms",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"hazardwatch.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"hazardwatch.commands.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
