"""``hazardwatch bench ingest|rules|latency [options]``: benchmark scripts that print figures.

Each benchmark lives with the code it measures and has ``main(argv) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "ingest": ("ingest.bench", "readings stored per second vs bare paho drain and bare COPY"),
    "rules": ("hazardwatch.benchmarks.rules", "readings judged per second by the rule core, memory per sensor"),
    "latency": ("hazardwatch.benchmarks.latency", "reading-to-first-notification latency under load"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    p.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items()))
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark (see NAME --help)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.name][0])
    return int(module.main(args.args) or 0)
