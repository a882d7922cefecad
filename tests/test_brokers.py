"""Several MQTT brokers (issue 13, part 3): gateways publish to whichever broker they reach.

Settings (one URL as before, several comma-separated or in ``mqtt.urls``), the rule engine's
"broker unreachable" alarm and its recipients, then the whole service on two real Mosquitto
processes of the test's own: one is stopped mid-stream and started again (every reading stored
exactly once, the alarm raised on an injected clock and cleared), and a reading delivered by both
brokers is judged once (one alarm event, one chatter count).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerting.escalation import Escalator
from park.clock import FakeClock
from park.errors import SettingsError, SiteFileError
from park.settings import EnvSettings, load_settings
from park.sitefile import parse_site
from park.types import PARK_SCOPE, AlarmEvent, AlarmEventKind, BrokerState
from park.wording import alarm_text
from rules.engine import RuleEngine
from rules.store import message
from tests.ingest_helpers import PrivateBroker, Publisher, until
from tests.rules_helpers import SITE, Driver, at, park
from tests.service_helpers import StandIns, running_service, token_for

# --- settings --------------------------------------------------------------------------------------


def test_one_url_works_exactly_as_before() -> None:
    s = load_settings(None, EnvSettings(mqtt_url="mqtt://user:pa,ss@mq.example:1884"))
    assert s.mqtt_urls == () and s.mqtt_url == "mqtt://user:pa,ss@mq.example:1884"
    [b] = s.brokers
    assert (b.host, b.port, b.username, b.name) == ("mq.example", 1884, "user", "mq.example:1884")
    assert b.password is not None and b.password.get_secret_value() == "pa,ss"  # a comma in a password stays
    assert s.safe_dict()["mqtt"] == "mqtt://user:***@mq.example:1884"


def test_several_brokers_from_the_environment_and_the_site_file() -> None:
    s = load_settings(None, EnvSettings(mqtt_url="mqtt://u:p,w@mq-a:1883, mqtts://mq-b:8883"))
    assert [(b.name, b.tls) for b in s.brokers] == [("mq-a:1883", False), ("mq-b:8883", True)]
    assert s.brokers[0].password is not None and s.brokers[0].password.get_secret_value() == "p,w"
    assert s.mqtt.name == "mq-a:1883"  # the first broker where one is asked for
    assert "p,w" not in s.safe_dict()["mqtt"] and "mq-b:8883" in s.safe_dict()["mqtt"]

    site = parse_site(SITE.replace("alarm_management:", "mqtt: {urls: [mqtt://mq-a:1883, mqtt://mq-b:1883], "
                                   "username: hw, password: secret}\nalarm_management:"), environ={})
    s = load_settings(site, EnvSettings())
    assert [b.name for b in s.brokers] == ["mq-a:1883", "mq-b:1883"]
    assert all(b.username == "hw" and b.password and b.password.get_secret_value() == "secret" for b in s.brokers)
    # the environment wins, as for one URL
    assert [b.name for b in load_settings(site, EnvSettings(mqtt_url="mqtt://mq-c:1883")).brokers] == ["mq-c:1883"]


def test_every_brokers_password_is_masked_in_what_the_api_shows() -> None:
    from hazardwatch.api.redact import Redactor
    s = load_settings(None, EnvSettings(mqtt_url="mqtt://hw:first-secret@mq-a:1883,mqtt://hw:second-secret@mq-b:1883"))
    r = Redactor(parse_site(SITE, environ={}), s)
    assert r.text("auth failed with first-secret and second-secret") == "auth failed with *** and ***"


def test_a_broker_listed_twice_or_url_with_urls_is_refused_with_what_to_fix() -> None:
    with pytest.raises(SettingsError, match=r"重复列出.*listed twice"):
        load_settings(None, EnvSettings(mqtt_url="mqtt://mq-a:1883,mqtt://mq-a:1883"))
    with pytest.raises(SiteFileError, match=r"url.*urls"):
        parse_site(SITE.replace("alarm_management:", "mqtt: {url: mqtt://a:1883, urls: [mqtt://b:1883]}\n"
                                "alarm_management:"), environ={})


# --- the rule: broker unreachable ------------------------------------------------------------------


def test_a_broker_down_longer_than_the_bound_is_an_orange_park_alarm_cleared_when_it_is_back() -> None:
    d = Driver()
    eng = d.engine
    assert eng.cfg.broker_unreachable_after == timedelta(seconds=30)  # the documented default
    assert d._keep(eng.on_broker(BrokerState("mq-a:1883", True, at(0)))) == []
    assert d._keep(eng.on_broker(BrokerState("mq-a:1883", False, at(10)))) == []
    assert d.tick(39) == []  # 29 s: not yet
    assert eng.next_wakeup(at(39)) <= at(40)  # the service ticks in time for the bound
    assert d.tick(40) == [("raised", "broker", None, "orange")]
    [t] = d.raised("broker")
    a = t.alarm
    assert (a.enterprise, a.key, a.detail["broker"]) == (PARK_SCOPE, "broker:mq-a:1883", "mq-a:1883")
    text = message(t)
    assert text.startswith("MQTT 代理 mq-a:1883 不可达（已 30 秒）"), text
    assert d.tick(100) == []  # raised once
    # a short blip of another broker raises nothing
    d._keep(eng.on_broker(BrokerState("mq-b:1883", False, at(100))))
    d._keep(eng.on_broker(BrokerState("mq-b:1883", True, at(110))))
    assert d.tick(200) == []
    assert d._keep(eng.on_broker(BrokerState("mq-a:1883", True, at(210)))) == [("cleared", "broker", None, "orange")]
    assert d.tick(300) == []


def test_a_restored_broker_alarm_clears_when_the_new_leader_reaches_the_broker() -> None:
    d = Driver()
    d._keep(d.engine.on_broker(BrokerState("mq-a:1883", False, at(0))))
    d.tick(31)
    [a] = [a for a in d.engine.alarms.values() if a.rule == "broker"]
    fresh = RuleEngine(park())
    fresh.restore([a])
    fresh.on_broker(BrokerState("mq-a:1883", False, at(40)))  # the new ingest stage starts unreachable
    assert [t.kind for t in fresh.on_tick(at(80))] == []  # not raised twice
    assert [t.kind.value for t in fresh.on_broker(BrokerState("mq-a:1883", True, at(81)))] == ["cleared"]


def test_the_park_alarm_goes_to_the_duty_room_else_every_district() -> None:
    p = park(SITE.replace("districts:\n  - code: D1\n    name: 一区\n",
                          "districts:\n  - code: D1\n    name: 一区\n"
                          "    contacts: [{name: 区值班, phone: \"13800000001\", channels: [sms]}]\n", 1))
    ev = AlarmEvent(alarm_id=7, kind=AlarmEventKind.RAISED, ts=at(0), enterprise=PARK_SCOPE, rule="broker",
                    severity=p.site.alarm_management.severity.broker, message="MQTT 代理 mq-a:1883 不可达",
                    detail={"broker": "mq-a:1883"}, noticed_at=at(0))
    esc = Escalator(p)
    planned = esc.on_event(ev)
    assert [(x.unit, x.address, x.step) for x in planned] == [("D1", "13800000001", "immediate")]
    # the orange policy's later steps (town, district) tell nobody new; its reminders go to the same people
    assert [(x.unit, x.step) for x in esc.on_tick(at(40 * 60))] == [("D1", "repeat-4")]
    cleared = esc.on_event(replace(ev, kind=AlarmEventKind.CLEARED))
    assert [(x.unit, x.step) for x in cleared] == [("D1", "cleared")]
    duty = park(SITE.replace("channels: {sms:", "channels: {delivery: {duty_room: T1}, sms:"))
    assert [u.code for u in duty.park_units()] == ["T1"]
    text = alarm_text("broker", {"broker": "mq-a:1883", "down_s": 95})
    assert text.startswith("MQTT 代理 mq-a:1883 不可达（已 2 分钟）"), text


def test_a_late_copy_of_a_reading_from_the_other_broker_is_judged_once() -> None:
    """Broker B delivers its copy of a reading after broker A's copy and the readings after it:
    the rule engine judges each sensor's readings strictly newer than the last it judged."""
    d = Driver()
    assert d.read(0, "LT", 8.6) == [("raised", "high", "LT", "yellow")]
    assert d.read(0, "LT", 8.6) == []  # the same reading, B's copy, at once
    assert d.read(10, "LT", 5.0) == [("cleared", "high", "LT", "yellow")]
    assert d.read(0, "LT", 8.6, arrive=20) == []  # B's copy, late: no re-alarm
    assert len(d.raised("high")) == 1
    assert [len(h) for h in d.engine.life.chatter.values()] == [1]  # one raise counted towards chattering


# --- the whole service on two real brokers ----------------------------------------------------------

# the fake clock starts two hours back, so readings stamped near it are never "from the future"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def _broker(folder: Path) -> PrivateBroker:
    """A Mosquitto of the test's own (the shipped configuration), on a port from HW_TEST_BROKER_PORTS
    (``lo-hi``) when set — for machines shared with others — else any free one."""
    b = PrivateBroker(folder)
    span = os.environ.get("HW_TEST_BROKER_PORTS")
    if span:
        lo, hi = (int(x) for x in span.split("-"))
        for port in random.sample(range(lo, hi + 1), hi - lo + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            conf = (folder / "mosquitto.conf").read_text()
            (folder / "mosquitto.conf").write_text(conf.replace(f"listener {b.port} ", f"listener {port} "))
            b.port = port
            break
    return b


def _sms_texts(stand_ins: StandIns) -> list[str]:
    return [json.loads(r["body"])["text"] for r in stand_ins.sms.ok()]


async def _get(h: Any, path: str, headers: dict[str, str]) -> Any:
    """A GET on a connection of its own: the shared client's idle keep-alive connection may be closed
    by the server just as it is reused after the seconds this test spends publishing."""
    async with httpx.AsyncClient(base_url=h.http_url, timeout=10) as c:
        r = await c.get(path, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()


async def _rows(h: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with h.pool.connection() as conn:
        cur = await conn.execute(sql, args)
        return list(await cur.fetchall())


def test_one_of_two_brokers_stopped_mid_stream_loses_nothing_alarms_and_clears(
        tmp_path: Path, make_database: Callable[..., str], topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hbrokers")
    a, b = _broker(tmp_path / "a"), _broker(tmp_path / "b")
    a.start()
    b.start()
    clock = FakeClock(T0)
    name_a = f"127.0.0.1:{a.port}"
    n, kill_at = 300, 120
    ms0 = int((T0 - timedelta(minutes=20)).timestamp() * 1000)

    def msg(k: int) -> tuple[str, str]:
        return (f"{topic_prefix}/E1/data",
                json.dumps({"ts": ms0 + k * 1000, "seq": k, "points": [{"tag": "AT-1", "value": 1 + k % 7},
                                                                        {"tag": "AT-2", "value": 0.1}]}))

    async def go() -> None:
        async with running_service(stand_ins.site, db, f"{a.url},{b.url}", topic_prefix, clock) as (h, _client):
            ingest, engine = h.ingest, h.rules.engine
            assert [t.name for t in ingest.transports] == [name_a, f"127.0.0.1:{b.port}"]
            await until(lambda: all(t.connected for t in ingest.transports), what="both broker sessions up")
            pa, pb = Publisher(a.url), Publisher(b.url)
            # some messages through A, some through B, some through both (a gateway's re-send elsewhere)
            first = [msg(k) for k in range(kill_at)]
            pa.publish_many([m for k, m in enumerate(first) if k % 3 in (0, 2)])
            pb.publish_many([m for k, m in enumerate(first) if k % 3 in (1, 2)])
            a.stop()  # mid-stream: hazardwatch is still draining what A holds for it
            await until(lambda: name_a in engine.liveness.broker_down, what="the rules hear broker A is down")
            assert not any(x.rule == "broker" for x in engine.alarms.values())
            # the gateways fail over to B; A's publisher keeps its copies of "both" and re-sends on A's return
            rest = [msg(k) for k in range(kill_at, n)]
            pb.publish_many(rest)
            for k, m in enumerate(rest, kill_at):
                if k % 3 == 2:
                    pa.client.publish(*m, qos=1)
            clock.advance(timedelta(seconds=31))  # past broker_unreachable_after (30 s) on the injected clock
            await until(lambda: any(x.rule == "broker" and x.condition for x in engine.alarms.values()),
                        what="the broker-unreachable alarm")
            [alarm] = [x for x in engine.alarms.values() if x.rule == "broker"]
            assert (alarm.enterprise, alarm.severity.value, alarm.detail["broker"]) == (PARK_SCOPE, "orange", name_a)
            await until(lambda: any(f"MQTT 代理 {name_a} 不可达" in t for t in _sms_texts(stand_ins)),
                        what="the park's people told")
            assert ingest.connected and h.ingest.subscribed.is_set()  # the other broker keeps flowing
            # the duty room sees it (board, API) with its sentence; an enterprise's token does not
            duty, ent = await token_for(h, "park"), await token_for(h, "E1")
            listed = [x for x in (await _get(h, "/api/v1/alarms", duty)) if x["rule"] == "broker"]
            assert [(x["enterprise_name"], x["severity"]) for x in listed] == [("端到端测试园区", "orange")]
            assert listed[0]["text"].startswith(f"MQTT 代理 {name_a} 不可达"), listed[0]["text"]
            assert not [x for x in (await _get(h, "/api/v1/alarms", ent)) if x["rule"] == "broker"]
            one = await _get(h, f"/api/v1/alarms/{alarm.alarm_id}", duty)
            assert [u["unit"] for u in one["responsible"]] == ["D1"]
            # /api/v1/cluster (and so `hazardwatch status`) shows each broker on the leader's line
            brokers: dict[str, Any] = {}
            for _ in range(200):
                inst = (await _get(h, "/api/v1/cluster", duty))["instances"]
                brokers = inst[0]["detail"].get("brokers") or {} if inst else {}
                if brokers.get(name_a, {}).get("connected") is False:
                    break
                await asyncio.sleep(0.1)
            assert {k: v["connected"] for k, v in brokers.items()} == {name_a: False, f"127.0.0.1:{b.port}": True}

            a.start()  # back, with the queue it persisted for hazardwatch's session
            await until(lambda: not alarm.condition, within=60, what="the alarm cleared once A is back")
            want = {(tag, ms0 + k * 1000) for k in range(n) for tag in ("AT-1", "AT-2")}

            async def stored() -> list[tuple[Any, ...]]:
                return await _rows(h, "SELECT s.tag, (extract(epoch FROM r.ts) * 1000)::bigint FROM readings r"
                                      " JOIN sensors s ON s.id = r.sensor_id WHERE s.tag IN ('AT-1', 'AT-2')")
            deadline = asyncio.get_running_loop().time() + 60
            got: list[tuple[Any, ...]] = []
            while asyncio.get_running_loop().time() < deadline:
                got = await stored()
                if len(got) >= len(want) and all(t.held == 0 for t in ingest.transports):
                    break
                await asyncio.sleep(0.1)
            assert len(got) == len(want) and set(got) == want  # every reading, exactly once
            # every message each broker delivered was acknowledged on that broker's connection
            assert [t.held for t in ingest.transports] == [0, 0]
            assert ingest.metrics.duplicates._value.get() > 0  # the overlap did happen
            events = await _rows(h, "SELECT kind FROM alarm_events WHERE alarm_id = %s ORDER BY ts",
                                 alarm.alarm_id)
            assert [e[0] for e in events] == ["raised", "cleared"]
            pa.close()
            pb.close()

    try:
        asyncio.run(go())
    finally:
        a.stop()
        b.stop()


def test_a_reading_delivered_by_both_brokers_makes_one_alarm_event_and_one_chatter_count(
        tmp_path: Path, make_database: Callable[..., str], topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hbrokers")
    a, b = _broker(tmp_path / "a"), _broker(tmp_path / "b")
    a.start()
    b.start()
    clock = FakeClock(T0)
    ms = int((T0 - timedelta(minutes=5)).timestamp() * 1000)

    def reading(tag: str, ent: str, at_s: float, value: float) -> tuple[str, str]:
        return f"{topic_prefix}/{ent}/data", json.dumps({"ts": ms + int(at_s * 1000),
                                                         "points": [{"tag": tag, "value": value}]})

    async def go() -> None:
        async with running_service(stand_ins.site, db, f"{a.url},{b.url}", topic_prefix, clock) as (h, _client):
            engine = h.rules.engine
            await until(lambda: all(t.connected for t in h.ingest.transports), what="both broker sessions up")
            pa, pb = Publisher(a.url), Publisher(b.url)
            at1 = h.park.by_key[("E1", "AT-1")].id
            x = h.park.by_key[("E2", "X")].id
            high = reading("AT-1", "E1", 0, 30.0)  # above the first level (25 %LEL)
            pa.publish(*high)
            pb.publish(*high)  # the same reading, through the other broker
            await until(lambda: any(al.tag == "AT-1" for al in engine.alarms.values()), what="AT-1 raised")
            for m in (reading("AT-1", "E1", 20, 3.0), reading("AT-1", "E1", 40, 3.0)):
                pa.publish(*m)
                pb.publish(*m)
            await until(lambda: all(not al.condition for al in engine.alarms.values() if al.tag == "AT-1"),
                        what="AT-1 back to normal")
            pb.publish(*high)  # B's copy once more, late (a gateway's re-send that went to B)
            pb.publish(*reading("X", "E2", 60, 1.0))  # behind it on B: once X is judged, so is the copy
            dense = int(engine.ctx.dense([x])[0])
            await until(lambda: int(engine.last_ts[dense]) >= (ms + 60_000) * 1000, what="the marker judged")
            [alarm] = [al for al in engine.alarms.values() if al.tag == "AT-1"]
            events = await _rows(h, "SELECT kind FROM alarm_events WHERE alarm_id = %s ORDER BY ts",
                                 alarm.alarm_id)
            assert [e[0] for e in events] == ["raised", "cleared"]
            assert len(engine.life.chatter[alarm.key]) == 1  # one raise towards chattering, not two
            assert (await _rows(h, "SELECT count(*) FROM readings WHERE sensor_id = %s", at1))[0][0] == 3
            pa.close()
            pb.close()

    try:
        asyncio.run(go())
    finally:
        a.stop()
        b.stop()


def test_the_service_starts_when_one_of_its_brokers_answers(mqtt_url: str) -> None:
    """Start-up waits for the database and the brokers; with several, one answering is enough (the
    others raise their alarm if they stay away); none answering stops the start, naming each."""
    from hazardwatch.preflight import StartupError, preflight
    from tests.ingest_helpers import free_port
    closed = f"mqtt://127.0.0.1:{free_port()}"
    said: list[str] = []
    asyncio.run(preflight(load_settings(None, EnvSettings(mqtt_url=f"{closed},{mqtt_url}")), 10, said.append))
    with pytest.raises(StartupError, match=r"MQTT brokers .*127\.0\.0\.1.*unreachable"):
        asyncio.run(preflight(load_settings(None, EnvSettings(mqtt_url=f"{closed},mqtt://127.0.0.1:{free_port()}")),
                              0.5, said.append))
