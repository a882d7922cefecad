"""``hazardwatch bench all``: every benchmark in one run, one table — the figures the README quotes.

Rows: 50-point batches stored by the whole service on a TimescaleDB hypertable and on plain
PostgreSQL (against a bare binary COPY into the same kind of table), single points (against a bare
paho drain), the rule core (``hazardwatch bench rules``), and reading → first SMS latency with
flood handling on, live and during a backfill burst (``hazardwatch bench latency``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys

from hazardwatch.benchmarks import ingest as ingest_bench
from hazardwatch.benchmarks import latency as latency_bench


def rules_rows(argv: list[str]) -> list[tuple[str, str, str, bool]]:
    """Runs ``hazardwatch bench rules`` and takes its verdict lines (it prints, it returns no figures)."""
    try:
        rules = importlib.import_module("hazardwatch.benchmarks.rules")
    except ImportError:  # the rules benchmark is the rules issue's; until it is here, say so
        return [("rule core", "not run: hazardwatch/benchmarks/rules.py is missing", "≥ 1,000,000/s, ≤ 300 B", False)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rules.main(argv)
    text = buf.getvalue()
    rows = []
    for line in text.splitlines():
        if line.startswith("rule core:"):
            rows.append(("rule core (all default rules)", line.split(":", 1)[1].split(" over ")[0].strip(),
                         "≥ 1,000,000 readings/s", "✗" not in line and _next_ok(text, line)))
        elif line.startswith("engine state:"):
            rows.append(("rule core memory", line.split("=", 1)[1].split("(")[0].strip(), "≤ 300 bytes per sensor",
                         "✓" in line))
    return rows or [("rule core", "no figures printed", "", False)]


def _next_ok(text: str, line: str) -> bool:
    after = text.split(line, 1)[1].splitlines()
    return any("target ≥ 1,000,000/s ✓" in x for x in after[:3])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazardwatch bench all", description=__doc__.split("\n")[0])
    ingest_bench.add_arguments(ap)
    ap.add_argument("--db-admin-url", default=None, help="for the latency benchmark (default: --tsdb-url)")
    ap.add_argument("--load", type=float, default=50_000, help="latency: background readings per second")
    ap.add_argument("--samples", type=int, default=40, help="latency: alarms timed per case")
    ap.add_argument("--rules-args", default="", help="options passed to the rules benchmark, e.g. '--minutes 5'")
    a = ap.parse_args(argv)
    print(f"hazardwatch — every benchmark, {os.cpu_count()} cores, broker {a.mqtt_url}", flush=True)
    rows = ingest_bench.report(ingest_bench.run(a))
    print("… rule core (hazardwatch bench rules)", flush=True)
    rows += rules_rows(a.rules_args.split())
    print("… latency (hazardwatch bench latency)", flush=True)
    for case in latency_bench.run_cases(a.mqtt_url, a.db_admin_url or a.tsdb_url, a.load, a.samples,
                                        ["live", "backfill"]):
        rows.append((f"reading → first SMS, p99 ({case.name})", case.line().split(": ", 1)[1].split(" — ")[0],
                     f"< {latency_bench.TARGET_MS:.0f} ms, none missing", case.ok))
    width = max(len(r[0]) for r in rows) + 2
    print()
    print(f"{'what':<{width}}{'figure':<72}bar")
    for what, fig, bar, met in rows:
        print(f"{what:<{width}}{fig:<72}{bar} {'✓' if met else '✗'}")
    sys.stdout.flush()
    return 0 if all(r[3] for r in rows) else 1
