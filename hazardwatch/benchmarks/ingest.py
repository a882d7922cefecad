"""``hazardwatch bench ingest``: readings stored per second by the whole service, next to the bare tools.

In one run, on the same broker and the same database servers, for each kind of readings table
(a TimescaleDB hypertable, and a plain PostgreSQL table):

- bare COPY: psycopg 3 binary COPY of the same rows, prebuilt, into a ``readings`` table made by
  the same migrations, in one transaction — measured before and after the service, averaged;
- hazardwatch: the whole service (``run_service``: ingest, rules and alerting, the HTTP API) drains
  the same messages, queued on the broker beforehand, into ``readings``, exactly once, every
  message acknowledged after its commit;

and for single-point messages, a bare paho subscriber draining the same queue with paho's own
loop (``loop_forever``, auto-acknowledging, ``json.loads`` per message) against the whole service;
the bare drain, like the bare COPY, measured before and after the service and averaged.
Messages are queued first by a publisher in its own process, so its speed never limits what is
measured. The bars are issue 16's: batches ≥ 0.85 × bare COPY into the same kind of table, single
points ≥ 1.5 × the bare paho drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ingest.transport import BACKFILL_SUFFIX
from ingest.writer import COPY_READINGS, copy_payload
from park.db import migrate
from park.settings import EnvSettings, load_settings
from park.sitefile import parse_site
from park.types import ReadingBatch
from simulators.load import LoadSpec, messages, publish_in_process, recent_t0_ms, site_yaml

BAR_COPY = 0.85  # issue 16: stored readings ≥ 0.85 × a bare binary COPY into the same kind of table
BAR_SINGLE = 1.5  # single points ≥ 1.5 × a bare paho drain


@dataclass(frozen=True, slots=True)
class Figure:
    what: str
    messages: int
    readings: int
    seconds: float
    cpu: float | None = None  # seconds of this process's CPU during the run, where measured

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def _db(admin: str, name: str) -> str:
    u = urlsplit(admin)
    return urlunsplit((u.scheme, u.netloc, f"/{name}", "", ""))


@contextlib.contextmanager
def scratch_database(admin: str, prefix: str = "hwbench") -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield _db(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _is_timescale(admin: str) -> bool:
    with psycopg.connect(admin, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
                         ).fetchone() == (1,)


def expected_rows(spec: LoadSpec) -> ReadingBatch:
    """The rows the load's messages carry, with the sensor ids a fresh registry gives them."""
    sid, ts, val = [], [], []
    for topic, payload in messages(spec, "x"):
        doc = json.loads(payload)
        ent = int(topic.split("/")[1][1:])
        if "points" in doc:
            for p in doc["points"]:
                sid.append(ent * spec.points + int(p["tag"][3:]) + 1)
                ts.append(doc["ts"] * 1000)
                val.append(p["value"])
        else:
            sid.append(ent * spec.points + int(topic.rsplit("-", 1)[1]) + 1)
            ts.append(doc["ts"] * 1000)
            val.append(doc["value"])
    return ReadingBatch(np.array(sid, np.int32), np.array(ts, np.int64), np.array(val, np.float64),
                        np.zeros(len(sid), np.int8))


def bare_copy(admin: str, spec: LoadSpec) -> Figure:
    """Seconds for one binary COPY of the load's rows, prebuilt, into a fresh ``readings`` table."""
    rows = expected_rows(spec)
    data = copy_payload(rows)
    with scratch_database(admin) as url:
        async def schema() -> None:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                await migrate(conn)
        asyncio.run(schema())
        with psycopg.connect(url) as c:
            t0 = time.perf_counter()
            with c.cursor() as cur, cur.copy(COPY_READINGS) as cp:
                view = memoryview(data)
                for i in range(0, len(data), 1 << 20):
                    cp.write(view[i:i + (1 << 20)])
            c.commit()
            secs = time.perf_counter() - t0
    return Figure("bare binary COPY", spec.messages, len(rows), secs)


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
    """End the persistent session ``client_id`` left behind, and the history session a service of that
    client id keeps beside it."""
    u = urlsplit(url)
    for cid in (client_id, client_id + BACKFILL_SUFFIX):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=True)
        c.connect(u.hostname or "127.0.0.1", u.port or 1883)
        c.disconnect()


def bare_drain(url: str, spec: LoadSpec) -> Figure:
    """A bare paho subscriber draining ``spec`` queued messages with paho's own loop."""
    prefix = f"bare{uuid.uuid4().hex[:6]}"
    cid = f"bench-bare-{uuid.uuid4().hex[:6]}"
    _session(url, cid, f"{prefix}/#")
    publish_in_process(url, prefix, spec)
    u = urlsplit(url)
    got = 0
    t: dict[str, float] = {}

    def on_message(c: mqtt.Client, ud: object, m: mqtt.MQTTMessage) -> None:
        nonlocal got
        json.loads(m.payload)
        got += 1
        if got >= spec.messages:
            t["last"] = time.perf_counter()
            c.disconnect()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    c.on_message = on_message
    t["start"] = time.perf_counter()
    c.connect(u.hostname or "127.0.0.1", u.port or 1883)
    c.loop_forever()
    _end_session(url, cid)
    n = spec.messages * (spec.points if spec.mode == "batch" else 1)
    return Figure("bare paho drain", spec.messages, n, t["last"] - t["start"])


async def service_drain(url: str, admin: str, spec: LoadSpec, writers: int | None = None) -> Figure:
    """The whole service (ingest, rules, alerting, HTTP) draining ``spec`` queued messages."""
    from hazardwatch.service import run_service
    from ingest import service as ingest_service

    if writers is not None:  # the service builds its ingest stage with the module's default
        ingest_service.WRITERS = writers
    prefix = f"b{uuid.uuid4().hex[:6]}/hw/v1"
    cid = f"bench-hw-{uuid.uuid4().hex[:6]}"
    expected = spec.messages * (spec.points if spec.mode == "batch" else 1)
    with scratch_database(admin) as db:
        site = parse_site(site_yaml(spec.enterprises, spec.points), environ={})
        settings = load_settings(None, EnvSettings(database_url=SecretStr(db), mqtt_url=url, mqtt_prefix=prefix,
                                                   mqtt_client_id=cid, http_addr="127.0.0.1:0"))
        await asyncio.to_thread(_session, url, cid, f"{prefix}/#")
        await asyncio.to_thread(publish_in_process, url, prefix, spec)
        registry = CollectorRegistry()

        def value(name: str) -> float:
            return registry.get_sample_value(name) or 0.0

        task = asyncio.create_task(run_service(settings, site, registry=registry))
        try:
            while value("hazardwatch_ingest_messages_total") == 0:  # a counter, not an event: poll it
                if task.done():
                    task.result()
                await asyncio.sleep(0.002)
            t0 = time.perf_counter()  # the drain has begun
            cpu0 = time.process_time()
            while value("hazardwatch_ingest_readings_stored_total") < expected:
                if task.done():
                    task.result()
                if time.perf_counter() - t0 > 900:
                    break
                await asyncio.sleep(0.01)
            secs = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            stored = int(value("hazardwatch_ingest_readings_stored_total"))
        finally:
            await stop(task)
        await asyncio.to_thread(_end_session, url, cid)
    return Figure("hazardwatch (whole service)", spec.messages, stored, secs, cpu)


@dataclass(slots=True)
class Results:
    batches: dict[str, tuple[Figure, Figure, str]] = field(default_factory=dict)  # server: (copy, service, kind)
    single: tuple[Figure, Figure] | None = None  # (bare drain, service)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel until it is done: on Python 3.11 ``asyncio.wait_for`` (in the rule and alerting loops)
    can swallow a cancellation that arrives as its wait ends, and one cancel may then not stop it."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=2)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


def run(a: argparse.Namespace) -> Results:
    """Every figure of this benchmark; also used by ``hazardwatch bench all``."""
    out = Results()
    batch = LoadSpec(a.enterprises, a.points, "batch", a.batches, t0_ms=recent_t0_ms())
    for label, admin in (("timescaledb", a.tsdb_url), ("postgresql", a.pg_url)):
        if not admin:
            continue
        kind = "hypertable" if _is_timescale(admin) else "plain table"
        print(f"… batches into a {kind} ({label}): bare COPY, whole service, bare COPY", flush=True)
        c1 = bare_copy(admin, batch)
        hw = asyncio.run(service_drain(a.mqtt_url, admin, batch, a.writers))
        c2 = bare_copy(admin, batch)
        copy = Figure("bare binary COPY (mean of 2)", batch.messages, c1.readings, (c1.seconds + c2.seconds) / 2)
        out.batches[label] = (copy, hw, kind)
    if a.singles:
        single = LoadSpec(a.enterprises, a.points, "single", a.singles, t0_ms=recent_t0_ms())
        print("… single points: bare paho drain, whole service, bare paho drain", flush=True)
        d1 = bare_drain(a.mqtt_url, single)
        hw = asyncio.run(service_drain(a.mqtt_url, a.tsdb_url or a.pg_url, single, a.writers))
        d2 = bare_drain(a.mqtt_url, single)
        drain = Figure("bare paho drain (mean of 2)", single.messages, d1.readings, (d1.seconds + d2.seconds) / 2)
        out.single = (drain, hw)
    return out


def report(out: Results) -> list[tuple[str, str, str, bool]]:
    """(what, figure, bar, met) rows."""
    rows = []
    for copy, hw, kind in out.batches.values():
        ratio = hw.rate / copy.rate
        met = ratio >= BAR_COPY and hw.readings == copy.readings
        rows.append((f"50-point batches → {kind}", f"{hw.rate:,.0f} readings/s = {ratio:.2f} × bare COPY "
                     f"({copy.rate:,.0f}/s)", f"≥ {BAR_COPY} ×", met))
    if out.single is not None:
        drain, hw = out.single
        ratio = hw.rate / drain.rate
        met = ratio >= BAR_SINGLE and hw.readings == drain.readings
        rows.append(("single-point messages", f"{hw.rate:,.0f} readings/s = {ratio:.2f} × bare paho drain "
                     f"({drain.rate:,.0f}/s)", f"≥ {BAR_SINGLE} ×", met))
    return rows


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--mqtt-url", default=os.environ.get("HW_TEST_MQTT_URL", "mqtt://127.0.0.1:18830"),
                    help="a broker running deploy/mosquitto/hazardwatch.conf (tests/run.sh starts one)")
    ap.add_argument("--tsdb-url", default=os.environ.get("HW_TEST_TSDB_URL",
                                                          "postgresql://postgres@127.0.0.1:5433/postgres"),
                    help="admin URL of a TimescaleDB server (scratch databases are made there)")
    ap.add_argument("--pg-url", default=os.environ.get("HW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="admin URL of a plain PostgreSQL server ('' to skip)")
    ap.add_argument("--enterprises", type=int, default=200)
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--batches", type=int, default=20_000,
                    help="50-point gateway batches to drain (1,000,000 readings)")
    ap.add_argument("--singles", type=int, default=60_000, help="single-point messages to drain")
    ap.add_argument("--writers", type=int, default=None, help="write transactions in flight (default: the service's)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazardwatch bench ingest", description=__doc__.split("\n")[0])
    add_arguments(ap)
    a = ap.parse_args(argv)
    print(f"hazardwatch ingest benchmark — broker {a.mqtt_url}, {os.cpu_count()} cores; whole service "
          "(ingest, rules, alerting) against the bare tools, same servers, same run", flush=True)
    out = run(a)
    print()
    print(f"{'what':<36}{'messages':>10}{'readings':>11}{'seconds':>9}{'readings/s':>13}")
    figures = [(k, f) for k, (c, h, _) in out.batches.items() for f in (c, h)]
    figures += [("single", f) for f in out.single or ()]
    for key, f in figures:
        label = f"{key}: {f.what}"[:35]
        print(f"{label:<36}{f.messages:>10,}{f.readings:>11,}{f.seconds:>9.2f}{f.rate:>13,.0f}")
    print()
    ok = True
    for what, fig, bar, met in report(out):
        ok &= met
        print(f"{what:<32} {fig}  (bar {bar}) {'✓' if met else '✗'}")
    return 0 if ok else 1
