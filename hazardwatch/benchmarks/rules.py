"""``hazardwatch bench rules``: readings judged per second by the rule core, and memory per sensor.

Honest about the work: a park of 100,000 sensors in a realistic mix (combustible gas detectors in
voting groups on hazard sources, toxic gas, oxygen, tank levels, temperatures with rate limits,
pressures, one power meter per enterprise), every rule a default site turns on — thresholds with
deadband and delays, trend early warning, rate, instrument fault and flat line, voting, power,
liveness — readings every 10 s per sensor with noise, a few excursions and ramps, handed over in
ingest-sized batches; ``on_tick`` at the service's cadence (every 5 s of arrival time); the
learned-state snapshot serialised at its cadence (every minute); each transition's sentence
rendered as the store does; and a backfill burst in the middle: a group of enterprises flushing
a two-hour backlog (断点续传) at once.

The bar "never the service's bottleneck": the rule core at ≥ 2 × the ingest rate measured in the
same run — the whole service (ingest, rules, alerting) draining a prefilled broker queue of 50-point
gateway batches into a scratch database (``--ingest-batches``; 0 skips it), which is the rate at which
readings reach the rules under sustained load, since the broker hands out messages only as fast as
their commits are acknowledged. ``hazardwatch bench all`` passes the rate of its own ingest run. The
ingest decoder alone on the same batches (no MQTT, no COPY — the most ingest could ever hand over if
storage cost nothing) is printed as a stricter reference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import tracemalloc
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson

from park.model import Park
from park.sitefile import parse_site
from park.types import ReadingBatch, epoch_us, from_epoch_us
from park.wording import alarm_text
from rules.engine import RuleEngine

INTERVAL_S = 10
TICK_US = 5_000_000  # the rule service ticks at least every 5 s
SNAPSHOT_US = 60_000_000  # alarm_management.snapshot_every default


def site_text(enterprises: int, per: int) -> str:
    """``per`` sensors per enterprise: a realistic mix, limits varying from tank to tank."""
    out = ["site: {name: 规则基准园区}", "districts:", "  - code: D", "    name: 区", "    towns:",
           "      - code: T", "        name: 镇", "        enterprises:"]
    for e in range(enterprises):
        out += [f"          - code: E{e}", f"            name: 企业{e}", "            approved_load_kw: 5000",
                "            hazard_sources:", "              - {code: HS1, name: 罐区, grade: 2}",
                "              - {code: HS2, name: 装置区, grade: 3}", "            sensors:"]
        for j in range(per - 1):
            k = j % 10
            hs = "HS1" if j % 20 < 10 else "HS2"
            if k in (0, 1, 2):
                line = f"{{tag: AT-{j}, kind: gas_combustible, hazard_source: {hs}, interval: 10s}}"
            elif k == 3:
                line = f"{{tag: AH-{j}, kind: gas_toxic, gas: H2S, hazard_source: {hs}, interval: 10s}}"
            elif k in (4, 5):
                hh = 9 + (j % 7) * 0.1
                line = (f"{{tag: LT-{j}, kind: tank_level, hazard_source: {hs}, interval: 10s, "
                        f"limits: {{hh: {hh:.1f}, h: {hh - 0.5:.1f}, l: 1, ll: 0.5}}}}")
            elif k in (6, 7):
                line = (f"{{tag: TT-{j}, kind: temperature, interval: 10s, limits: {{hh: 90, h: 80}}, "
                        "rate: {rise_per_min: 5}}")
            elif k == 8:
                line = f"{{tag: PT-{j}, kind: pressure, interval: 10s, limits: {{hh: 2, h: 1.6, l: 0.2}}}}"
            else:
                line = f"{{tag: OX-{j}, kind: oxygen, interval: 10s}}"
            out.append("              - " + line)
        out.append("              - {tag: JT, kind: power, limits: {h: 5000}, interval: 10s}")
    return "\n".join(out) + "\n"


def normal_values(park: Park) -> np.ndarray:
    base = []
    for s in park.sensors:
        if s.kind.value == "oxygen":
            base.append(20.9)
        elif s.kind.value == "power":
            base.append(1500.0)
        else:
            lim = s.limits.h if s.limits.h is not None else 10.0
            base.append(lim * 0.4)
    return np.array(base)


class Stream:
    """Every sensor every 10 s (staggered), noise, rare excursions, a few slow ramps."""

    def __init__(self, park: Park, t0_us: int, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.ids = np.array([s.id for s in park.sensors], np.int32)
        self.n = len(self.ids)
        self.base = normal_values(park)
        # instrument noise, relative to the reading: gas cells 1 %, oxygen ±0.05 %VOL, tank radar 0.1 %,
        # temperature ±0.1 °C, pressure 0.5 %, load 2 %
        rel = {"oxygen": 0.05 / 20.9, "tank_level": 0.001, "temperature": 0.003, "pressure": 0.005, "power": 0.02}
        self.noise = np.array([rel.get(s.kind.value, 0.01) for s in park.sensors])
        self.phase = (self.rng.random(self.n) * INTERVAL_S * 1e6).astype(np.int64)
        order = np.argsort(self.phase)
        self.ids, self.base, self.phase = self.ids[order], self.base[order], self.phase[order]
        self.noise = self.noise[order]
        self.t0 = t0_us
        self.ramping = self.rng.random(self.n) < 0.001  # slowly rising towards H: trend warnings
        self.limit_gap = self.base * 1.5  # from 0.4 × H to H
        self.cut_off = np.zeros(self.n, bool)  # gateways that cannot reach hazardwatch for now

    def window(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k-th 10 s window of readings, in arrival order (cut-off gateways send nothing)."""
        ts = self.t0 + k * INTERVAL_S * 1_000_000 + self.phase
        vals = self.base * (1 + self.rng.normal(0, 1, self.n) * self.noise)
        minutes = k * INTERVAL_S / 60
        vals[self.ramping] += self.limit_gap[self.ramping] * min(1.0, minutes / 20)
        spike = self.rng.random(self.n) < 0.00002  # a reading in 50,000 beyond a limit
        vals[spike] *= 2.6
        live = ~self.cut_off
        return self.ids[live], ts[live], vals[live]


def cut_off(stream: Stream, park: Park, enterprises: int) -> np.ndarray:
    """Cut the first ``enterprises`` enterprises' gateways off; return which stream rows they are."""
    ents = {f"E{e}" for e in range(enterprises)}
    pick = np.array([park.by_id[int(i)].enterprise in ents for i in stream.ids])
    stream.cut_off = pick
    return pick


def backlog(stream: Stream, pick: np.ndarray, start_us: int, hours: float) -> tuple[np.ndarray, ...]:
    """Readings of the cut-off sensors ``pick`` since ``start_us``, as a gateway flush delivers them."""
    ids, base = stream.ids[pick], stream.base[pick]
    steps = int(hours * 3600 / INTERVAL_S)
    t = start_us + np.arange(steps, dtype=np.int64)[:, None] * INTERVAL_S * 1_000_000 + stream.phase[pick][None, :]
    v = base[None, :] * (1 + stream.rng.normal(0, 1, (steps, len(ids))) * stream.noise[pick][None, :])
    return np.broadcast_to(ids, (steps, len(ids))).ravel(), t.ravel(), v.ravel()


def decoder_rate(park: Park, seconds: float = 1.5) -> float:
    """Readings/s of the ingest decoder on 50-point gateway batches (the most ingest can hand over)."""
    from ingest.decode import Decoded, Decoder

    dec = Decoder(park)
    by_ent: dict[str, list[str]] = {}
    for s in park.sensors:
        by_ent.setdefault(s.enterprise, []).append(s.tag)
    payloads = []
    ms = 1_763_856_000_000
    for e, tags in list(by_ent.items())[:200]:
        pts = [{"tag": t, "value": 1.0 + k * 0.01} for k, t in enumerate(tags[:50])]
        payloads.append((f"hw/v1/{e}/data", orjson.dumps({"ts": ms, "points": pts})))
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = Decoded()
        for topic, p in payloads:
            dec.decode(out, topic, p, ms * 1000)
        n += len(out.batch())
    return n / (time.perf_counter() - start)


@dataclass(slots=True)
class RuleFigures:
    rate: float  # readings/s judged by the core
    bytes_per_sensor: float
    decoder_rate: float  # the ingest decoder alone, same run
    ingest_rate: float | None  # the whole service's stored readings/s, same run (None: not measured)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--enterprises", type=int, default=2000)
    ap.add_argument("--per", type=int, default=50, help="sensors per enterprise")
    ap.add_argument("--batch", type=int, default=10_000, help="readings per batch (as ingest hands them over)")
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of live readings")
    ap.add_argument("--backfill-enterprises", type=int, default=20, help="enterprises flushing a 2-hour backlog")
    ap.add_argument("--ingest-batches", type=int, default=4_000,
                    help="50-point batches the whole service drains to measure the ingest rate (0: skip)")


def ingest_rate(a: argparse.Namespace) -> float:
    """Readings/s the whole service stores from a prefilled queue of 50-point batches (TimescaleDB)."""
    from hazardwatch.benchmarks import ingest as ingest_bench
    from simulators.load import LoadSpec, recent_t0_ms

    spec = LoadSpec(200, 50, "batch", a.ingest_batches, t0_ms=recent_t0_ms())
    fig = asyncio.run(ingest_bench.service_drain(a.mqtt_url, a.tsdb_url, spec))
    if fig.readings != spec.messages * spec.points:
        raise RuntimeError(f"the ingest run stored {fig.readings:,} of {spec.messages * spec.points:,} readings")
    return fig.rate


def measure(a: argparse.Namespace, ingest: float | None = None) -> RuleFigures:
    """Every figure of the rule benchmark; ``ingest`` is a whole-service rate measured by the caller
    in the same run (``bench all``), else it is measured here when ``--ingest-batches`` > 0."""
    if ingest is None and a.ingest_batches > 0:
        print(f"measuring the ingest rate: the whole service drains {a.ingest_batches:,} queued 50-point "
              "batches …", flush=True)
        ingest = ingest_rate(a)
    n = a.enterprises * a.per
    print(f"building a park of {n:,} sensors …", flush=True)
    park = Park.from_site(parse_site(site_text(a.enterprises, a.per), environ={}))
    t0 = epoch_us(datetime(2026, 11, 23, tzinfo=UTC))
    stream = Stream(park, t0)
    print("measuring the ingest decoder (the baseline) …", flush=True)
    base_rate = decoder_rate(park)
    # these gateways lost their uplink two hours ago; they flush their store in the middle of the run
    pick = cut_off(stream, park, a.backfill_enterprises)
    np.nanmedian(np.ones((2, 3)), axis=1)  # import what judging imports lazily, before memory is traced

    tracemalloc.start()
    engine = RuleEngine(park)
    mem_built, _ = tracemalloc.get_traced_memory()

    stats = {"readings": 0, "transitions": 0, "ticks": 0, "snapshots": 0, "snapshot_bytes": 0, "judge_s": 0.0}
    next_tick = [t0]
    next_snap = [t0 + SNAPSHOT_US]

    def feed(ids: np.ndarray, ts: np.ndarray, vals: np.ndarray, arrival: int) -> None:
        for s in range(0, len(ids), a.batch):
            b = ReadingBatch(ids[s:s + a.batch], ts[s:s + a.batch], vals[s:s + a.batch],
                             np.zeros(len(ids[s:s + a.batch]), np.int8), received_us=arrival)
            t = time.perf_counter()
            out = engine.on_batch(b, from_epoch_us(arrival))
            while arrival >= next_tick[0]:
                out += engine.on_tick(from_epoch_us(next_tick[0]))
                next_tick[0] += TICK_US
                stats["ticks"] += 1
            if arrival >= next_snap[0]:
                blobs = engine.snapshot()
                stats["snapshots"] += 1
                stats["snapshot_bytes"] = sum(len(x) for x in blobs.values())
                next_snap[0] += SNAPSHOT_US
            for tr in out:  # the store renders each event's sentence from its facts
                alarm_text(tr.alarm.rule, tr.facts, tr.value, tr.limit)
            stats["judge_s"] += time.perf_counter() - t
            stats["readings"] += len(b)
            stats["transitions"] += len(out)

    windows = int(a.minutes * 60 / INTERVAL_S)
    warm = max(1, windows // 5)
    print(f"warming up ({warm * INTERVAL_S} s of readings, memory traced) …", flush=True)
    for k in range(warm):
        ids, ts, vals = stream.window(k)
        for s in range(0, len(ids), a.batch):
            feed(ids[s:s + a.batch], ts[s:s + a.batch], vals[s:s + a.batch], int(ts[min(s + a.batch, len(ts)) - 1]))
    del ids, ts, vals
    mem, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for key in stats:
        stats[key] = 0 if key != "judge_s" else 0.0

    print(f"judging {windows - warm} windows of 10 s ({n:,} readings each) with a {a.backfill_enterprises}-enterprise "
          f"2-hour backfill burst in the middle …", flush=True)
    backfill = 0
    for k in range(warm, windows):
        ids, ts, vals = stream.window(k)
        for s in range(0, len(ids), a.batch):
            feed(ids[s:s + a.batch], ts[s:s + a.batch], vals[s:s + a.batch], int(ts[min(s + a.batch, len(ts)) - 1]))
        if k == (warm + windows) // 2 and a.backfill_enterprises:
            # these gateways were cut off for two hours and now flush their store, interleaved
            arrival = int(ts[-1])
            bids, bts, bvals = backlog(stream, pick, arrival - 2 * 3600 * 1_000_000, 2.0)
            order = np.argsort(bts, kind="stable")
            feed(bids[order], bts[order], bvals[order], arrival)
            backfill = len(bids)
            stream.cut_off = np.zeros(stream.n, bool)
        print(f"  {stats['readings']:>12,} readings, {stats['transitions']:,} transitions", end="\r", flush=True)
    rate = stats["readings"] / stats["judge_s"]
    print()
    print(f"rule core: {rate:,.0f} readings/s over {n:,} sensors, every default rule on (trend, vote, rate, fault, "
          f"flat line, power, liveness), batches of {a.batch:,}")
    print(f"  {stats['readings']:,} readings incl. a backfill burst of {backfill:,}; {stats['transitions']:,} "
          f"transitions; {stats['ticks']:,} ticks; {stats['snapshots']} snapshots of "
          f"{stats['snapshot_bytes'] / 1e6:.1f} MB; {len(engine.alarms):,} open alarms")
    print(f"  built: {mem_built / n:.0f} bytes per sensor; peak while judging {peak / 1e6:.1f} MB")
    return RuleFigures(rate, mem / n, base_rate, ingest)


def verdicts(f: RuleFigures) -> list[tuple[str, str, str, bool]]:
    """(what, figure, bar, met) rows, as ``hazardwatch bench all`` tabulates them."""
    rows = [("rule core (all default rules)", f"{f.rate:,.0f} readings/s", "≥ 1,000,000 readings/s",
             f.rate >= 1_000_000),
            ("rule core memory", f"{f.bytes_per_sensor:.0f} bytes per sensor", "≤ 300 bytes per sensor",
             f.bytes_per_sensor <= 300)]
    if f.ingest_rate:
        rows.append(("rule core vs ingest, same run", f"{f.rate / f.ingest_rate:.1f} × the whole service's "
                     f"{f.ingest_rate:,.0f} stored readings/s", "≥ 2 ×", f.rate >= 2 * f.ingest_rate))
    else:
        rows.append(("rule core vs ingest, same run", "not measured (--ingest-batches 0)", "≥ 2 ×", False))
    rows.append(("rule core vs the bare decoder (reference)", f"{f.rate / f.decoder_rate:.1f} × the decoder's "
                 f"{f.decoder_rate:,.0f} readings/s (no MQTT, no COPY)", "—", True))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazardwatch bench rules", description=__doc__.split("\n")[0])
    add_arguments(ap)
    ap.add_argument("--mqtt-url", default=os.environ.get("HW_TEST_MQTT_URL", "mqtt://127.0.0.1:18830"),
                    help="for the ingest rate: a broker running deploy/mosquitto/hazardwatch.conf")
    ap.add_argument("--tsdb-url", default=os.environ.get("HW_TEST_TSDB_URL",
                                                          "postgresql://postgres@127.0.0.1:5433/postgres"),
                    help="for the ingest rate: admin URL of a TimescaleDB server (a scratch database is made)")
    a = ap.parse_args(argv)
    figures = measure(a)
    ok = True
    for what, fig, bar, met in verdicts(figures):
        ok &= met
        print(f"  {what}: {fig} (bar {bar}) {'✓' if met else '✗'}")
    return 0 if ok else 1
