"""Load generator: E enterprises × P points published through the contract, from its own process.

Used by ``hazardwatch bench ingest`` and ``hazardwatch simulate --load``. Gas detectors near zero,
so the load exercises ingest and the rules without raising alarms.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt


@dataclass(frozen=True, slots=True)
class LoadSpec:
    enterprises: int = 200
    points: int = 50
    mode: str = "batch"  # batch: one message per enterprise per tick; single: one per point
    messages: int = 1000
    rate: float = 0.0  # messages per second; 0 = as fast as the broker takes them
    seed: int = 1
    t0_ms: int = 0  # readings are stamped from here on, one tick per step_ms; 0: an hour before now
    realtime: bool = False  # stamp each message with the time it is published instead
    topic: str = "data"  # batches on {prefix}/{enterprise}/data, or "backfill": history re-sent after an outage
    step_ms: int = 1000  # between ticks: below a second, a queue of live readings fits inside the backfill bound


def recent_t0_ms() -> int:
    """An hour before now, on the minute: readings inside the backfill bound, the same in every process
    that asks within the minute (pass it explicitly to be sure)."""
    return (int(time.time()) // 60 * 60 - 3600) * 1000


def live_stamps(ticks: int, lead_ms: int = 30_000) -> tuple[int, int]:
    """(t0_ms, step_ms) for ``ticks`` ticks of readings that arrive live when a queue of them is drained
    within about a minute of publishing: the newest stamped ``lead_ms`` ahead of now (well inside the
    5 minutes the door allows), the oldest at most a minute before that, so none is older than the
    backfill bound (2 minutes) on arrival — as a park's steady stream, not a backlog."""
    step = max(1, min(1000, 60_000 // max(1, ticks)))
    return int(time.time() * 1000) + lead_ms - ticks * step, step


def enterprise_code(i: int) -> str:
    return f"L{i:05d}"


def tag(j: int) -> str:
    return f"AT-{j:04d}"


def site_yaml(enterprises: int, points: int, name: str = "负载测试园区", toxic: int = 0,
              toxic_enterprises: int | None = None) -> str:
    """A valid site file with the load's sensors (combustible gas: standard limits, no config), and
    ``toxic`` H2S detectors (tags ``TX-0000`` …) for alarms that must go out at once, on each of the
    first ``toxic_enterprises`` enterprises (default: every one)."""
    lines = [f"site: {{name: {name}}}", "districts:", "  - code: LD", "    name: 负载区", "    towns:"]
    per_town = 250
    for t in range((enterprises + per_town - 1) // per_town):
        lines += [f"      - code: LT{t:03d}", f"        name: 负载镇{t}", "        enterprises:"]
        for i in range(t * per_town, min(enterprises, (t + 1) * per_town)):
            lines += [f"          - code: {enterprise_code(i)}", f"            name: 负载企业{i}",
                      "            sensors:"]
            lines += [f"              - {{tag: {tag(j)}, kind: gas_combustible}}" for j in range(points)]
            lines += [f"              - {{tag: TX-{j:04d}, kind: gas_toxic, gas: H2S, unit: mg/m3}}"
                      for j in range(toxic if toxic_enterprises is None or i < toxic_enterprises else 0)]
    return "\n".join(lines) + "\n"


def messages(spec: LoadSpec, prefix: str) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(spec.seed)
    sent = 0
    tick = 0
    t0_ms = spec.t0_ms or recent_t0_ms()
    while sent < spec.messages:
        ts = int(time.time() * 1000) if spec.realtime else t0_ms + tick * spec.step_ms
        for e in range(spec.enterprises):
            code = enterprise_code(e)
            if spec.mode == "batch":
                pts = [{"tag": tag(j), "value": round(rng.random() * 2, 3)} for j in range(spec.points)]
                yield f"{prefix}/{code}/{spec.topic}", orjson.dumps({"ts": ts, "seq": tick, "points": pts})
                sent += 1
                if sent >= spec.messages:
                    return
            else:
                for j in range(spec.points):
                    yield (f"{prefix}/{code}/point/{tag(j)}",
                           orjson.dumps({"value": round(rng.random() * 2, 3), "ts": ts}))
                    sent += 1
                    if sent >= spec.messages:
                        return
        tick += 1


def publish(url: str, prefix: str, spec: LoadSpec, inflight: int = 2000) -> tuple[int, float]:
    """Publish the load at QoS 1; return (messages, seconds) once the broker has acknowledged all."""
    u = urlsplit(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hw-load-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=60)
    client.loop_start()
    t0 = time.perf_counter()
    infos = []
    n = 0
    for topic, payload in messages(spec, prefix):
        infos.append(client.publish(topic, payload, qos=1))
        n += 1
        if spec.rate > 0:
            ahead = n / spec.rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
        if len(infos) >= 5000:
            for i in infos:
                i.wait_for_publish(60)
            infos.clear()
    for i in infos:
        i.wait_for_publish(60)
    elapsed = time.perf_counter() - t0
    client.loop_stop()
    client.disconnect()
    return n, elapsed


def _child(url: str, prefix: str, spec: LoadSpec, out: mp.Queue) -> None:
    out.put(publish(url, prefix, spec))


def publish_in_process(url: str, prefix: str, spec: LoadSpec) -> tuple[int, float]:
    """Publish from a separate process (so the publisher never competes for our GIL)."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(url, prefix, spec, q), daemon=True)
    p.start()
    result = q.get(timeout=600)
    p.join(30)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.load", description="publish a synthetic load")
    ap.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--prefix", default="hw/v1")
    ap.add_argument("--enterprises", type=int, default=200)
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--mode", choices=["batch", "single"], default="batch")
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)")
    ap.add_argument("--site-out", help="also write the matching site file here")
    a = ap.parse_args(argv)
    if a.site_out:
        with open(a.site_out, "w", encoding="utf-8") as f:
            f.write(site_yaml(a.enterprises, a.points))
    n, secs = publish(a.mqtt_url, a.prefix, LoadSpec(a.enterprises, a.points, a.mode, a.messages, a.rate,
                                                     t0_ms=recent_t0_ms()))
    print(f"published {n} messages in {secs:.1f}s ({n / secs:,.0f} msg/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
