"""``python -m hazardwatch.benchmarks.scale``: the scale curve — the whole service with 1,000 to
440,000 registered sensors (the national system's whole registry).

For each size, in a fresh database, ``hazardwatch run`` is started as its own process and timed:
start-up (process start → "hazardwatch running", first start with the registry written, then a
restart); resident memory once running and after the load; readings/s stored while it drains a
prefilled broker queue of 50-point gateway batches spread over the registry, twice: stamped about an
hour ago (a backlog after an outage: every reading a backfill, marked for the board), then stamped
now (live, a park's steady state: the headline "stored/s" and the bar); reading → first SMS request
for red alarms (toxic second level) raised after the drain. A script with figures, not a test: it
takes minutes per size.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psycopg

from hazardwatch.benchmarks.ingest import _end_session, _session, scratch_database
from hazardwatch.benchmarks.latency import CONTACTS, SmsStandIn, _cpu_s, _rss_mb
from simulators.load import LoadSpec, live_stamps, publish_in_process, recent_t0_ms, site_yaml

SIZES = (1_000, 10_000, 100_000, 440_000)
POINTS = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(port: int, name: str) -> float:
    """One metric, asked for by name: the whole text (thousands of per-enterprise series at 440,000
    sensors) written 50 times a second would take the service's CPU and time the scraper."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]={name}", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


class Service:
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config, self.env = config, env
        self.rss_start = float("nan")  # MB once running, before the drain

    def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("hazardwatch")), "run", "--config",
                                      str(self.config)], env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "hazardwatch running" in line:
                break
            if "✗" in line or "Traceback" in line:
                raise RuntimeError(line + self.proc.stdout.read()[-3000:])
        took = time.perf_counter() - t0
        # CPU seconds the process used to start: on a shared, loaded machine the steadier figure
        self.cpu = _cpu_s(self.proc.pid)
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        return took

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            print("✗ the service did not stop within 60 s of SIGTERM; killed", flush=True)
            self.proc.kill()
            self.proc.wait(30)


def one_size(n: int, mqtt_url: str, admin: str, readings: int, triggers: int) -> dict[str, float]:
    enterprises = max(CONTACTS, n // POINTS)
    sms = SmsStandIn()
    prefix = f"sc{uuid.uuid4().hex[:6]}/hw/v1"
    cid = f"scale-{uuid.uuid4().hex[:6]}"
    http = _free_port()
    out: dict[str, float] = {"sensors": enterprises * POINTS}
    try:
        with scratch_database(admin, "hwscale") as db, tempfile.TemporaryDirectory() as d:
            text = site_yaml(enterprises, POINTS).replace(
                "site: {name: 负载测试园区}", f"site: {{name: 负载测试园区}}\nchannels: {{sms: {{provider: http, url: "
                f"'http://127.0.0.1:{sms.server.server_address[1]}/send'}}}}")
            for e in range(CONTACTS):  # a contact and an H2S detector per trigger on the first enterprises
                tx = "".join(f"              - {{tag: TX-{j:04d}, kind: gas_toxic, gas: H2S, unit: mg/m3}}\n"
                             for j in range((triggers + CONTACTS - 1) // CONTACTS))
                contact = f"            contacts: [{{name: 安全员, phone: '1390000000{e}', channels: [sms]}}]\n"
                name, sensors = f"            name: 负载企业{e}\n", "            sensors:\n"
                text = text.replace(name + sensors, name + contact + sensors + tx, 1)
            cfg = Path(d) / "site.yaml"
            cfg.write_text(text, encoding="utf-8")
            env = dict(os.environ, HAZARDWATCH_DATABASE_URL=db, HAZARDWATCH_MQTT_URL=mqtt_url,
                       HAZARDWATCH_MQTT_PREFIX=prefix, HAZARDWATCH_HTTP_ADDR=f"127.0.0.1:{http}",
                       HAZARDWATCH_MQTT_CLIENT_ID=cid, PYTHONUNBUFFERED="1")
            svc = Service(cfg, env)
            out["startup_first_s"] = svc.start()  # the registry is written on this one
            svc.stop()
            spread = min(enterprises, 2000)  # batches spread over (up to) 100,000 sensors of the registry
            ticks = max(1, readings // POINTS // spread)
            # a backlog: the queue stamped about an hour ago, so every reading arrives as a backfill and is
            # marked for the board (what a park drains after an outage)
            backlog = LoadSpec(spread, POINTS, "batch", readings // POINTS, t0_ms=recent_t0_ms())
            out["backlog_per_s"], _ = _drain(svc, mqtt_url, prefix, cid, http, backlog, readings)
            svc.stop()
            out["backlog_marks"] = _marks(db)
            # live: the same queue stamped now, as a park's steady stream; the headline figure
            t0_ms, step_ms = live_stamps(ticks)
            live = LoadSpec(spread, POINTS, "batch", readings // POINTS, t0_ms=t0_ms, step_ms=step_ms, seed=2)
            out["stored_per_s"], out["startup_s"] = _drain(svc, mqtt_url, prefix, cid, http, live, readings)
            out["startup_cpu_s"] = svc.cpu
            out["rss_start_mb"] = svc.rss_start
            out["live_marks"] = _marks(db) - out["backlog_marks"]
            pu = mqtt_url.split("://", 1)[1]
            host, _, port = pu.partition(":")
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scale-pub-{uuid.uuid4().hex[:6]}")
            pub.connect(host, int(port or 1883))
            pub.loop_start()
            sent = {}
            for k in range(triggers):
                e, tag = k % CONTACTS, f"TX-{k // CONTACTS:04d}"
                key = f"L{e:05d}/{tag}"
                sms.expect(key, f"1390000000{e}", tag)
                sent[key] = time.perf_counter()
                pub.publish(f"{prefix}/L{e:05d}/point/{tag}", json.dumps({"value": 60, "ts": int(time.time() * 1000)}),
                            qos=1)
                time.sleep(0.3)
            time.sleep(10)
            pub.loop_stop()
            pub.disconnect()
            lat = [(sms.arrivals[k] - t) * 1000 for k, t in sent.items() if k in sms.arrivals]
            out["sms_missing"] = len(sent) - len(lat)
            out["sms_p99_ms"] = float(np.percentile(lat, 99)) if lat else float("nan")
            out["rss_end_mb"] = _rss_mb(svc.proc.pid)
            svc.stop()
            _end_session(mqtt_url, cid)
    finally:
        sms.close()
    return out


def _marks(db: str) -> int:
    with psycopg.connect(db, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM reading_backfills").fetchone()
        return int(row[0]) if row else 0


def _drain(svc: Service, mqtt_url: str, prefix: str, cid: str, http: int, spec: LoadSpec,
           readings: int) -> tuple[float, float]:
    """Fill the broker's queue with ``spec``, start the service and time its drain: (readings/s stored,
    start-up s). The service is left running."""
    _session(mqtt_url, cid, f"{prefix}/#")
    publish_in_process(mqtt_url, prefix, spec)
    # the drain starts as the service subscribes, about when its HTTP port opens: time what /metrics
    # sees of it, from the first answer on
    seen: list[tuple[float, float]] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            try:
                seen.append((time.perf_counter(), _metric(http, "hazardwatch_ingest_readings_stored_total")))
            except OSError:
                pass
            if seen and seen[-1][1] >= readings:
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    took = svc.start()
    svc.rss_start = _rss_mb(svc.proc.pid)
    watcher.join(900)
    watching.set()
    # from the last answer before the counter moved: /metrics answers while the stages still start
    # (the restart is timed on its own), and the drain is what this figure is about
    first = seen[0][1]
    (t0, s0), (t1, s1) = next((seen[i - 1] for i in range(1, len(seen)) if seen[i][1] > first), seen[0]), seen[-1]
    print(f"  drain: the counter moved {t0 - seen[0][0]:.1f} s after /metrics first answered; "
          f"{s1 - s0:,.0f} readings in {t1 - t0:.2f} s", flush=True)
    if s1 - s0 < 0.9 * readings:
        print(f"  ✗ the figure is taken over {(s1 - s0) / readings:.0%} of the drain", flush=True)
    return ((s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")), took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hazardwatch.benchmarks.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--mqtt-url", default=os.environ.get("HW_TEST_MQTT_URL", "mqtt://127.0.0.1:18830"))
    ap.add_argument("--tsdb-url", default=os.environ.get("HW_TEST_TSDB_URL",
                                                          "postgresql://postgres@127.0.0.1:5433/postgres"))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="registered sensors, comma-separated")
    ap.add_argument("--readings", type=int, default=500_000, help="readings drained per size")
    ap.add_argument("--triggers", type=int, default=20, help="red alarms timed per size")
    a = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in a.sizes.split(",")):
        print(f"… {n:,} sensors", flush=True)
        r = one_size(n, a.mqtt_url, a.tsdb_url, a.readings, a.triggers)
        print("  " + json.dumps({k: round(v, 1) for k, v in r.items()}), flush=True)
        rows.append(r)
    print()
    print(f"{'sensors':>9}{'first start s':>15}{'restart s':>11}{'restart CPU s':>15}{'RSS start MB':>14}"
          f"{'RSS end MB':>12}{'stored/s':>11}{'backlog/s':>11}{'marks':>9}{'SMS p99 ms':>12}{'missing':>9}")
    for r in rows:
        print(f"{r['sensors']:>9,.0f}{r['startup_first_s']:>15.1f}{r['startup_s']:>11.1f}{r['startup_cpu_s']:>15.1f}"
              f"{r['rss_start_mb']:>14.0f}"
              f"{r['rss_end_mb']:>12.0f}{r['stored_per_s']:>11,.0f}{r['backlog_per_s']:>11,.0f}"
              f"{r['backlog_marks']:>9,.0f}{r['sms_p99_ms']:>12.0f}{r['sms_missing']:>9.0f}")
    print("stored/s: live readings (stamped now); backlog/s: the same drain stamped an hour ago, every reading a "
          "backfill; marks: rows the backlog left in reading_backfills")
    if len(rows) > 1:
        drop = 1 - rows[-1]["stored_per_s"] / rows[0]["stored_per_s"]
        big = rows[-1]
        print(f"\nstored readings/s from {rows[0]['sensors']:,.0f} to {big['sensors']:,.0f} sensors: {-drop:+.0%} "
              f"(bar: no more than −20 %) {'✓' if drop <= 0.2 else '✗'}; at {big['sensors']:,.0f}: "
              f"RSS {big['rss_end_mb']:.0f} MB (bar < 1024) {'✓' if big['rss_end_mb'] < 1024 else '✗'}, "
              f"start-up {big['startup_s']:.1f} s (bar < 30) {'✓' if big['startup_s'] < 30 else '✗'}, of which "
              f"{big['startup_cpu_s']:.1f} s of CPU; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        back = 1 - big["backlog_per_s"] / rows[0]["backlog_per_s"]
        print(f"backlog (every reading a backfill) from {rows[0]['sensors']:,.0f} to {big['sensors']:,.0f} sensors: "
              f"{-back:+.0%}; live readings marked: {sum(r['live_marks'] for r in rows):,.0f} (should be 0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
