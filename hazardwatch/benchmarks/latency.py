"""``hazardwatch bench latency``: reading-to-first-notification latency with ingest under load.

The service runs as its own process (``hazardwatch run``); a separate process publishes the
background load (50-point gateway batches at the given rate); this process publishes, every
half second, a reading that crosses a combustible-gas second level on a fresh sensor and times
the first request reaching a local SMS gateway. Prints p50 / p99 next to the 500 ms target.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import paho.mqtt.client as mqtt
import psycopg

from simulators.load import LoadSpec, publish, site_yaml


def _sms_server(arrivals: dict[str, float]) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:
            t = time.perf_counter()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if "二级报警" in body["text"]:  # the HH message of a trigger, not some other alarm's
                ent = "L" + body["phone"][-1].rjust(5, "0")
                tag = body["text"].split("(")[1].split(")")[0]
                arrivals.setdefault(f"{ent}/{tag}", t)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _load(url: str, prefix: str, spec: LoadSpec) -> None:
    publish(url, prefix, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazardwatch bench latency", description=__doc__.split("\n")[0])
    ap.add_argument("--mqtt-url", default=os.environ.get("HW_TEST_MQTT_URL", "mqtt://127.0.0.1:18830"))
    ap.add_argument("--db-admin-url", default=os.environ.get("HW_TEST_TSDB_URL",
                                                             "postgresql://postgres@127.0.0.1:5433/postgres"))
    ap.add_argument("--load", type=float, default=50_000, help="background readings per second")
    ap.add_argument("--samples", type=int, default=40)
    a = ap.parse_args(argv)
    arrivals: dict[str, float] = {}
    sms = _sms_server(arrivals)
    name = f"hwlat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(a.db_admin_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    u = urlsplit(a.db_admin_url)
    db = urlunsplit((u.scheme, u.netloc, f"/{name}", "", ""))
    prefix = f"lat{uuid.uuid4().hex[:6]}/hw/v1"
    enterprises, points = 200, 50
    text = site_yaml(enterprises, points).replace(
        "site: {name: 负载测试园区}",
        f"site: {{name: 负载测试园区}}\nchannels: {{sms: {{provider: http, url: 'http://127.0.0.1:{sms.server_address[1]}/send'}}}}"
        # 40 alarms in 20 s is a flood (ISA-18.2) that alerting would fold into summaries: time single alarms
        "\nalarm_management: {flood_count: 100000}")
    # ten enterprises with a contact: triggers rotate over them so no enterprise reaches a flood
    # (10 alarms in 10 minutes), in which alerting would rightly send one summary instead
    for e in range(10):
        text = text.replace(f"            name: 负载企业{e}\n", f"            name: 负载企业{e}\n"
                            f"            contacts: [{{name: 安全员, phone: '1390000000{e}', channels: [sms]}}]\n", 1)
    proc = None
    try:
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "site.yaml"
            cfg.write_text(text, encoding="utf-8")
            env = dict(os.environ, HAZARDWATCH_DATABASE_URL=db, HAZARDWATCH_MQTT_URL=a.mqtt_url,
                       HAZARDWATCH_MQTT_PREFIX=prefix, HAZARDWATCH_HTTP_ADDR="127.0.0.1:0",
                       HAZARDWATCH_MQTT_CLIENT_ID=f"lat-{uuid.uuid4().hex[:6]}", PYTHONUNBUFFERED="1")
            proc = subprocess.Popen([str(Path(sys.executable).with_name("hazardwatch")), "run", "--config", str(cfg)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                if "hazardwatch running" in line:
                    break
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            duration = a.samples * 0.5 + 10
            spec = LoadSpec(enterprises, points, "batch", int(a.load / points * duration), a.load / points,
                            realtime=True)
            ctx = mp.get_context("spawn")
            loader = ctx.Process(target=_load, args=(a.mqtt_url, prefix, spec), daemon=True)
            loader.start()
            print(f"background load: {a.load:,.0f} readings/s for {duration:.0f} s; {a.samples} alarms timed …",
                  flush=True)
            time.sleep(5)
            pu = urlsplit(a.mqtt_url)
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lat-pub-{uuid.uuid4().hex[:6]}")
            pub.connect(pu.hostname or "127.0.0.1", pu.port or 1883)
            pub.loop_start()
            sent: dict[str, float] = {}
            for k in range(min(a.samples, points * 10)):
                ent, tag = f"L{k % 10:05d}", f"AT-{k // 10:04d}"
                sent[f"{ent}/{tag}"] = time.perf_counter()
                pub.publish(f"{prefix}/{ent}/point/{tag}", json.dumps({"value": 60, "ts": int(time.time() * 1000)}),
                            qos=1)
                time.sleep(0.5)
            time.sleep(5)
            pub.loop_stop()
            pub.disconnect()
            loader.join(60)
            lat = np.array([arrivals[t] - s for t, s in sent.items() if t in arrivals]) * 1000
            missing = len(sent) - len(lat)
            with psycopg.connect(db) as c:
                stored = c.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
            print(f"readings stored during the run: {stored:,}")
            if len(lat):
                p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
                print(f"reading → first SMS request: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat.max():.0f} ms "
                      f"over {len(lat)} alarms ({missing} missing) — target p99 < 500 ms {'✓' if p99 < 500 else '✗'}")
            else:
                print("✗ no notification arrived")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        sms.shutdown()
        sms.server_close()
        with psycopg.connect(a.db_admin_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return 0
