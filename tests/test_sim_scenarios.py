"""The simulator: deterministic, every scenario with ground truth, scored offline and through the real pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

import rules.service
from park.clock import FakeClock
from park.model import Park
from park.sitefile import parse_site
from simulators.park import SCENARIOS, ParkModel, site_yaml
from simulators.publish import simulate
from simulators.score import AlarmRecord, offline_run, score
from tests.service_helpers import running_service

T = TypeVar("T")

T0 = datetime(2026, 11, 23, tzinfo=UTC)


async def _none() -> None:
    return None


async def until(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str, within: float = 120.0,
                every: float = 0.1) -> T:
    """Probe until ``ok`` holds; a generous deadline, never a timing."""
    deadline = time.monotonic() + within
    while True:
        got = await probe()
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what} (last {got!r})"
        await asyncio.sleep(every)


def demo_park(flatline: str = "2h") -> Park:
    return Park.from_site(parse_site(site_yaml(7, flatline_after=flatline), environ={}))


def test_the_demo_park_has_the_size_the_issue_names() -> None:
    c = demo_park().counts()
    assert (c["districts"], c["towns"], c["enterprises"]) == (2, 4, 12) and 250 <= c["sensors"] <= 350


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    p = demo_park()

    def stream(seed: int) -> list[float | None]:
        m = ParkModel(p, seed)
        return [m.value(s, T0 + timedelta(seconds=10 * k)) for k in range(5) for s in p.sensors[:40]]

    assert stream(7) == stream(7)
    assert stream(7) != stream(8)
    assert site_yaml(7) == site_yaml(7)


def test_physical_models_stay_normal_without_incidents() -> None:
    p = demo_park()
    m = ParkModel(p, 7)
    for k in range(0, 86400, 600):
        for s in p.sensors:
            v = m.value(s, T0 + timedelta(seconds=k))
            assert v is not None
            lim = s.limits
            if lim.hh is not None and s.kind.value != "power":
                assert v < lim.hh, (s.tag, v)


def test_offline_score_every_scenario_detected_early_and_few_nuisance_alarms() -> None:
    result = offline_run(demo_park("20m"), hours=4, scenario_every=timedelta(minutes=25))
    assert {s.incident.scenario for s in result.incidents} == set(SCENARIOS)
    missed = [s.incident.scenario for s in result.incidents if not s.detected]
    assert missed == [], result.table()
    leads = [s.lead_minutes for s in result.incidents if s.lead_minutes is not None]
    assert leads and min(leads) > 0, "early warnings must come before the plain HH crossing"
    assert result.nuisance_per_hour <= 6, result.table()  # ISA-18.2: acceptable for one operator


def test_each_scenario_through_the_real_broker_and_database(make_database, mqtt_url: str, topic_prefix: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Published over MQTT, stored by ingest, judged by rules: the stored data and alarms match the ground truth."""
    monkeypatch.setattr(rules.service, "TICK_MAX", 0.1)  # ticks follow the fast simulated clock
    db = make_database("timescaledb", "hws")
    site = parse_site(site_yaml(7, flatline_after="20m"), environ={})
    duration = timedelta(minutes=240)
    start = datetime.now(UTC).replace(microsecond=0) - duration - timedelta(minutes=10)
    clock = FakeClock(start)

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, clock) as (h, _client):
            published = [0]
            orders: list[asyncio.Task[Any]] = []

            def follow(_t: datetime, sent: int) -> None:
                published[0] = sent

            def data_messages_taken_in() -> float:
                got = h.registry.get_sample_value
                status = sum(got("hazardwatch_ingest_gateway_status_total", {"online": o}) or 0.0
                             for o in ("true", "false"))
                return (got("hazardwatch_ingest_messages_total") or 0.0) - status

            async def pace(t: datetime, messages: int) -> None:
                # ingest stamps arrival and the rules tick on this clock: it moves on only once ingest has
                # taken in every message so far, so a stall under load is never minutes of silence
                await until(_none, lambda _: data_messages_taken_in() >= messages, "ingest took in the tick",
                            every=0.005)
                while orders:  # an operator's order (a stop) is in force before the clock moves on
                    await orders.pop()
                clock.set(t)

            drops = [0]

            def offline_taken_in() -> float:
                return h.registry.get_sample_value("hazardwatch_ingest_gateway_status_total",
                                                   {"online": "false"}) or 0.0

            def stop_ordered(inc: object) -> None:
                if getattr(inc, "scenario", "") == "gateway_offline":
                    # the broker sends the dropped gateway's Last Will on its own time, not the clock's: at
                    # 400 × a late one would shorten the outage the rules see; the clock waits for it
                    drops[0] += 1
                    n = drops[0]
                    orders.append(asyncio.get_running_loop().create_task(until(
                        _none, lambda _: offline_taken_in() >= n, "the dropped gateway's Last Will taken in",
                        every=0.005)))
                if getattr(inc, "scenario", "") == "production_during_stop":
                    from park.site import EnterpriseState
                    orders.append(asyncio.get_running_loop().create_task(
                        h.rules.set_enterprise_state(inc.enterprise, EnterpriseState.STOPPED, "测试")))  # type: ignore[attr-defined]

            truth = await simulate(h.park, mqtt_url, topic_prefix, start=start, speed=400, duration=duration,
                                   scenario_every=timedelta(minutes=25), progress=follow, on_incident=stop_ordered,
                                   pace=pace)
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
                # caught up: every published reading stored, and the rules have judged all ingest handed them
                async def stored() -> int:
                    cur = await conn.execute("SELECT count(*) FROM readings")
                    return (await cur.fetchone())[0]  # type: ignore[index,no-any-return]

                await until(lambda: stored(), lambda n: n >= published[0], "every published reading stored")
                await until(lambda: _none(), lambda _: h.rules.inbox.empty(), "the rules judged every batch")
                await h.rules.tick()  # under the stage's lock: any judgement in flight is committed
                for inc in truth:
                    if inc.scenario == "gateway_offline":
                        cur = await conn.execute(
                            "SELECT count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id"
                            " WHERE s.enterprise_code = %s AND r.ts > %s AND r.ts < %s",
                            (inc.enterprise, inc.start + timedelta(seconds=30), inc.end - timedelta(seconds=30)))
                        assert (await cur.fetchone())[0] == 0, "an offline gateway published nothing"  # type: ignore[index]
                        cur = await conn.execute("SELECT count(*) FROM gateway_events WHERE enterprise_code = %s"
                                                 " AND NOT online", (inc.enterprise,))
                        assert (await cur.fetchone())[0] >= 1, "its Last Will was recorded"  # type: ignore[index]
                    elif inc.hh_at is not None:
                        spec = h.park.by_key[(inc.enterprise, inc.tags[0])]
                        cur = await conn.execute(
                            "SELECT max(value) FROM readings WHERE sensor_id = %s AND ts BETWEEN %s AND %s",
                            (spec.id, inc.start, inc.hh_at + timedelta(minutes=1)))
                        peak = (await cur.fetchone())[0]  # type: ignore[index]
                        assert spec.limits.hh is not None and peak >= spec.limits.hh, (inc.scenario, peak)
                cur = await conn.execute("SELECT enterprise_code, tag, rule, severity, raised_at FROM alarms")
                alarms = [AlarmRecord(*r) for r in await cur.fetchall()]
                cur = await conn.execute("SELECT count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id"
                                         " WHERE s.kind = 'power'")
                assert (await cur.fetchone())[0] > 0, "single-point meters stored"  # type: ignore[index]
            result = score(truth, alarms, duration / timedelta(hours=1))
            missed = [s.incident.scenario for s in result.incidents if not s.detected]
            assert missed == [], result.table()
            assert {s.incident.scenario for s in result.incidents} == set(SCENARIOS)

    asyncio.run(go())
