"""Two real ``hazardwatch run`` instances on one database, the real broker, the SMS gateway stand-in.

The leader killed with SIGKILL mid-stream and mid-escalation, or frozen with SIGSTOP past its
lease and resumed; an acknowledgement through the standby's API. The lease is 2 s (configured,
``HAZARDWATCH_LEASE_TTL``); every wait is on a condition with a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hazardwatch.benchmarks.failover import (
    DISTRICT,
    ENTERPRISE,
    TOWN,
    Instance,
    Publisher,
    gas,
    leads,
    lease,
    query,
    site_text,
    start_instance,
    stored,
    stream,
    wait,
)
from tests.alerting_helpers import VendorServer, sms_gateway, sms_id

READINGS = 400


class Pair:
    """Instance ``a`` leading, ``b`` standing by, on one database and one broker session."""

    def __init__(self, db: str, mqtt_url: str, prefix: str, tmp: Path, sms: VendorServer, town: str,
                 district: str) -> None:
        self.db, self.mqtt_url, self.prefix, self.tmp = db, mqtt_url, prefix, tmp
        self.config = tmp / "site.yaml"
        self.config.write_text(site_text(sms.url, town=town, district=district), encoding="utf-8")
        self.insts: list[Instance] = []
        self.a = self.start("a")
        wait(lambda: leads(db, self.a), "a leads", 120)
        self.b = self.start("b")
        wait(self.b.healthy, "b serves its API", 120)
        assert lease(db)[1] == "a", "b took the lease from a running leader"
        self.epoch = lease(db)[0]

    def start(self, name: str) -> Instance:
        inst = start_instance(name, self.config, database_url=self.db, mqtt_url=self.mqtt_url, prefix=self.prefix,
                              workdir=self.tmp)
        self.insts.append(inst)
        return inst

    def close(self) -> None:
        for i in self.insts:
            i.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {i.name}\n{i.text()[-4000:]}" for i in self.insts)


@pytest.fixture
def sms() -> Iterator[VendorServer]:
    s = VendorServer(sms_gateway, dedupe=sms_id)
    try:
        yield s
    finally:
        s.close()


def phones(sms: VendorServer, tag: str | None = None) -> list[str]:
    """Phones of the SMS delivered (a repeated id is not delivered again), optionally of one sensor's alarm."""
    out = []
    for r in sms.ok():
        b = json.loads(r["body"])
        if tag is None or tag in b["text"]:
            out.append(b["phone"])
    return out


def sent(db: str, phone: str) -> bool:
    """The message to ``phone`` is recorded as sent (not only received by the gateway)."""
    return bool(query(db, "SELECT 1 FROM outbox WHERE payload->>'address' = %s AND status = 'sent'", (phone,)))


@pytest.mark.slow
def test_leader_killed_mid_stream_and_mid_escalation(make_database: Callable[..., str], mqtt_url: str,
                                                     topic_prefix: str, tmp_path: Path, sms: VendorServer) -> None:
    db = make_database("timescaledb", "hwha2")
    pair = Pair(db, mqtt_url, topic_prefix, tmp_path, sms, town="6s", district="12s")
    pub = Publisher(mqtt_url)
    try:
        start = datetime.now(UTC) - timedelta(minutes=2)
        gas(pub, topic_prefix, "AT-1")
        wait(lambda: ENTERPRISE in phones(sms), "the enterprise told by a", 60)
        stream(pub, topic_prefix, "TT-1", start, 0, READINGS // 2)
        pair.a.kill()  # readings in flight, the town and district steps still to come
        in_flight_at_kill = {json.loads(r["body"])["id"] for r in sms.requests}
        stream(pub, topic_prefix, "TT-1", start, READINGS // 2, READINGS - READINGS // 2)  # nobody leads now
        wait(lambda: leads(db, pair.b, pair.epoch), "b leads", 120)
        wait(lambda: stored(db, "TT-1")[0] >= READINGS, "every reading stored", 120)
        wait(lambda: {TOWN, DISTRICT} <= set(phones(sms)), "town and district told by b", 120)
        wait(lambda: sent(db, TOWN) and sent(db, DISTRICT), "b recorded both", 60)
    finally:
        pub.close()
        pair.close()
    assert stored(db, "TT-1") == (READINGS, READINGS), "each reading stored exactly once"
    assert sorted(phones(sms, "AT-1")) == sorted([ENTERPRISE, TOWN, DISTRICT]), pair.logs()
    # only a message the gateway had already received when a died may come again, with the same id
    repeated = {json.loads(r["body"])["id"] for r in sms.duplicates()}
    assert repeated <= in_flight_at_kill, repeated - in_flight_at_kill
    assert lease(db)[0] == pair.epoch + 1


@pytest.mark.slow
def test_leader_frozen_past_its_lease_writes_and_sends_nothing_when_resumed(
        make_database: Callable[..., str], mqtt_url: str, topic_prefix: str, tmp_path: Path,
        sms: VendorServer) -> None:
    db = make_database("postgres", "hwha2")
    pair = Pair(db, mqtt_url, topic_prefix, tmp_path, sms, town="6s", district="12s")
    pub = Publisher(mqtt_url)
    try:
        start = datetime.now(UTC) - timedelta(minutes=2)
        gas(pub, topic_prefix, "AT-1")
        wait(lambda: sent(db, ENTERPRISE), "the enterprise told by a, and recorded", 60)
        stream(pub, topic_prefix, "TT-1", start, 0, READINGS // 2)
        pair.a.signal(signal.SIGSTOP)  # its town and district steps fall due while it is frozen
        stream(pub, topic_prefix, "TT-1", start, READINGS // 2, READINGS - READINGS // 2)
        wait(lambda: leads(db, pair.b, pair.epoch), "b leads", 120)
        wait(lambda: sent(db, TOWN), "the town told by b", 120)
        events_before = query(db, "SELECT count(*) FROM alarm_events")[0][0]
        pair.a.signal(signal.SIGCONT)
        wait(lambda: "standing by" in pair.a.text() or "steps down" in pair.a.text(), "a steps down", 60)
        wait(lambda: query(db, "SELECT role FROM ha_instances WHERE instance = 'a'") == [("standby",)],
             "a reports itself standby", 60)
        wait(lambda: sent(db, DISTRICT), "the district told by b", 120)
        wait(lambda: stored(db, "TT-1")[0] >= READINGS, "every reading stored", 120)
        assert pair.a.alive(), pair.logs()
        assert query(db, "SELECT count(*) FROM alarm_events")[0][0] == events_before
    finally:
        pub.close()
        pair.close()
    assert stored(db, "TT-1") == (READINGS, READINGS)
    assert sorted(phones(sms, "AT-1")) == sorted([ENTERPRISE, TOWN, DISTRICT]), pair.logs()
    assert sms.duplicates() == [], "a message went out twice (the resumed leader sent it again)"
    assert lease(db)[0] == pair.epoch + 1


def park_token(db: str, config: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "hazardwatch", "token", "create", "--unit", "park", "--config",
                          str(config)], env=dict(os.environ, HAZARDWATCH_DATABASE_URL=db), capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_acknowledged_through_the_standby_the_leader_stops_escalating(
        make_database: Callable[..., str], mqtt_url: str, topic_prefix: str, tmp_path: Path,
        sms: VendorServer) -> None:
    db = make_database("postgres", "hwha2")
    pair = Pair(db, mqtt_url, topic_prefix, tmp_path, sms, town="6s", district="12s")
    pub = Publisher(mqtt_url)
    try:
        auth = {"Authorization": f"Bearer {park_token(db, pair.config)}"}
        gas(pub, topic_prefix, "AT-1")
        wait(lambda: ENTERPRISE in phones(sms, "AT-1"), "the enterprise told", 60)
        [(alarm_id,)] = query(db, "SELECT id FROM alarms WHERE tag = 'AT-1'")
        r = httpx.post(f"{pair.b.http_url}/api/v1/alarms/{alarm_id}/ack", json={"by": "值班员", "note": "已处置"},
                       headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["acked_by"] == "值班员"
        [(origin, taken_by, state)] = query(db, "SELECT origin, taken_by, state FROM commands")
        assert (origin, taken_by, state) == ("b", "a", "applied")
        # a second alarm, not acknowledged: once its town step is out, the first one's (due earlier) would be too
        gas(pub, topic_prefix, "AT-2")
        wait(lambda: TOWN in phones(sms, "AT-2"), "the town told of the second alarm", 60)
        # an unknown alarm through the standby: the leader refuses it, the API says so
        r = httpx.post(f"{pair.b.http_url}/api/v1/alarms/999999/ack", json={"by": "值班员"}, headers=auth, timeout=30)
        assert r.status_code in (404, 409), r.text
    finally:
        pub.close()
        pair.close()
    assert phones(sms, "AT-1") == [ENTERPRISE], "escalation of the acknowledged alarm went on"
    assert query(db, "SELECT acked_by FROM alarms WHERE tag = 'AT-1'") == [("值班员",)]


def test_run_tells_systemd_it_is_ready_and_alive(make_database: Callable[..., str], mqtt_url: str,
                                                 topic_prefix: str, tmp_path: Path, sms: VendorServer) -> None:
    """``Type=notify`` with ``WatchdogSec`` (deploy/systemd): READY=1 once the role is known, then WATCHDOG=1."""
    import socket

    db = make_database("postgres", "hwha2")
    config = tmp_path / "site.yaml"
    config.write_text(site_text(sms.url), encoding="utf-8")
    path = str(tmp_path / "notify.sock")
    got: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(60)
        inst = start_instance("a", config, database_url=db, mqtt_url=mqtt_url, prefix=topic_prefix,
                              workdir=tmp_path, extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        try:
            while not any(m.startswith("READY=1") for m in got):
                got.append(s.recv(4096).decode())
            ready = got[-1]
            while not got[-1].startswith("WATCHDOG=1"):
                got.append(s.recv(4096).decode())
        finally:
            inst.stop()
    assert ready in ("READY=1\nSTATUS=a: standby", "READY=1\nSTATUS=a: leader"), got
