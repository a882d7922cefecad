"""``hazardwatch bench rules``: readings judged per second by the pure core, and memory per sensor.

A park of 100,000 sensors in a realistic mix (combustible and toxic gas, tank levels with trend
watching, temperatures with rate limits, power meters), readings near normal with a few
excursions, judged in batches as ingest hands them over.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from datetime import UTC, datetime

import numpy as np

from park.model import Park
from park.sitefile import parse_site
from park.types import ReadingBatch, epoch_us
from rules.engine import RuleEngine

KINDS = [
    "{tag: AT-%d, kind: gas_combustible}",
    "{tag: AT-%d, kind: gas_toxic, gas: H2S}",
    "{tag: LT-%d, kind: tank_level, limits: {hh: 9, h: 8.5, l: 1, ll: 0.5}}",
    "{tag: TT-%d, kind: temperature, limits: {hh: 90, h: 80}, rate: {rise_per_min: 5}}",
    "{tag: PT-%d, kind: pressure, limits: {hh: 2, h: 1.6}}",
]


def site_text(enterprises: int, per: int) -> str:
    out = ["site: {name: 规则基准园区}", "districts:", "  - code: D", "    name: 区", "    towns:",
           "      - code: T", "        name: 镇", "        enterprises:"]
    for e in range(enterprises):
        out += [f"          - code: E{e}", f"            name: 企业{e}", "            sensors:"]
        out += ["              - " + (KINDS[j % len(KINDS)] % j) for j in range(per)]
    return "\n".join(out) + "\n"


def normal_values(park: Park) -> np.ndarray:
    base = []
    for s in park.sensors:
        lim = s.limits.h if s.limits.h is not None else 10.0
        base.append(lim * 0.4)
    return np.array(base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazardwatch bench rules", description=__doc__.split("\n")[0])
    ap.add_argument("--enterprises", type=int, default=2000)
    ap.add_argument("--per", type=int, default=50, help="sensors per enterprise")
    ap.add_argument("--batch", type=int, default=20_000, help="readings per batch")
    ap.add_argument("--readings", type=int, default=4_000_000)
    a = ap.parse_args(argv)
    n = a.enterprises * a.per
    print(f"building a park of {n:,} sensors …", flush=True)
    park = Park.from_site(parse_site(site_text(a.enterprises, a.per), environ={}))
    tracemalloc.start()
    engine = RuleEngine(park)
    mem, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rng = np.random.default_rng(1)
    ids = np.array([s.id for s in park.sensors], np.int32)
    base = normal_values(park)
    t0 = epoch_us(datetime(2026, 11, 23, tzinfo=UTC))
    batches = []
    for b in range(a.readings // a.batch):
        pick = rng.integers(0, n, a.batch)
        vals = base[pick] * (1 + rng.normal(0, 0.05, a.batch))
        excursion = rng.random(a.batch) < 0.0005  # a few readings beyond a limit, to exercise alarms
        vals[excursion] *= 2.5
        ts = t0 + (b * a.batch + np.arange(a.batch)) * 1000  # 1 ms apart: always newer
        batches.append(ReadingBatch(ids[pick], ts.astype(np.int64), vals, np.zeros(a.batch, np.int8)))
    print(f"judging {a.readings:,} readings in batches of {a.batch:,} …", flush=True)
    transitions = 0
    start = time.perf_counter()
    for k, batch in enumerate(batches):
        transitions += len(engine.on_batch(batch))
        if k % 50 == 0:
            print(f"  {k * a.batch:>10,} readings, {transitions:,} transitions", end="\r", flush=True)
    elapsed = time.perf_counter() - start
    rate = a.readings / elapsed
    print(f"\nrule core: {rate:,.0f} readings/s over {n:,} sensors ({transitions:,} transitions, "
          f"{len(engine.alarms):,} open alarms) — target ≥ 500,000/s {'✓' if rate >= 500_000 else '✗'}")
    print(f"engine state: {mem / 1e6:.1f} MB = {mem / n:.0f} bytes per sensor")
    return 0
