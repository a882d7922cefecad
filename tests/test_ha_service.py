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
import psycopg
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
from hazardwatch.service import is_term_stage
from tests.alerting_helpers import VendorServer, sms_gateway, sms_id

READINGS = 400


class Pair:
    """Instance ``a`` leading, ``b`` standing by, on one database and one broker session."""

    def __init__(self, db: str, mqtt_url: str, prefix: str, tmp: Path, sms: VendorServer, town: str,
                 district: str, a_env: dict[str, str] | None = None, a_module: str = "hazardwatch") -> None:
        self.db, self.mqtt_url, self.prefix, self.tmp = db, mqtt_url, prefix, tmp
        self.config = tmp / "site.yaml"
        self.config.write_text(site_text(sms.url, town=town, district=district), encoding="utf-8")
        self.insts: list[Instance] = []
        self.a = self.start("a", a_env, a_module)
        wait(lambda: leads(db, self.a), "a leads", 120)
        self.b = self.start("b")
        wait(self.b.healthy, "b serves its API", 120)
        assert lease(db)[1] == "a", "b took the lease from a running leader"
        self.epoch = lease(db)[0]

    def start(self, name: str, env: dict[str, str] | None = None, module: str = "hazardwatch") -> Instance:
        inst = start_instance(name, self.config, database_url=self.db, mqtt_url=self.mqtt_url, prefix=self.prefix,
                              workdir=self.tmp, extra_env=env, module=module)
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


# every table migration 0060 fences; each row written to them is noted with the writer's term
FENCED = ("alarms", "alarm_events", "outbox", "notifications", "commands", "units", "rules_state")
AUDIT = """
CREATE TABLE test_write_audit (id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL, term text,
                               at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION test_write_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_write_audit (tbl, op, term)
    VALUES (TG_TABLE_NAME, TG_OP, nullif(current_setting('hazardwatch.lease', true), ''));
    RETURN NULL;
END $$;
"""


def audit_writes(db: str) -> None:
    """Note every row written to a fenced table, with the term of the session that wrote it (an
    observer: AFTER ... FOR EACH ROW, so a write the fence refused leaves no note)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(AUDIT)
        for t in FENCED:
            conn.execute(f"CREATE TRIGGER test_audit_{t} AFTER INSERT OR UPDATE OR DELETE ON {t}"
                         " FOR EACH ROW EXECUTE FUNCTION test_write_audit()")


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


@pytest.mark.slow
def test_leader_frozen_past_its_lease_writes_and_sends_nothing_when_resumed(
        make_database: Callable[..., str], mqtt_url: str, topic_prefix: str, tmp_path: Path,
        sms: VendorServer) -> None:
    """``a`` freezes itself (tests.freeze_hook) the moment it has claimed the town's SMS — the row is
    ``sending`` in the database, the message not yet sent — and stays frozen past its lease; ``b``
    takes over and sends it. Resumed, ``a`` holds that message and the rule stage's learned state
    (written when a term's stages stop): without the database's fence it writes with its old term
    (the snapshot, every time: this test then fails); without the send check it may send the town a
    second time — in most runs the local clock's cancellation stops the stage first, so that check
    is proven on its own by ``test_ha_fencing.test_alerting_does_not_send_when_it_may_not``."""
    db = make_database("postgres", "hwha2")
    pair = Pair(db, mqtt_url, topic_prefix, tmp_path, sms, town="6s", district="12s",
                a_env={"HW_TEST_FREEZE_PHONE": TOWN}, a_module="tests.freeze_hook")
    audit_writes(db)
    pub = Publisher(mqtt_url)
    try:
        start = datetime.now(UTC) - timedelta(minutes=2)
        gas(pub, topic_prefix, "AT-1")
        wait(lambda: sent(db, ENTERPRISE), "the enterprise told by a, and recorded", 60)
        stream(pub, topic_prefix, "TT-1", start, 0, READINGS // 2)
        # the town step falls due: a claims it and freezes with it in hand
        wait(lambda: "freeze hook: stopping" in pair.a.text() and stopped(pair.a.proc.pid),
             "a frozen with the town's message claimed", 60)
        assert query(db, "SELECT status FROM outbox WHERE payload->>'address' = %s", (TOWN,)) == [("sending",)]
        assert phones(sms, "AT-1") == [ENTERPRISE], "the town's message went out before the freeze"
        stream(pub, topic_prefix, "TT-1", start, READINGS // 2, READINGS - READINGS // 2)
        wait(lambda: leads(db, pair.b, pair.epoch), "b leads", 120)
        wait(lambda: sent(db, TOWN), "the town told by b", 120)
        events_before = query(db, "SELECT count(*) FROM alarm_events")[0][0]
        [(mark,)] = query(db, "SELECT coalesce(max(id), 0) FROM test_write_audit")
        pair.a.signal(signal.SIGCONT)
        wait(lambda: "freeze hook: resumed" in pair.a.text(), "a resumed", 60)
        wait(lambda: "standing by" in pair.a.text() or "steps down" in pair.a.text(), "a steps down", 60)
        wait(lambda: query(db, "SELECT role FROM ha_instances WHERE instance = 'a'") == [("standby",)],
             "a reports itself standby", 60)
        wait(lambda: f"term {pair.epoch} over" in pair.a.text() or f"term {pair.epoch}:" in pair.a.text(),
             "a's old stages ended", 60)
        # a standby reports no stage of the term it lost (its broker sessions, taken over by b, were down)
        wait(lambda: not [s for s in httpx.get(f"{pair.a.http_url}/readyz", timeout=10).json()["stages"]
                          if is_term_stage(s)], "a's /readyz without its last term's stages", 60)
        wait(lambda: sent(db, DISTRICT), "the district told by b", 120)
        wait(lambda: stored(db, "TT-1")[0] >= READINGS, "every reading stored", 120)
        assert pair.a.alive(), pair.logs()
        assert query(db, "SELECT count(*) FROM alarm_events")[0][0] == events_before
        # nothing written with a's old term once it resumed (the learned-state snapshot a term's
        # stages take as they stop included); the fence refused it, so the audit saw no row
        old_term = f"leader/{pair.epoch}/%"
        late = query(db, "SELECT tbl, op, term FROM test_write_audit WHERE id > %s AND term LIKE %s",
                     (mark, old_term))
        assert late == [], f"the resumed old leader wrote: {late}\n{pair.logs()}"
    finally:
        pub.close()
        pair.close()
    assert stored(db, "TT-1") == (READINGS, READINGS)
    assert sorted(phones(sms, "AT-1")) == sorted([ENTERPRISE, TOWN, DISTRICT]), pair.logs()
    to_town = [r for r in sms.requests if json.loads(r["body"])["phone"] == TOWN]
    assert len(to_town) == 1, f"the town's message reached the gateway {len(to_town)} times (the resumed a sent it)"
    assert sms.duplicates() == [], "a message went out twice (the resumed leader sent it again)"
    assert lease(db)[0] == pair.epoch + 1, pair.logs()


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
