"""``hazardwatch bench all``: every benchmark in one run, one table — the figures the README quotes.

Rows: 50-point batches stored by the whole service on a TimescaleDB hypertable and on plain
PostgreSQL (against a bare binary COPY into the same kind of table), single points (against a bare
paho drain), the rule core (``hazardwatch bench rules``), and reading → first SMS latency with
flood handling on, live and during a backfill burst on ``…/backfill`` and on ``…/data``
(``hazardwatch bench latency``).
"""

from __future__ import annotations

import argparse
import os
import sys

from hazardwatch.benchmarks import ingest as ingest_bench
from hazardwatch.benchmarks import latency as latency_bench
from hazardwatch.benchmarks import rules as rules_bench


def rules_rows(argv: list[str], ingest: float | None) -> list[tuple[str, str, str, bool]]:
    """The rule benchmark's verdicts, its "never the bottleneck" bar against ``ingest``: the fastest
    rate the whole service stored in this run."""
    ap = argparse.ArgumentParser(prog="hazardwatch bench all --rules-args")
    rules_bench.add_arguments(ap)
    return rules_bench.verdicts(rules_bench.measure(ap.parse_args(argv), ingest))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazardwatch bench all", description=__doc__.split("\n")[0])
    ingest_bench.add_arguments(ap)
    ap.add_argument("--db-admin-url", default=None, help="for the latency benchmark (default: --tsdb-url)")
    ap.add_argument("--load", type=float, default=50_000, help="latency: background readings per second")
    ap.add_argument("--samples", type=int, default=40, help="latency: alarms timed per case")
    ap.add_argument("--rules-args", default="", help="options passed to the rules benchmark, e.g. '--minutes 5'")
    a = ap.parse_args(argv)
    print(f"hazardwatch — every benchmark, {os.cpu_count()} cores, broker {a.mqtt_url}", flush=True)
    out = ingest_bench.run(a)
    rows = ingest_bench.report(out)
    stored = [hw.rate for _, hw, _ in out.batches.values()]
    print("… rule core (hazardwatch bench rules)", flush=True)
    rows += rules_rows(a.rules_args.split(), max(stored) if stored else None)
    print("… latency (hazardwatch bench latency)", flush=True)
    for case in latency_bench.run_cases(a.mqtt_url, a.db_admin_url or a.tsdb_url, a.load, a.samples,
                                        ["live", "backfill", "backfill-on-data"]):
        rows.append((f"reading → first SMS, p99 ({case.name})", case.line().split(": ", 1)[1].split(" — ")[0],
                     f"< {latency_bench.TARGET_MS:.0f} ms, none missing", case.ok))
    width = max(len(r[0]) for r in rows) + 2
    print()
    print(f"{'what':<{width}}{'figure':<72}bar")
    for what, fig, bar, met in rows:
        print(f"{what:<{width}}{fig:<72}{bar} {'✓' if met else '✗'}")
    sys.stdout.flush()
    return 0 if all(r[3] for r in rows) else 1
