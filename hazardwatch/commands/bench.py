"""``hazardwatch bench ingest|rules|latency|all [options]``: benchmark scripts that print figures.

Benchmarks live with the shell (``hazardwatch/benchmarks/``): they drive the whole service and the
simulator's load, which the stages must not import. Each has ``main(argv) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "ingest": ("hazardwatch.benchmarks.ingest", "readings stored per second by the whole service vs bare COPY "
                                                "and a bare paho drain"),
    "rules": ("hazardwatch.benchmarks.rules", "readings judged per second by the rule core, memory per sensor"),
    "latency": ("hazardwatch.benchmarks.latency", "reading-to-first-notification latency under load"),
    "all": ("hazardwatch.benchmarks.all", "every benchmark, one table (the README's figures)"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    p.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items()))
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark (see NAME --help)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.name][0])
    return int(module.main(args.args) or 0)
