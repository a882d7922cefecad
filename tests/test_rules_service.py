"""The rule stage with its store, on real PostgreSQL and TimescaleDB, fed by real ingest over MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
from prometheus_client import CollectorRegistry

from park.clock import FakeClock
from park.db import migrate, open_pool
from park.db.registry import sync_registry
from park.site import EnterpriseState
from park.sitefile import parse_site
from park.types import AlarmEvent, AlarmEventKind, GatewayStatus, ReadingBatch
from rules.service import RulesService
from tests.ingest_helpers import Publisher, settings_for
from tests.rules_helpers import SITE, T0

Inbox = asyncio.Queue[ReadingBatch | GatewayStatus]


@contextlib.asynccontextmanager
async def rules_running(db: str, clock: FakeClock, inbox: Inbox,
                        outbox: asyncio.Queue[AlarmEvent]) -> AsyncIterator[RulesService]:
    async with open_pool(db, min_size=1, max_size=3) as pool:
        async with pool.connection() as conn:
            await migrate(conn)
            park = await sync_registry(conn, parse_site(SITE, environ={}))
        svc = RulesService(park=park, pool=pool, clock=clock, inbox=inbox, outbox=outbox, registry=CollectorRegistry())
        task = asyncio.create_task(svc.run())
        await asyncio.wait_for(svc.restored.wait(), 10)
        try:
            yield svc
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def rows(db: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    async with await psycopg.AsyncConnection.connect(db) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall()


async def next_event(q: asyncio.Queue[AlarmEvent], kind: AlarmEventKind) -> AlarmEvent:
    while True:
        ev = await asyncio.wait_for(q.get(), 10)
        if ev.kind is kind:
            return ev


def test_hh_over_mqtt_becomes_one_alarm_and_a_restart_changes_nothing(db_url: str, mqtt_url: str,
                                                                      topic_prefix: str) -> None:
    from ingest.service import IngestService

    clock = FakeClock(T0 + timedelta(seconds=30))

    async def go() -> None:
        inbox: Inbox = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        settings = settings_for(mqtt_url, db_url, topic_prefix)
        pub = Publisher(mqtt_url)
        ms = int(T0.timestamp() * 1000)

        def send(sec: int, value: float) -> None:
            pub.publish(f"{topic_prefix}/E1/data",
                        json.dumps({"ts": ms + sec * 1000, "points": [{"tag": "LT", "value": value}]}))

        async with rules_running(db_url, clock, inbox, outbox) as rules:
            ingest = IngestService(settings=settings, park=rules.park, pool=rules.pool, sink=inbox,
                                   registry=CollectorRegistry())
            itask = asyncio.create_task(ingest.run())
            await asyncio.wait_for(ingest.subscribed.wait(), 10)
            send(0, 5.0)
            send(10, 9.5)  # crosses HH (9)
            raised = await next_event(outbox, AlarmEventKind.RAISED)
            assert (raised.tag, raised.rule, raised.severity.value) == ("LT", "high", "orange")
            assert raised.alarm_id > 0
            send(10, 9.5)  # the gateway re-sends: nothing new
            await asyncio.sleep(0.5)
        # restart mid-alarm: a fresh rule stage from the database
        async with rules_running(db_url, clock, inbox, outbox) as rules2:
            send(20, 9.6)
            send(25, 9.7)
            await asyncio.sleep(1.0)
            assert list(rules2.engine.alarms) == [f"s:{rules2.park.by_key[('E1', 'LT')].id}:high"]
            send(40, 5.0)
            cleared = await next_event(outbox, AlarmEventKind.CLEARED)
            assert cleared.alarm_id == raised.alarm_id
            itask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await itask
        pub.close()
        alarms = await rows(db_url, "SELECT id, state, severity, rule FROM alarms")
        assert alarms == [(raised.alarm_id, "cleared_unacked", "orange", "high")]
        events = await rows(db_url, "SELECT kind FROM alarm_events ORDER BY ts")
        assert [e[0] for e in events] == ["raised", "cleared"]

    asyncio.run(go())


def test_commands_persist_and_notify(db_url: str) -> None:
    clock = FakeClock(T0)

    async def go() -> None:
        inbox: Inbox = asyncio.Queue()
        outbox: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
            async with rules_running(db_url, clock, inbox, outbox) as rules:
                await listener.execute("LISTEN hazardwatch_alarms")
                lt = rules.park.by_key[("E1", "LT")].id
                await inbox.put(ReadingBatch.from_rows([(lt, T0, 9.5, 0)]))
                raised = await next_event(outbox, AlarmEventKind.RAISED)
                note = await asyncio.wait_for(anext(listener.notifies()), 5)
                assert note.payload == str(raised.alarm_id)
                await rules.shelve(raised.alarm_id, "值班员", "误报核实中", T0 + timedelta(hours=1))
                await rules.ack(raised.alarm_id, "值班员", "已通知现场")
                await rules.resolve(raised.alarm_id, "值班长", cause="液位计漂移", action="校准")
                await rules.set_enterprise_state("E1", EnterpriseState.MAINTENANCE, "值班长")
                await inbox.put(ReadingBatch.from_rows([(lt, T0 + timedelta(seconds=5), 9.8, 0)]))
                await asyncio.sleep(0.3)
        [(state, acked_by, note_, cause, action, shelve_reason)] = await rows(
            db_url, "SELECT state, acked_by, ack_note, cause, action, shelve_reason FROM alarms")
        assert (state, acked_by, note_, cause, action, shelve_reason) == (
            "closed", "值班员", "已通知现场", "液位计漂移", "校准", "误报核实中")
        kinds = [k for (k,) in await rows(db_url, "SELECT kind FROM alarm_events ORDER BY ts, kind")]
        assert sorted(kinds) == sorted(["raised", "shelved", "acked", "resolved"])
        assert await rows(db_url, "SELECT state, state_by FROM units WHERE code = 'E1'") == [("maintenance", "值班长")]

    asyncio.run(go())
