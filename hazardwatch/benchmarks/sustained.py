"""``python -m hazardwatch.benchmarks.sustained --minutes 30``: the whole service under steady load
for a long while, with the simulator's incidents mixed in (issue 16's sustained run).

The service runs as its own process (``hazardwatch run``, flood handling on as shipped) on a site
made of two parks: the load park (200 enterprises × 50 combustible detectors, plus toxic
detectors whose contacts get SMS) and the simulator's demo park (12 enterprises, every scenario:
leaks, overfills, runaway temperatures, a gateway dropping off, chattering …). Three publishers
(the first two, standing for the parks' gateways, at ``nice 10`` as in ``bench latency``):

- the background load: 50-point gateway batches at ``--load`` readings/s, stamped at publish time;
- the simulator (``simulators.publish.simulate``) at real time, a scenario every ``--scenario-every``;
- every 2 s a reading over a toxic second level (red) on a fresh detector, timed from publish to
  the first SMS request naming it at a local SMS gateway. The toxic detectors report every 10 s (0,
  a batch per enterprise), as real ones do; a leak lasts ``--clear-after`` seconds (the detector
  reports 60 meanwhile), and the enterprise's safety officer acknowledges with the link in the SMS
  ``--ack-after`` seconds after it arrived (a POST to the service's ``/ack/{token}``, as the phone's
  browser sends it): the alarm goes through its whole life — raised, told, cleared, acknowledged,
  closed. ``--ack-after 0`` leaves every timed alarm unacknowledged (each then escalates and stays
  in memory, by design, until someone does).

Every 10 s it samples the service's resident memory and ``hazardwatch_ingest_lag_seconds`` (now
minus the newest reading of the last batch decoded), written to ``--samples`` as they come, and each
timed alarm's reading → first SMS to ``--latencies`` at the end. At the
end it prints memory growth (second tenth of the run against the last tenth), lag (median, p99, max),
the timed alarms notified and missing (a missing SMS is a failure), p99 reading → first SMS, and
every alarm the run raised with whether a notification for it was sent. A script with figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt
import psycopg

from hazardwatch.benchmarks.ingest import _end_session, scratch_database
from hazardwatch.benchmarks.latency import CONTACTS, ENTERPRISES, POINTS, TARGET_MS, SmsStandIn, _rss_mb, latency_site
from hazardwatch.benchmarks.scale import _free_port, _metric
from simulators.load import LoadSpec, publish

EVERY = 2.0  # seconds between timed alarms
SAMPLE = 10.0  # seconds between memory and lag samples
GROWTH_BAR = 0.05
WAIT_AFTER = 15.0  # seconds a timed alarm may take before it counts as missing
DETECTORS_EVERY = 10.0  # seconds between the toxic detectors' reports (a batch per enterprise)


def sustained_site(sms_port: int, triggers: int) -> str:
    """The load park and the simulator's demo park in one site file."""
    from simulators.park import site_yaml as demo_yaml

    load = latency_site(sms_port, triggers)
    head, _, load_districts = load.partition("districts:\n")
    # a contact on every demo enterprise, so that every alarm of theirs has someone to tell
    demo = demo_yaml(console=False).replace(
        "            approved_load_kw: 2000\n",
        "            approved_load_kw: 2000\n"
        "            contacts: [{name: 值班安全员, phone: '13900000099', channels: [sms]}]\n")
    demo_head, _, demo_districts = demo.partition("districts:\n")
    # the demo park's alarm management and the SMS channel; both parks' districts
    head_lines = [x for x in demo_head.splitlines() if not x.startswith(("site:", "channels:"))]
    sms = next(x for x in head.splitlines() if x.startswith("channels:"))
    return "\n".join(["site: {name: 负载与演示园区}", *head_lines, sms, "districts:"]) + "\n" + demo_districts \
        + load_districts


def _simulate(url: str, prefix: str, every_s: float, truth: str) -> None:
    os.nice(10)  # the demo park's gateways: other machines (as the load's, below)
    from park.model import Park
    from park.sitefile import parse_site
    from simulators.park import site_yaml as demo_yaml
    from simulators.publish import simulate

    park = Park.from_site(parse_site(demo_yaml(console=False), environ={}))

    def note(inc: object) -> None:
        with open(truth, "a", encoding="utf-8") as f:
            f.write(json.dumps(inc.as_dict(), ensure_ascii=False) + "\n")  # type: ignore[attr-defined]

    asyncio.run(simulate(park, url, prefix, scenario_every=timedelta(seconds=every_s),
                         first_scenario_after=timedelta(seconds=min(60.0, every_s)), on_incident=note))


def _load(url: str, prefix: str, spec: LoadSpec) -> None:
    """At a lower CPU priority, as in ``bench latency``: the publisher stands for the park's gateways,
    other machines; here it would take a third of a core from the service, the broker and the database."""
    os.nice(10)
    publish(url, prefix, spec)


class DutyRoom:
    """Acknowledges each timed alarm with the link of its first SMS, ``after`` seconds after it arrived."""

    def __init__(self, sms: SmsStandIn, after: float) -> None:
        self.sms, self.after = sms, after
        self.acked: set[str] = set()
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if after > 0:
            self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            now = time.perf_counter()
            for key, t in list(self.sms.arrivals.items()):
                if key in self.acked or now - t < self.after:
                    continue
                self.acked.add(key)
                m = re.search(r"https?://\S+/ack/[\w.~-]+", self.sms.texts.get(key, ""))
                if m is None:
                    self.failed.append(f"{key}: no acknowledgement link in its SMS")
                    continue
                try:
                    with urllib.request.urlopen(urllib.request.Request(m.group(0), data=b"", method="POST"),
                                                timeout=30) as r:
                        r.read()
                except OSError as e:
                    self.failed.append(f"{key}: {e}")


def run(mqtt_url: str, admin: str, minutes: float, load: float, scenario_every: float,
        service_log: str = "sustained-service.log", clear_after: float = 10.0, ack_after: float = 30.0,
        samples_file: str = "sustained-samples.tsv", latency_file: str = "sustained-latency.tsv") -> int:
    seconds = minutes * 60
    triggers = int(seconds / EVERY)
    sms = SmsStandIn()
    prefix = f"sus{uuid.uuid4().hex[:6]}/hw/v1"
    cid = f"sus-{uuid.uuid4().hex[:6]}"
    http = _free_port()
    ok = True
    try:
        with scratch_database(admin, "hwsustained") as db, tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "site.yaml"
            cfg.write_text(sustained_site(sms.server.server_address[1], triggers), encoding="utf-8")
            truth = str(Path(d) / "truth.jsonl")
            env = dict(os.environ, HAZARDWATCH_DATABASE_URL=db, HAZARDWATCH_MQTT_URL=mqtt_url,
                       HAZARDWATCH_MQTT_PREFIX=prefix, HAZARDWATCH_HTTP_ADDR=f"127.0.0.1:{http}",
                       HAZARDWATCH_MQTT_CLIENT_ID=cid, HAZARDWATCH_DATA_DIR=d,
                       PYTHONUNBUFFERED="1")
            proc = subprocess.Popen([str(Path(sys.executable).with_name("hazardwatch")), "run", "--config", str(cfg)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                if "hazardwatch running" in line:
                    break
                if "✗" in line or "Traceback" in line:
                    raise RuntimeError(line + proc.stdout.read()[-3000:])
            log_file = open(service_log, "w", encoding="utf-8", buffering=1)

            def keep_log() -> None:  # the service's own log, to read after the run
                for line in proc.stdout:  # type: ignore[union-attr]
                    log_file.write(line)
                log_file.close()

            threading.Thread(target=keep_log, daemon=True).start()
            Path(samples_file).write_text("seconds\trss_mb\tlag_s\n", encoding="utf-8")
            print(f"the service's log: {service_log}; memory and lag every {SAMPLE:.0f} s: {samples_file}", flush=True)
            ctx = mp.get_context("spawn")
            spec = LoadSpec(ENTERPRISES, POINTS, "batch", int(load / POINTS * (seconds + WAIT_AFTER)), load / POINTS,
                            realtime=True)
            workers = [ctx.Process(target=_load, args=(mqtt_url, prefix, spec), daemon=True),
                       ctx.Process(target=_simulate, args=(mqtt_url, prefix, scenario_every, truth), daemon=True)]
            for p in workers:
                p.start()
            samples: list[tuple[float, float, float]] = []  # (s since start, RSS MB, lag s)
            stop = threading.Event()
            t0 = time.perf_counter()

            def sample() -> None:
                while not stop.wait(SAMPLE):
                    try:
                        lag = _metric(http, "hazardwatch_ingest_lag_seconds")
                    except OSError:
                        lag = float("nan")
                    at, rss = time.perf_counter() - t0, _rss_mb(proc.pid)
                    samples.append((at, rss, lag))
                    with open(samples_file, "a", encoding="utf-8") as f:  # where memory steps, the lag then
                        f.write(f"{at:.0f}\t{rss:.1f}\t{lag:.2f}\n")

            threading.Thread(target=sample, daemon=True).start()
            print(f"sustained run: {minutes:g} min, background {load:,.0f} readings/s, simulator scenarios every "
                  f"{scenario_every:.0f} s, a timed red alarm every {EVERY:.0f} s"
                  + (f", its detector back to 0 after {clear_after:g} s and the alarm acknowledged by its SMS link "
                     f"{ack_after:g} s after the SMS" if ack_after > 0 else ", never acknowledged"),
                  flush=True)
            duty = DutyRoom(sms, ack_after)
            u = urlsplit(mqtt_url)
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sus-pub-{uuid.uuid4().hex[:6]}")
            pub.connect(u.hostname or "127.0.0.1", u.port or 1883)
            pub.loop_start()
            time.sleep(5)  # the load is flowing before the first trigger
            sent: dict[str, float] = {}
            lag_k = int(clear_after / EVERY)
            per_ent = (triggers + CONTACTS - 1) // CONTACTS
            for k in range(triggers):
                e, tag = k % CONTACTS, f"TX-{k // CONTACTS:04d}"
                key = f"L{e:05d}/{tag}"
                sms.expect(key, f"1390000000{e}", tag)
                sent[key] = time.perf_counter()
                pub.publish(f"{prefix}/L{e:05d}/point/{tag}", json.dumps({"value": 60, "ts": int(time.time() * 1000)}),
                            qos=1)
                if k % int(DETECTORS_EVERY / EVERY) == 0:  # every toxic detector reports, the leaking ones 60
                    leaking = {(j % CONTACTS, j // CONTACTS) for j in range(max(0, k - lag_k), k + 1)}
                    ts_ms = int(time.time() * 1000)
                    for ent in range(CONTACTS):
                        pts = [{"tag": f"TX-{t:04d}", "value": 60 if (ent, t) in leaking else 0}
                               for t in range(per_ent)]
                        pub.publish(f"{prefix}/L{ent:05d}/data", json.dumps({"ts": ts_ms, "points": pts}), qos=1)
                next_at = t0 + 5 + (k + 1) * EVERY
                time.sleep(max(0.0, next_at - time.perf_counter()))
                if k and k % int(60 / EVERY) == 0 and samples:
                    _, rss, lag = samples[-1]
                    print(f"  {(time.perf_counter() - t0) / 60:4.1f} min: RSS {rss:.0f} MB, lag {lag:.2f} s, "
                          f"{len(sms.arrivals)}/{len(sent)} timed alarms notified", flush=True)
            last_trigger = time.time()
            time.sleep(WAIT_AFTER)
            duty.stop.set()
            pub.loop_stop()
            pub.disconnect()
            stop.set()
            # before the simulator stops (its gateways' Last Will would raise alarms of its own); alarms
            # raised after the last trigger have had less than WAIT_AFTER to be told and are left out
            with psycopg.connect(db) as c:
                stored = c.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
                rows = c.execute(
                    "SELECT a.rule, a.severity, a.enterprise_code LIKE 'L%%' AS load_park,"
                    # told: its own message sent, or folded into a flood summary that was sent
                    "       EXISTS (SELECT 1 FROM outbox o WHERE o.alarm_id = a.id AND (o.status = 'sent'"
                    "               OR o.status = 'folded' AND EXISTS (SELECT 1 FROM outbox f WHERE f.unit_code ="
                    "                  o.unit_code AND f.step LIKE 'flood-%%' AND f.status = 'sent')))"
                    "  FROM alarms a WHERE a.raised_at < to_timestamp(%s)", (last_trigger,)).fetchall()
                still_open = c.execute("SELECT state, count(*) FROM alarms WHERE state <> 'closed' GROUP BY state"
                                       " ORDER BY state").fetchall()
            for p in workers:
                p.terminate()
                p.join(30)
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print("✗ the service did not stop within 30 s of SIGTERM; killed", flush=True)
                proc.kill()
                proc.wait(30)
            with contextlib.suppress(OSError):  # the broker keeps no queue for a service that is gone
                _end_session(mqtt_url, cid)
            incidents = [json.loads(x) for x in Path(truth).read_text(encoding="utf-8").splitlines()] \
                if Path(truth).exists() else []
        lat = np.array([(sms.arrivals[k] - t) * 1000 for k, t in sent.items() if k in sms.arrivals])
        with open(latency_file, "w", encoding="utf-8") as f:  # which alarms were slow, and when
            f.write("seconds\talarm\tms\n")
            for key, at in sent.items():
                ms = f"{(sms.arrivals[key] - at) * 1000:.0f}" if key in sms.arrivals else "missing"
                f.write(f"{at - t0:.1f}\t{key}\t{ms}\n")
        missing = len(sent) - len(lat)
        print()
        if len(samples) >= 6:
            early = float(np.mean([m for _, m, _ in samples[len(samples) // 10: len(samples) // 5 + 1]]))
            late = float(np.mean([m for _, m, _ in samples[-max(1, len(samples) // 10):]]))
            growth = late / early - 1
            ok &= growth < GROWTH_BAR
            print(f"memory: {early:.0f} MB early, {late:.0f} MB at the end ({growth:+.1%}; bar < +{GROWTH_BAR:.0%}) "
                  f"{'✓' if growth < GROWTH_BAR else '✗'}")
        else:
            print(f"memory: too short a run to compare ({len(samples)} samples)")
        lags = np.array([x for _, _, x in samples if x == x])
        if len(lags):
            print(f"lag (now − newest reading decoded): median {np.median(lags):.2f} s, p99 "
                  f"{np.percentile(lags, 99):.2f} s, max {lags.max():.2f} s over {len(lags)} samples")
        if len(lat):
            p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
            good = missing == 0 and p99 < TARGET_MS
            ok &= good
            print(f"reading → first SMS: {len(lat)}/{len(sent)} timed red alarms notified, {missing} missing; "
                  f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat.max():.0f} ms (bar p99 < {TARGET_MS:.0f} ms, none "
                  f"missing) {'✓' if good else '✗'}")
        else:
            ok = False
            print(f"reading → first SMS: ✗ none of {len(sent)} timed alarms was notified")
        demo = [r for r in rows if not r[2]]  # the load park's own alarms are the timed ones
        kinds: dict[str, list[int]] = {}
        for r in demo:
            kinds.setdefault(f"{r[0]}/{r[1]}", [0, 0])[0] += 1
            kinds[f"{r[0]}/{r[1]}"][1] += int(r[3])
        told = ", ".join(f"{k} {n} raised, {m} told" for k, (n, m) in sorted(kinds.items()))
        print(f"simulator: {len(incidents)} incidents ({', '.join(i['scenario'] for i in incidents) or 'none'}); "
              f"alarms in the demo park: {told or 'none'} (told: an SMS for it, or a flood summary holding it, "
              "sent by the end of the run)")
        if ack_after > 0:
            print(f"duty room: {len(duty.acked) - len(duty.failed)} timed alarms acknowledged by their SMS link"
                  + (f", ✗ {len(duty.failed)} failed (first: {duty.failed[0]})" if duty.failed else ""))
            ok &= not duty.failed
        print("alarms open at the end: " + (", ".join(f"{n} {st}" for st, n in still_open) or "none"))
        print(f"readings stored: {stored:,} ({stored / seconds:,.0f}/s over the run)")
    finally:
        sms.close()
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hazardwatch.benchmarks.sustained", description=__doc__.split("\n")[0])
    ap.add_argument("--mqtt-url", default=os.environ.get("HW_TEST_MQTT_URL", "mqtt://127.0.0.1:18830"))
    ap.add_argument("--db-admin-url", default=os.environ.get("HW_TEST_TSDB_URL",
                                                             "postgresql://postgres@127.0.0.1:5433/postgres"))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--load", type=float, default=50_000, help="background readings per second")
    ap.add_argument("--service-log", default="sustained-service.log",
                    help="where the service's own log is written (to read after the run)")
    ap.add_argument("--samples", default="sustained-samples.tsv",
                    help="where the memory and lag samples are written (seconds, RSS MB, lag s)")
    ap.add_argument("--latencies", default="sustained-latency.tsv",
                    help="where each timed alarm's reading → first SMS is written (seconds, alarm, ms)")
    ap.add_argument("--scenario-every", type=float, default=120.0, help="seconds between simulator scenarios")
    ap.add_argument("--clear-after", type=float, default=10.0,
                    help="seconds after a timed alarm's red reading that its detector reads 0 again")
    ap.add_argument("--ack-after", type=float, default=30.0,
                    help="seconds after its SMS that a timed alarm is acknowledged by its link (0: never)")
    a = ap.parse_args(argv)
    return run(a.mqtt_url, a.db_admin_url, a.minutes, a.load, a.scenario_every, a.service_log, a.clear_after,
               a.ack_after, a.samples, a.latencies)


if __name__ == "__main__":
    raise SystemExit(main())
