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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerting.escalation import Escalator
from park.clock import FakeClock
from park.errors import SettingsError
from park.settings import EnvSettings, load_settings
from park.sitefile import parse_site
from park.types import PARK_SCOPE, AlarmEvent, AlarmEventKind, BrokerState
from park.wording import alarm_text
from rules.engine import RuleEngine
from rules.store import message
from tests.ingest_helpers import PrivateBroker, Publisher
from tests.rules_helpers import SITE, Driver, at, park
from tests.service_helpers import StandIns, running_service

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


def test_a_broker_listed_twice_or_url_with_urls_is_refused_with_what_to_fix() -> None:
    with pytest.raises(SettingsError, match="重复列出.*listed twice"):
        load_settings(None, EnvSettings(mqtt_url="mqtt://mq-a:1883,mqtt://mq-a:1883"))
    from park.errors import SiteFileError
    with pytest.raises(SiteFileError, match="url.*urls"):
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
    assert alarm_text("broker", {"broker": "mq-a:1883", "down_s": 95}).startswith("MQTT 代理 mq-a:1883 不可达（已 2 分钟）")


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
