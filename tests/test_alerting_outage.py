"""The alarm path while the database is away, with real processes: ``hazardwatch run``, a private
PostgreSQL cluster stopped and started, the real broker, the SMS gateway stand-in."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from park.errors import Unavailable
from tests.alerting_helpers import VendorServer, sms_gateway, sms_id
from tests.ingest_helpers import Publisher
from tests.service_helpers import ServiceProcess, service_env, wait_for
from tests.test_ingest_outage import PrivatePostgres, private_pg  # noqa: F401 — the fixture

SITE = """\
site: {{name: 断库测试园区}}
channels: {{sms: {{provider: http, url: "{sms}/send"}}}}
escalation:
  red:    {{immediate: [enterprise, town], then: [{{level: district, after: 10m}}]}}
  orange: {{immediate: [enterprise], then: [{{level: town, after: 10m}}]}}
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
"""


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[return-value]


@pytest.mark.slow
def test_hh_gas_during_a_30s_database_outage_is_sent_at_once_and_recorded_once_after(
        mqtt_url: str, topic_prefix: str, tmp_path: Path, private_pg: PrivatePostgres) -> None:  # noqa: F811
    sms = VendorServer(sms_gateway, dedupe=sms_id)
    config = tmp_path / "site.yaml"
    config.write_text(SITE.format(sms=sms.url), encoding="utf-8")
    svc = ServiceProcess(config, service_env(private_pg.url, mqtt_url, topic_prefix, tmp_path / "data"),
                         tmp_path / "service.log")
    pub = Publisher(mqtt_url)
    try:
        private_pg.stop()
        down_at = time.monotonic()
        # an HH combustible-gas reading (orange: 50 %LEL) arrives while the database is away
        t_pub = time.monotonic()
        pub.publish(f"{topic_prefix}/E1/data", json.dumps(
            {"ts": int(datetime.now(UTC).timestamp() * 1000), "points": [{"tag": "AT-1", "value": 60}]}))
        wait_for(lambda: len(sms.ok()) == 1, within=25, what="the SMS during the outage")
        seconds = time.monotonic() - t_pub
        print(f"HH reading → SMS at the gateway during the outage: {seconds:.2f} s")
        assert seconds < 5.0, f"the SMS took {seconds:.1f} s"
        assert json.loads(sms.ok()[0]["body"])["phone"] == "13800000003"
        wait_for(lambda: time.monotonic() - down_at >= 30, within=40, what="30 s of outage")  # the outage lasts
        assert svc.alive(), svc.text()[-3000:]
        private_pg.start()
        # after recovery the journal is written into the database: the alarm, its event, its message, once each
        wait_for(lambda: rows(private_pg.url, "SELECT count(*) FROM notifications")[0][0] >= 1, within=60,
                 what="the notification in the database")
        wait_for(lambda: "journal flushed" in svc.text(), within=30, what="the journal flushed")
        assert svc.alive()
        alarms = rows(private_pg.url, "SELECT id, tag, severity, state FROM alarms")
        assert [(a[1], a[2], a[3]) for a in alarms] == [("AT-1", "orange", "active_unacked")]
        aid = alarms[0][0]
        assert rows(private_pg.url, f"SELECT kind FROM alarm_events WHERE alarm_id = {aid}") == [("raised",)]
        assert rows(private_pg.url, "SELECT idempotency_key, status, attempts FROM outbox") == [
            (f"{aid}/E1/13800000003/sms/immediate", "sent", 1)]
        assert rows(private_pg.url, "SELECT alarm_id, contact, outcome FROM notifications") == [(aid, "张工", "sent")]
        assert sms.duplicates() == []
    finally:
        pub.close()
        svc.stop()
        sms.close()


def test_commands_during_an_outage_raise_unavailable_at_once_and_change_nothing(
        mqtt_url: str, topic_prefix: str, private_pg: PrivatePostgres, tmp_path: Path) -> None:  # noqa: F811
    """An acknowledgement during an outage answers at once (the API maps it to 503) and leaves the alarm as it was."""
    from prometheus_client import CollectorRegistry

    from park.clock import FakeClock
    from park.db import migrate, open_pool
    from park.db.registry import sync_registry
    from park.journal import DbGate, Journal
    from park.sitefile import parse_site
    from park.types import ReadingBatch
    from rules.service import RulesService

    site = parse_site(SITE.format(sms="http://127.0.0.1:9"), environ={})
    clock = FakeClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))

    async def go() -> None:
        async with open_pool(private_pg.url, min_size=1, max_size=4) as pool:
            async with pool.connection() as conn:
                await migrate(conn)
                park = await sync_registry(conn, site)
            gate = DbGate(Journal(tmp_path / "j.sqlite3"))
            svc = RulesService(park=park, pool=pool, clock=clock, inbox=asyncio.Queue(), outbox=asyncio.Queue(),
                               registry=CollectorRegistry(), gate=gate)
            await svc.restore()
            spec = park.by_key[("E1", "AT-1")]
            async with svc._lock:
                await svc._commit(svc.engine.on_batch(ReadingBatch.from_rows([(spec.id, clock.now(), 60.0, 0)])))
            [alarm] = svc.engine.alarms.values()
            assert alarm.alarm_id is not None
            await asyncio.to_thread(private_pg.stop)
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="数据库暂时不可用"):
                await svc.ack(alarm.alarm_id, "张工")
            assert time.monotonic() - t0 < 5, "an acknowledgement must not hang on a dead database"
            assert alarm.state == "active_unacked" and alarm.acked_by is None, "the core is as it was"
            assert not gate.up
            with pytest.raises(Unavailable):  # and at once while the gate is down
                await svc.ack(alarm.alarm_id, "张工")
            await asyncio.to_thread(private_pg.start)
            gate.open()
            await svc.ack(alarm.alarm_id, "张工")
            assert alarm.state == "active_acked"
            gate.journal.close()

    asyncio.run(go())
