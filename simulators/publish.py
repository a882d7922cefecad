"""Publishing a simulated park through the contract: one gateway per enterprise, batches, Last Will."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from park.model import Park, SensorSpec
from park.site import SensorKind
from simulators.park import SCENARIOS, Incident, ParkModel

log = logging.getLogger("hazardwatch.simulator")


class Gateways:
    """One MQTT client per enterprise, each with ``status`` online retained and offline as its Last Will."""

    def __init__(self, url: str, prefix: str, enterprises: list[str]) -> None:
        u = urlsplit(url)
        self.prefix = prefix
        self.clients: dict[str, mqtt.Client] = {}
        for e in enterprises:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gw-{e}-{uuid.uuid4().hex[:6]}")
            c.will_set(f"{prefix}/{e}/status", json.dumps({"online": False}), qos=1, retain=True)
            c.max_inflight_messages_set(100)
            c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=15)
            c.loop_start()
            c.publish(f"{prefix}/{e}/status", json.dumps({"online": True}), qos=1, retain=True)
            self.clients[e] = c
        self.seq = dict.fromkeys(enterprises, 0)

    def point(self, ent: str, tag: str, ts: datetime, value: float) -> None:
        """A meter that publishes on its own: the contract's single-point form."""
        body = {"value": value, "ts": int(ts.timestamp() * 1000)}
        self.clients[ent].publish(f"{self.prefix}/{ent}/point/{tag}", json.dumps(body), qos=1)

    def batch(self, ent: str, ts: datetime, points: list[dict[str, object]]) -> None:
        self.seq[ent] += 1
        body = {"ts": int(ts.timestamp() * 1000), "seq": self.seq[ent], "points": points}
        self.clients[ent].publish(f"{self.prefix}/{ent}/data", json.dumps(body), qos=1)

    def drop(self, ent: str) -> None:
        """The gateway loses its link without saying goodbye: the broker publishes its Last Will."""
        c = self.clients[ent]
        c.loop_stop()
        sock = c.socket()
        if sock is not None:
            sock.close()

    def revive(self, ent: str, url: str) -> None:
        u = urlsplit(url)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gw-{ent}-{uuid.uuid4().hex[:6]}")
        c.will_set(f"{self.prefix}/{ent}/status", json.dumps({"online": False}), qos=1, retain=True)
        c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=15)
        c.loop_start()
        c.publish(f"{self.prefix}/{ent}/status", json.dumps({"online": True}), qos=1, retain=True)
        self.clients[ent] = c

    def close(self) -> None:
        for e, c in self.clients.items():
            c.publish(f"{self.prefix}/{e}/status", json.dumps({"online": True}), qos=1, retain=True)
            c.loop_stop()
            c.disconnect()


async def simulate(park: Park, url: str, prefix: str, *, seed: int = 7, start: datetime | None = None,
                   speed: float = 1.0, duration: timedelta | None = None, tick: timedelta = timedelta(seconds=10),
                   scenario_every: timedelta = timedelta(minutes=5), scenarios: tuple[str, ...] = SCENARIOS,
                   on_incident: Callable[[Incident], None] | None = None,
                   first_scenario_after: timedelta | None = None,
                   progress: Callable[[datetime, int], None] | None = None,
                   pace: Callable[[datetime, int], Awaitable[None]] | None = None) -> list[Incident]:
    """Publish the park from ``start`` at ``speed`` × real time; never ahead of the real clock.

    ``pace(t, messages)``, when given, is awaited after each tick with the time of the next tick and
    how many data messages have been published so far: a consumer on a fast fake clock holds the
    simulation back until it has taken in everything, so a stall under load is no gap in the data."""
    rng = random.Random(seed)
    model = ParkModel(park, seed)
    t = start or datetime.now(UTC)
    end = t + duration if duration else None
    by_ent: dict[str, list[SensorSpec]] = {}
    for s in park.sensors:
        by_ent.setdefault(s.enterprise, []).append(s)
    gw = await asyncio.to_thread(Gateways, url, prefix, list(by_ent))
    next_scenario = t + (scenario_every / 2 if first_scenario_after is None else first_scenario_after)
    k = 0
    sent = 0
    messages = 0
    try:
        while end is None or t < end:
            if t >= next_scenario and scenarios and (end is None or end - t >= timedelta(minutes=20)):
                inc = model.start(scenarios[k % len(scenarios)], t, rng)
                k += 1
                next_scenario = t + scenario_every
                log.info("scenario %s at %s in %s", inc.scenario, t.isoformat(timespec="seconds"), inc.enterprise)
                if inc.scenario == "gateway_offline":
                    await asyncio.to_thread(gw.drop, inc.enterprise)
                if on_incident:
                    on_incident(inc)
            for inc in model.expire(t):
                if inc.scenario == "gateway_offline":
                    await asyncio.to_thread(gw.revive, inc.enterprise, url)
            for ent, sensors in by_ent.items():
                if ent in model.offline:
                    continue
                pts = []
                for s in sensors:
                    v = model.value(s, t)
                    if v is None:
                        continue
                    if s.kind is SensorKind.POWER:  # power meters report on their own, one point each
                        gw.point(ent, s.tag, t, round(v, 1))
                        sent += 1
                        messages += 1
                    else:
                        pts.append({"tag": s.tag, "value": round(v, 4)})
                gw.batch(ent, t, pts)
                sent += len(pts)
                messages += 1
            if progress:
                progress(t, sent)
            t += tick
            if pace:
                await pace(t, messages)
            # hold back so simulated time never runs ahead of the real clock (ingest refuses the future)
            ahead = (t - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(ahead, tick.total_seconds() / speed if speed > 0 else 0.0, 0.0))
    finally:
        await asyncio.to_thread(gw.close)
    return model.truth
