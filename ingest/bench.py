"""``hazardwatch bench ingest``: readings stored per second, next to this machine's own limits.

In one run, on the same broker and the same TimescaleDB:
- bare paho: a plain subscriber draining the same queued messages (``json.loads`` per batch);
- bare COPY: psycopg binary COPY of the same rows, prebuilt, into a hypertable;
- hazardwatch: the ingest stage draining the same queue into ``readings``, exactly once.
Messages are queued on the broker first (by a publisher in its own process) and then drained,
so the publisher's speed never limits what is measured. Also: resident memory of an ingest
process with 100,000 registered sensors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import paho.mqtt.client as mqtt
import psycopg
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ingest.service import IngestService
from park.db import migrate, open_pool
from park.db.registry import sync_registry
from park.settings import EnvSettings, load_settings
from park.sitefile import parse_site
from simulators.load import LoadSpec, messages, publish_in_process, site_yaml

TARGETS = {"batch": 200_000, "single": 19_000}  # 1.3 × a Node-RED flow doing the same, measured side by side


def _db(admin: str, name: str) -> str:
    u = urlsplit(admin)
    return urlunsplit((u.scheme, u.netloc, f"/{name}", "", ""))


def _create_db(admin: str) -> str:
    name = f"hwbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return name


def _drop_db(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _session(url: str, client_id: str, topic: str) -> None:
    """Create a persistent session subscribed to ``topic``, then leave it offline (queueing)."""
    u = urlsplit(url)
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_subscribe = lambda *a: done.set()
    c.connect(u.hostname or "127.0.0.1", u.port or 1883)
    c.loop_start()
    c.subscribe(topic, qos=1)
    done.wait(10)
    c.loop_stop()
    c.disconnect()


def _end_session(url: str, client_id: str) -> None:
    u = urlsplit(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect(u.hostname or "127.0.0.1", u.port or 1883)
    c.disconnect()


def bare_drain(url: str, prefix: str, spec: LoadSpec) -> float:
    """Seconds for a bare paho subscriber to drain ``spec`` queued messages (auto-ack, json.loads)."""
    cid = f"bench-bare-{uuid.uuid4().hex[:6]}"
    _session(url, cid, f"{prefix}/#")
    publish_in_process(url, prefix, spec)
    u = urlsplit(url)
    got = 0
    done = threading.Event()
    t: dict[str, float] = {}

    def on_message(c: mqtt.Client, ud: object, m: mqtt.MQTTMessage) -> None:
        nonlocal got
        if got == 0:
            t["first"] = time.perf_counter()
        json.loads(m.payload)
        got += 1
        if got >= spec.messages:
            t["last"] = time.perf_counter()
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    c.on_message = on_message
    t["start"] = time.perf_counter()
    c.connect(u.hostname or "127.0.0.1", u.port or 1883)
    c.loop_start()
    done.wait(600)
    c.loop_stop()
    c.disconnect()
    _end_session(url, cid)
    return t["last"] - t["start"]


def bare_copy(admin: str, spec: LoadSpec) -> float:
    """Seconds for psycopg binary COPY of the same rows, prebuilt, into a fresh hypertable."""
    from datetime import UTC, datetime, timedelta

    name = _create_db(admin)
    try:
        with psycopg.connect(_db(admin, name), autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            c.execute("CREATE TABLE r (ts timestamptz NOT NULL, sensor_id integer NOT NULL,"
                      " value double precision NOT NULL, quality smallint NOT NULL DEFAULT 0,"
                      " PRIMARY KEY (sensor_id, ts))")
            c.execute("SELECT create_hypertable('r', 'ts', chunk_time_interval => INTERVAL '1 day')")
            rows = []
            base = datetime.fromtimestamp(spec.t0_ms / 1000, UTC)
            n = 0
            for _topic, payload in messages(spec, "x"):
                doc = json.loads(payload)
                ts = base + timedelta(milliseconds=doc["ts"] - spec.t0_ms)
                ent = n % spec.enterprises
                if "points" in doc:
                    rows += [(ts, ent * spec.points + j + 1, p["value"], 0) for j, p in enumerate(doc["points"])]
                else:
                    rows.append((ts, len(rows) + 1, doc["value"], 0))
                n += 1
            t0 = time.perf_counter()
            with c.cursor() as cur, cur.copy("COPY r (ts, sensor_id, value, quality) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["timestamptz", "int4", "float8", "int2"])
                for row in rows:
                    cp.write_row(row)
            return time.perf_counter() - t0
    finally:
        _drop_db(admin, name)


async def hazardwatch_drain(url: str, admin: str, spec: LoadSpec) -> tuple[float, int]:
    """Seconds for the ingest stage to store ``spec`` queued messages, and the rows it stored."""
    name = _create_db(admin)
    prefix = f"b{uuid.uuid4().hex[:6]}/hw/v1"
    cid = f"bench-hw-{uuid.uuid4().hex[:6]}"
    db = _db(admin, name)
    try:
        site = parse_site(site_yaml(spec.enterprises, spec.points), environ={})
        settings = load_settings(None, EnvSettings(database_url=SecretStr(db), mqtt_url=url, mqtt_prefix=prefix,
                                                   mqtt_client_id=cid))
        async with open_pool(db, min_size=2, max_size=4) as pool:
            async with pool.connection() as conn:
                await migrate(conn)
                park = await sync_registry(conn, site)
            _session(url, cid, f"{prefix}/#")
            await asyncio.to_thread(publish_in_process, url, prefix, spec)
            svc = IngestService(settings=settings, park=park, pool=pool, sink=None, registry=CollectorRegistry())
            expected = spec.messages * (spec.points if spec.mode == "batch" else 1)
            t0 = time.perf_counter()
            task = asyncio.create_task(svc.run())
            while svc.metrics.stored._value.get() < expected and time.perf_counter() - t0 < 600:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polling a counter: cheap, and keeps the service untouched
            elapsed = time.perf_counter() - t0
            stored = int(svc.metrics.stored._value.get())
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        _end_session(url, cid)
        return elapsed, stored
    finally:
        _drop_db(admin, name)


def memory_100k(admin: str, url: str, enterprises: int = 2000, points: int = 50) -> float:
    """Resident MB of ``python -m ingest`` with enterprises × points registered sensors."""
    name = _create_db(admin)
    try:
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "site.yaml"
            cfg.write_text(site_yaml(enterprises, points), encoding="utf-8")
            env = dict(os.environ, HAZARDWATCH_DATABASE_URL=_db(admin, name), HAZARDWATCH_MQTT_URL=url,
                       HAZARDWATCH_MQTT_PREFIX=f"m{uuid.uuid4().hex[:6]}/hw/v1",
                       HAZARDWATCH_MQTT_CLIENT_ID=f"bench-mem-{uuid.uuid4().hex[:6]}")
            proc = subprocess.Popen([sys.executable, "-m", "ingest", "--config", str(cfg)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    if "ingest ready" in line:
                        break
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss_kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
                return rss_kb / 1024
            finally:
                proc.terminate()
                proc.wait(10)
                proc.stdout.close()
    finally:
        _drop_db(admin, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazardwatch bench ingest", description=__doc__.split("\n")[0])
    ap.add_argument("--mqtt-url", default=os.environ.get("HW_TEST_MQTT_URL", "mqtt://127.0.0.1:18830"),
                    help="a broker running deploy/mosquitto/hazardwatch.conf (tests/run.sh starts one)")
    ap.add_argument("--tsdb-url", default=os.environ.get("HW_TEST_TSDB_URL",
                                                          "postgresql://postgres@127.0.0.1:5433/postgres"),
                    help="an admin URL of a TimescaleDB server (a scratch database is created there)")
    ap.add_argument("--enterprises", type=int, default=200)
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--batches", type=int, default=8000, help="50-point gateway batches to drain")
    ap.add_argument("--singles", type=int, default=60000, help="single-point messages to drain")
    ap.add_argument("--skip-memory", action="store_true")
    a = ap.parse_args(argv)
    url, admin = a.mqtt_url, a.tsdb_url
    print(f"hazardwatch ingest benchmark — broker {url}, TimescaleDB {urlsplit(admin).netloc}, "
          f"{os.cpu_count()} cores", flush=True)
    rows: list[tuple[str, int, int, float]] = []
    results: dict[str, dict[str, float]] = {}
    for mode, count in (("batch", a.batches), ("single", a.singles)):
        spec = LoadSpec(a.enterprises, a.points, mode, count)
        readings = count * (a.points if mode == "batch" else 1)
        print(f"… {mode}: bare paho drain of {count:,} messages", flush=True)
        t_drain = bare_drain(url, "bare" + uuid.uuid4().hex[:6], spec)
        print(f"… {mode}: bare binary COPY of {readings:,} rows", flush=True)
        t_copy = bare_copy(admin, spec)
        print(f"… {mode}: hazardwatch ingest of {count:,} messages", flush=True)
        t_hw, stored = asyncio.run(hazardwatch_drain(url, admin, spec))
        if stored != readings:
            print(f"✗ hazardwatch stored {stored:,} of {readings:,} readings", flush=True)
        results[mode] = {"drain": readings / t_drain, "copy": readings / t_copy, "hw": stored / t_hw}
        rows += [(f"bare paho drain ({mode})", count, readings, t_drain),
                 (f"bare COPY ({mode} rows)", count, readings, t_copy),
                 (f"hazardwatch ingest ({mode})", count, stored, t_hw)]
    print()
    print(f"{'what':<34}{'messages':>10}{'readings':>11}{'seconds':>9}{'readings/s':>13}")
    for what, msgs, n, secs in rows:
        print(f"{what:<34}{msgs:>10,}{n:>11,}{secs:>9.2f}{n / secs:>13,.0f}")
    b, s = results["batch"], results["single"]
    print()
    print(f"gateway batches: {b['hw']:,.0f} readings/s stored = {b['hw'] / b['copy']:.2f} × bare COPY "
          f"(issue: ≥ 0.33), {b['hw'] / b['drain']:.2f} × bare drain; target ≥ {TARGETS['batch']:,}/s "
          f"{'✓' if b['hw'] >= TARGETS['batch'] else '✗'}")
    print(f"single points:   {s['hw']:,.0f} readings/s stored = {s['hw'] / s['drain']:.2f} × bare paho drain "
          f"(issue: ≥ 0.60); target ≥ {TARGETS['single']:,}/s {'✓' if s['hw'] >= TARGETS['single'] else '✗'}")
    if not a.skip_memory:
        print("… resident memory with 100,000 registered sensors", flush=True)
        mb = memory_100k(admin, url)
        print(f"memory: python -m ingest with 100,000 sensors: {mb:.0f} MB RSS (target < 300 MB) "
              f"{'✓' if mb < 300 else '✗'}")
    return 0
