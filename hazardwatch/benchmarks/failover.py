"""Two real ``hazardwatch run`` instances on one database: the leader killed or frozen mid-stream.

    python -m hazardwatch.benchmarks.failover --database-url URL --mqtt-url URL [--runs 5] [--ttl 10s]

Each run creates a database of its own next to ``--database-url`` (the URL's server, a new
database name; dropped afterwards), starts instance ``a`` (it leads) and instance ``b`` (it
stands by), raises a gas alarm whose escalation reaches the town and the district later, and
streams readings. In the middle of the stream and of the escalation it kills ``a`` with SIGKILL
— or freezes it with SIGSTOP for longer than the lease and resumes it — publishes the rest of the
stream, and waits until ``b`` leads and every expected message went out. It prints, per kind,
the takeover time (kill/stop → ``b`` holds the lease; → ``b``'s stages running) as median and
range, readings published and stored, and SMS messages repeated at the gateway (the contract's
gateway drops a repeated ``id``; counted anyway).

The pieces (``Instance``, ``start_instance``, ``SmsSink``…) are what the tests drive too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import paho.mqtt.client as mqtt
import psycopg

SITE = """\
site: {{name: 双机测试园区}}
channels: {{sms: {{provider: http, url: "{sms}/send"}}}}
escalation:
  red:    {{immediate: [enterprise], then: [{{level: town, after: {town}}}, {{level: district, after: {district}}}]}}
  orange: {{immediate: [enterprise], then: [{{level: town, after: {town}}}, {{level: district, after: {district}}}]}}
  yellow: {{immediate: [enterprise]}}
  blue:   {{immediate: [enterprise]}}
districts:
  - code: D1
    name: 一区
    contacts: [{{name: 区值班, phone: "13800000001", channels: [sms]}}]
    towns:
      - code: T1
        name: 一镇
        contacts: [{{name: 镇值班, phone: "13800000002", channels: [sms]}}]
        enterprises:
          - code: E1
            name: 一号化工
            contacts: [{{name: 张工, phone: "13800000003", channels: [sms]}}]
            sensors:
              - {{tag: AT-1, kind: gas_combustible, name: 罐区可燃气体}}
              - {{tag: AT-2, kind: gas_combustible, name: 装置区可燃气体}}
              - {{tag: TT-1, kind: temperature, unit: "°C", name: 反应釜温度, limits: {{hh: 500, h: 400}}}}
"""
ENTERPRISE, TOWN, DISTRICT = "13800000003", "13800000002", "13800000001"


def site_text(sms_url: str, town: str = "4s", district: str = "8s") -> str:
    return SITE.format(sms=sms_url, town=town, district=district)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond: Callable[[], bool], what: str, within: float = 60.0, every: float = 0.05) -> float:
    """Poll ``cond`` until it holds; the seconds it took. AssertionError after ``within`` seconds."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not within {within:g} s: {what}")
        time.sleep(every)
    return time.monotonic() - t0


class SmsSink:
    """The contract's HTTP SMS gateway, as the benchmark's stand-in: records every request, drops a repeated id."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)))
                with outer.lock:
                    dup = any(r["id"] == doc.get("id") for r in outer.requests)
                    outer.requests.append({"id": doc.get("id"), "phone": doc.get("phone"), "text": doc.get("text"),
                                           "duplicate": dup})
                raw = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def phones(self) -> list[str]:
        with self.lock:
            return [str(r["phone"]) for r in self.requests if not r["duplicate"]]

    def duplicates(self) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["duplicate"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Instance:
    """One ``hazardwatch run`` process; its output goes to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    http_url: str
    env: dict[str, str] = field(repr=False)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.http_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_instance(name: str, config: Path, *, database_url: str, mqtt_url: str, prefix: str, workdir: Path,
                   lease_ttl: str = "2s", extra_env: dict[str, str] | None = None,
                   module: str = "hazardwatch") -> Instance:
    """Start ``hazardwatch run`` as instance ``name`` (its own data directory and HTTP port; no client id
    set, so every instance of the database shares the broker session). ``module``: what ``python -m``
    runs (a test's wrapper that injects a fault, then runs hazardwatch's command line)."""
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, HAZARDWATCH_DATABASE_URL=database_url, HAZARDWATCH_MQTT_URL=mqtt_url,
               HAZARDWATCH_MQTT_PREFIX=prefix, HAZARDWATCH_HTTP_ADDR=f"127.0.0.1:{port}",
               HAZARDWATCH_DATA_DIR=str(data), HAZARDWATCH_INSTANCE=name, HAZARDWATCH_LEASE_TTL=lease_ttl,
               HAZARDWATCH_LINK_SECRET="failover-link-secret-0123456789", PYTHONUNBUFFERED="1")
    env.pop("HAZARDWATCH_MQTT_CLIENT_ID", None)
    env.update(extra_env or {})
    log = workdir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, "run", "--config", str(config)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    return Instance(name, proc, log, f"http://127.0.0.1:{port}", env)


def query(url: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, args).fetchall()


def lease(url: str) -> tuple[int, str | None]:
    """(epoch, holder) of the service's lease."""
    rows = query(url, "SELECT epoch, holder FROM ha_lease WHERE name = 'leader'")
    return (int(rows[0][0]), rows[0][1]) if rows else (0, None)


def leads(url: str, inst: Instance, after_epoch: int = 0) -> bool:
    """``inst`` holds the lease (in a term after ``after_epoch``) and its stages run."""
    try:
        epoch, holder = lease(url)
    except psycopg.Error:
        return False
    return holder == inst.name and epoch > after_epoch and "hazardwatch running" in inst.text()


def stored(url: str, tag: str) -> tuple[int, int]:
    """(rows, distinct timestamps) of one tag's readings."""
    rows = query(url, "SELECT count(*), count(DISTINCT r.ts) FROM readings r JOIN sensors s ON s.id = r.sensor_id"
                      " WHERE s.tag = %s", (tag,))
    return int(rows[0][0]), int(rows[0][1])


class Publisher:
    """A gateway: QoS 1, everything kept and resent while the broker is away."""

    def __init__(self, mqtt_url: str) -> None:
        u = urlsplit(mqtt_url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hwha2-gw-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883)
        self.client.loop_start()

    def publish(self, topic: str, doc: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stream(pub: Publisher, prefix: str, tag: str, start: datetime, first: int, n: int, per_batch: int = 10) -> None:
    """Readings ``first … first+n-1`` of ``tag``, 100 ms apart from ``start``, in batches."""
    for b in range(first, first + n, per_batch):
        points = [{"tag": tag, "value": 20.0 + (i % 7),
                   "ts": int((start + timedelta(milliseconds=100 * i)).timestamp() * 1000)}
                  for i in range(b, min(first + n, b + per_batch))]
        pub.publish(f"{prefix}/E1/data", {"ts": points[0]["ts"], "points": points})


def gas(pub: Publisher, prefix: str, tag: str, value: float = 60.0) -> None:
    """A combustible-gas reading above its second level (orange), stamped now."""
    pub.publish(f"{prefix}/E1/data", {"ts": int(datetime.now(UTC).timestamp() * 1000),
                                      "points": [{"tag": tag, "value": value}]})


@dataclass
class Figures:
    kind: str
    lease_s: float
    running_s: float
    published: int
    stored: int
    distinct: int
    sms: dict[str, int]
    duplicates: int


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    name = f"hwha2_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    u = urlsplit(admin_url)
    try:
        yield urlunsplit((u.scheme, u.netloc, f"/{name}", u.query, u.fragment))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def one_run(kind: str, db: str, mqtt_url: str, workdir: Path, *, ttl: str = "10s", readings: int = 400,
            stopped_for: float | None = None) -> Figures:
    """Kill (``kill``) or freeze (``stop``) the leader mid-stream and mid-escalation; the figures of the takeover."""
    sms = SmsSink()
    prefix = f"hwha2-{uuid.uuid4().hex[:8]}/hw/v1"
    config = workdir / "site.yaml"
    config.write_text(site_text(sms.url, town="6s", district="12s"), encoding="utf-8")
    a = start_instance("a", config, database_url=db, mqtt_url=mqtt_url, prefix=prefix, workdir=workdir, lease_ttl=ttl)
    insts = [a]
    pub = Publisher(mqtt_url)
    try:
        wait(lambda: leads(db, a), "a leads", 90)
        b = start_instance("b", config, database_url=db, mqtt_url=mqtt_url, prefix=prefix, workdir=workdir,
                           lease_ttl=ttl)
        insts.append(b)
        wait(b.healthy, "b serves its API", 90)
        epoch, _ = lease(db)
        start = datetime.now(UTC) - timedelta(minutes=2)
        gas(pub, prefix, "AT-1")
        wait(lambda: ENTERPRISE in sms.phones(), "the enterprise told", 60)
        stream(pub, prefix, "TT-1", start, 0, readings // 2)
        t0 = time.monotonic()
        a.signal(signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
        stream(pub, prefix, "TT-1", start, readings // 2, readings - readings // 2)
        wait(lambda: lease(db)[1] == "b" and lease(db)[0] > epoch, "b takes the lease", 120, every=0.01)
        lease_s = time.monotonic() - t0  # from the signal
        wait(lambda: leads(db, b, epoch), "b's stages run", 120)
        running_s = time.monotonic() - t0
        if kind == "stop":
            left = (stopped_for or 0) - (time.monotonic() - t0)
            if left > 0:
                time.sleep(left)  # a benchmark, not a test: the freeze lasts as long as asked
            a.signal(signal.SIGCONT)
            wait(lambda: "steps down" in a.text() or "standing by" in a.text(), "a steps down after its resume", 60)
        wait(lambda: stored(db, "TT-1")[0] >= readings, "every reading stored", 120)
        wait(lambda: {TOWN, DISTRICT} <= set(sms.phones()), "town and district told", 120)
        n, distinct = stored(db, "TT-1")
        per: dict[str, int] = {}
        for p in sms.phones():
            per[p] = per.get(p, 0) + 1
        return Figures(kind, lease_s, running_s, readings, n, distinct, per, sms.duplicates())
    finally:
        pub.close()
        for i in insts:
            i.stop()
        sms.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hazardwatch.benchmarks.failover", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True, help="a server where databases can be created (admin URL)")
    ap.add_argument("--mqtt-url", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ttl", default="10s", help="HAZARDWATCH_LEASE_TTL of both instances (default 10s)")
    ap.add_argument("--stopped-for", type=float, default=40.0, help="seconds the leader stays frozen (default 40)")
    ap.add_argument("--kinds", default="kill,stop")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    import tempfile

    out: dict[str, list[Figures]] = {}
    for kind in args.kinds.split(","):
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="hwha2-failover-", dir=args.workdir) as d, \
                    scratch_database(args.database_url) as db:
                f = one_run(kind, db, args.mqtt_url, Path(d), ttl=args.ttl, stopped_for=args.stopped_for)
            out.setdefault(kind, []).append(f)
            print(f"{kind} run {i + 1}: lease taken {f.lease_s:.2f} s, stages running {f.running_s:.2f} s, "
                  f"readings {f.stored}/{f.published} ({f.distinct} distinct), SMS per phone {f.sms}, "
                  f"repeated ids at the gateway {f.duplicates}", flush=True)
    for kind, fs in out.items():
        ls, rs = [f.lease_s for f in fs], [f.running_s for f in fs]
        lost = sum(f.published - f.distinct for f in fs)
        extra = sum(max(0, c - 1) for f in fs for c in f.sms.values())
        print(f"{kind}: takeover (lease) median {statistics.median(ls):.2f} s [{min(ls):.2f}–{max(ls):.2f}], "
              f"stages running median {statistics.median(rs):.2f} s [{min(rs):.2f}–{max(rs):.2f}]; "
              f"readings lost {lost}; SMS sent twice {extra}; repeated ids dropped by the gateway "
              f"{sum(f.duplicates for f in fs)} ({len(fs)} runs, lease ttl {args.ttl})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
