"""The durable outbox on real PostgreSQL and TimescaleDB: retries with backoff, channel fallback, flood summaries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerting.channels.sms_http import HttpSms
from alerting.channels.webhook import Webhook
from alerting.escalation import Escalator
from alerting.links import LinkSigner
from alerting.messages import Renderer
from alerting.outbox import enqueue, payload_of
from alerting.service import FLOOD_SUMMARY_EVERY, AlertingService
from park.clock import FakeClock
from park.db import migrate, open_pool
from park.db.registry import sync_registry
from park.model import Park
from park.settings import EnvSettings, load_settings
from park.site import Site
from park.sitefile import parse_site
from park.types import AlarmEvent, AlarmEventKind, Severity
from tests.alerting_helpers import VendorServer, sms_gateway

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def site_text(sms_url: str, hook_url: str) -> str:
    return f"""\
site: {{name: 外发测试}}
channels:
  sms: {{provider: http, url: "{sms_url}/send"}}
  webhook: {{url: "{hook_url}/hook"}}
districts:
  - code: D1
    name: 一区
    towns:
      - code: T1
        name: 一镇
        enterprises:
          - code: E1
            name: 一号化工
            contacts: [{{name: 张工, phone: "13800000003", channels: [sms, webhook]}}]
            sensors:
              - {{tag: AT-1, kind: gas_combustible}}
"""


def event(alarm_id: int, sev: Severity = Severity.ORANGE, flood: bool = False) -> AlarmEvent:
    return AlarmEvent(alarm_id=alarm_id, kind=AlarmEventKind.RAISED, ts=T0, enterprise="E1", rule="high",
                      severity=sev, sensor_id=1, tag="AT-1", value=55.0, limit=50.0, message="AT-1 二级报警",
                      flood=flood)


async def prepared(pool: AsyncConnectionPool, site: Site, ids: Iterable[int], severity: str = "orange") -> Park:
    """A migrated database holding the site's registry and open alarms ``ids`` of E1 (raised at T0)."""
    async with pool.connection() as conn:
        await migrate(conn)
        park = await sync_registry(conn, site)
        for i in ids:
            await conn.execute("INSERT INTO alarms (id, dedup_key, enterprise_code, rule, severity, state,"
                               " raised_at) VALUES (%s, %s, 'E1', 'high', %s, 'active_unacked', %s)",
                               (i, f"k{i}", severity, T0))
        return park


def hook_ok(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
            fault: str | None) -> tuple[int, Any, dict[str, str]]:
    return 200, {"ok": True}, {}


def test_retry_with_backoff_then_fall_back_to_the_next_channel(db_url: str) -> None:
    sms, hook = VendorServer(sms_gateway), VendorServer(hook_ok)
    site = parse_site(site_text(sms.url, hook.url), environ={})

    async def go() -> None:
        async with open_pool(db_url, min_size=1, max_size=3) as pool:
            park = await prepared(pool, site, range(1, 2))
            plans = Escalator(park).on_event(event(1))
            renderer, signer = Renderer(park), LinkSigner(b"0123456789abcdef")
            async with pool.connection() as conn, conn.transaction():
                await enqueue(conn, [(p, payload_of(p, park, renderer, signer, "http://hw")) for p in plans])
                await enqueue(conn, [(p, payload_of(p, park, renderer, signer, "http://hw")) for p in plans])
            async with httpx.AsyncClient() as client:
                assert site.channels.sms is not None and site.channels.webhook is not None
                settings = load_settings(site, EnvSettings(database_url=db_url, public_url="http://hw"))
                worker = AlertingService(
                    settings=settings, park=park, pool=pool, clock=FakeClock(T0), inbox=asyncio.Queue(),
                    registry=CollectorRegistry(),
                    channels={"sms": HttpSms(site.channels.sms, client),  # type: ignore[dict-item]
                              "webhook": Webhook(site.channels.webhook, client)})
                # attempt 1: a 503 — retried later, not now
                sms.faults += ["503"]
                [c] = await worker.claim(T0)
                assert await worker.deliver(c, T0) == "failed"
                assert await worker.claim(T0) == []
                # attempt 2 after the backoff: sent
                [c] = await worker.claim(T0 + timedelta(minutes=10))
                assert await worker.deliver(c, T0) == "sent"
                # a second alarm whose SMS is refused for good (HTTP 400): the contact's next channel, the webhook
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO alarms (id, dedup_key, enterprise_code, rule, severity, state,"
                                       " raised_at) VALUES (2, 'k2', 'E1', 'high', 'orange', 'active_unacked', %s)",
                                       (T0,))
                p2 = Escalator(park).on_event(event(2))
                async with pool.connection() as conn, conn.transaction():
                    await enqueue(conn, [(p, payload_of(p, park, renderer, signer, "http://hw")) for p in p2])
                sms.faults += ["400"]
                [c] = await worker.claim(T0)
                assert await worker.deliver(c, T0) == "failed"
                [c] = await worker.claim(T0)
                assert c.channel == "webhook" and await worker.deliver(c, T0) == "sent"
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT alarm_id, channel, attempt, outcome FROM notifications ORDER BY id")
                assert await cur.fetchall() == [(1, "sms", 1, "failed"), (1, "sms", 2, "sent"),
                                                 (2, "sms", 1, "failed"), (2, "webhook", 1, "sent")]
                cur = await conn.execute("SELECT count(*) FROM outbox WHERE alarm_id = 1")
                assert (await cur.fetchone())[0] == 1  # planned twice, one row: the idempotency key  # type: ignore[index]
        assert [json.loads(r["body"])["id"] for r in sms.ok()] == [plans[0].key]
        assert len(hook.ok()) == 1

    try:
        asyncio.run(go())
    finally:
        sms.close()
        hook.close()


def test_flood_folds_messages_into_one_summary_per_unit_but_never_holds_red(db_url: str) -> None:
    sms, hook = VendorServer(sms_gateway), VendorServer(hook_ok)
    site = parse_site(site_text(sms.url, hook.url), environ={})
    clock = FakeClock(T0)

    async def go() -> None:
        async with open_pool(db_url, min_size=1, max_size=3) as pool:
            park = await prepared(pool, site, range(1, 8))
            settings = load_settings(site, EnvSettings(database_url=db_url, public_url="http://hw"))
            svc = AlertingService(settings=settings, park=park, pool=pool, clock=clock, inbox=asyncio.Queue(),
                                  registry=CollectorRegistry(), channels={})
            svc._last_flood_summary = T0
            for i in range(1, 7):
                await svc._plan(svc.escalator.on_event(event(i, flood=True)))
            await svc._plan(svc.escalator.on_event(event(7, Severity.RED, flood=True)))
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT alarm_id, step FROM outbox WHERE status <> 'held' ORDER BY id")
                assert await cur.fetchall() == [(7, "immediate")], "only red goes out during a flood"
                cur = await conn.execute("SELECT count(*) FROM outbox WHERE status = 'held'")
                assert (await cur.fetchone()) == (6,), "held flood messages are rows, not memory"
            await svc._flood_summaries(T0 + FLOOD_SUMMARY_EVERY)
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT unit_code, contact, payload->>'text' FROM outbox"
                                         " WHERE step LIKE 'flood-%'")
                [(unit, contact, text)] = await cur.fetchall()
                cur = await conn.execute("SELECT count(*) FROM outbox WHERE status = 'folded'")
                assert (await cur.fetchone()) == (6,)
            assert (unit, contact) == ("E1", "张工") and "6条预警" in text

    try:
        asyncio.run(go())
    finally:
        sms.close()
        hook.close()


def test_an_alarm_stored_just_before_a_crash_is_escalated_after_restart(db_url: str) -> None:
    """The rule stage committed the alarm; the service died before alerting planned a message."""
    sms, hook = VendorServer(sms_gateway), VendorServer(hook_ok)
    site = parse_site(site_text(sms.url, hook.url), environ={})

    async def go() -> None:
        async with open_pool(db_url, min_size=1, max_size=3) as pool:
            async with pool.connection() as conn:
                await migrate(conn)
                park = await sync_registry(conn, site)
                await conn.execute("INSERT INTO alarms (id, dedup_key, enterprise_code, tag, rule, severity, state,"
                                   " raised_at, message) VALUES (1, 'k', 'E1', 'AT-1', 'high', 'orange',"
                                   " 'active_unacked', %s, 'AT-1 二级报警')", (T0,))
                await conn.execute("INSERT INTO alarms (id, dedup_key, enterprise_code, tag, rule, severity, state,"
                                   " raised_at, acked_at) VALUES (2, 'k2', 'E1', 'AT-1', 'high', 'orange',"
                                   " 'active_acked', %s, %s)", (T0, T0))
            settings = load_settings(site, EnvSettings(database_url=db_url, public_url="http://hw"))
            svc = AlertingService(settings=settings, park=park, pool=pool, clock=FakeClock(T0),
                                  inbox=asyncio.Queue(), registry=CollectorRegistry(), channels={})
            assert await svc.restore() == 2
            assert await svc.restore() == 2  # a second restart plans nothing twice
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT alarm_id, unit_code, contact, step FROM outbox ORDER BY id")
                assert await cur.fetchall() == [(1, "E1", "张工", "immediate")]  # the acked alarm needs nothing

    try:
        asyncio.run(go())
    finally:
        sms.close()
        hook.close()


def test_an_acknowledged_alarm_gets_no_later_step_even_from_an_escalator_that_has_not_heard_of_it(
        db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The race behind the board test's extra SMS: the ack is committed, the ACKED event still queued for
    alerting, and a tick plans the town step. The database, not the in-memory escalation, decides — also
    for what alerting would hand to its local journal if the database went away now."""
    from park.journal import Journal

    sms, hook = VendorServer(sms_gateway), VendorServer(hook_ok)
    site = parse_site(site_text(sms.url, hook.url), environ={})

    async def go() -> None:
        async with open_pool(db_url, min_size=1, max_size=3) as pool:
            park = await prepared(pool, site, range(1, 2))
            settings = load_settings(site, EnvSettings(database_url=db_url, public_url="http://hw"))
            svc = AlertingService(settings=settings, park=park, pool=pool, clock=FakeClock(T0), inbox=asyncio.Queue(),
                                  registry=CollectorRegistry(), channels={})
            await svc._plan(svc.escalator.on_event(event(1), T0))
            # a reminder planned (due later) before the ack; then the ack is committed by the rule stage
            await svc._plan(svc.escalator.on_tick(T0 + timedelta(minutes=10)))
            async with pool.connection() as conn:
                await conn.execute("UPDATE alarms SET acked_at = %s, state = 'active_acked' WHERE id = 1", (T0,))
            await svc._plan(svc.escalator.on_tick(T0 + timedelta(minutes=20)))  # escalator not yet told
            claimed = await svc.claim(T0 + timedelta(minutes=30))
            assert [c.step for c in claimed] == ["immediate"]
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT step, status FROM outbox ORDER BY id")
                assert await cur.fetchall() == [("immediate", "sending"), ("repeat-1", "cancelled")]
            # the claim had room for every due row and returned only the first notice: the reminders the
            # table cancelled or refused are not kept for the journal (an outage now sends none of them)
            assert svc.pg.unclaimed.hand_over(Journal(tmp_path / "j.sqlite3")) == 0

    try:
        asyncio.run(go())
    finally:
        sms.close()
        hook.close()


def test_a_first_notice_is_claimed_by_the_write_that_plans_it_while_the_sender_has_room(db_url: str) -> None:
    """A new alarm's first notice goes out one commit after it is planned, not two: the planning
    write claims what of it is due (the sender is handed it); a step due later stays pending; with
    the sender full, the plan is only written and the sender's own claim takes it."""
    from alerting.service import IN_FLIGHT

    sms, hook = VendorServer(sms_gateway), VendorServer(hook_ok)
    site = parse_site(site_text(sms.url, hook.url), environ={})

    async def go() -> None:
        async with open_pool(db_url, min_size=1, max_size=3) as pool:
            park = await prepared(pool, site, (1, 2))
            settings = load_settings(site, EnvSettings(database_url=db_url, public_url="http://hw"))
            svc = AlertingService(settings=settings, park=park, pool=pool, clock=FakeClock(T0), inbox=asyncio.Queue(),
                                  registry=CollectorRegistry(), channels={})

            async def rows() -> list[tuple[int, str, str, int]]:
                async with pool.connection() as conn:
                    cur = await conn.execute("SELECT alarm_id, step, status, attempts FROM outbox"
                                             " WHERE channel = 'sms' ORDER BY id")
                    return await cur.fetchall()

            await svc._plan(svc.escalator.on_event(event(1), T0))
            assert [(c.alarm_id, c.step, c.attempts) for c in svc._take_handed()] == [(1, "immediate", 1)]
            assert await rows() == [(1, "immediate", "sending", 1)]
            await svc._plan(svc.escalator.on_tick(T0 + timedelta(minutes=10)))  # written at T0, due later
            assert not svc._take_handed()
            assert (await rows())[1:] == [(1, "repeat-1", "pending", 0)]
            svc._sending = IN_FLIGHT  # the sender is full: the plan is written, nothing claimed
            await svc._plan(svc.escalator.on_event(event(2), T0))
            assert not svc._take_handed()
            assert (2, "immediate", "pending", 0) in await rows()
            svc._sending = 0
            assert [(c.alarm_id, c.step) for c in await svc.claim(T0) if c.channel == "sms"] == [(2, "immediate")]

    try:
        asyncio.run(go())
    finally:
        sms.close()
        hook.close()


def test_a_new_alarms_first_notice_is_claimed_before_a_wave_of_reminders(db_url: str) -> None:
    """150 open red alarms remind at once; a new alarm raised then is told first, not after 300 SMS."""
    sms, hook = VendorServer(sms_gateway), VendorServer(hook_ok)
    site = parse_site(site_text(sms.url, hook.url), environ={})

    async def go() -> None:
        async with open_pool(db_url, min_size=1, max_size=3) as pool:
            park = await prepared(pool, site, range(1, 152), "red")
            settings = load_settings(site, EnvSettings(database_url=db_url, public_url="http://hw"))
            svc = AlertingService(settings=settings, park=park, pool=pool, clock=FakeClock(T0), inbox=asyncio.Queue(),
                                  registry=CollectorRegistry(), channels={})
            for i in range(1, 151):
                await svc._plan(svc.escalator.on_event(event(i, Severity.RED), T0))
            while await svc.claim(T0):  # the first notices of the 150 went out
                pass
            wave = T0 + timedelta(minutes=5, seconds=1)
            await svc._plan(svc.escalator.on_tick(wave))  # every one of them reminds now (due at 5 min)
            await svc._plan(svc.escalator.on_event(event(151, Severity.RED), wave))  # a new alarm, a second later
            claimed = await svc.claim(wave)
            # one claim is 50 messages, sent together; the new alarm's are in the first one
            assert len(claimed) == 50 and [c.step for c in claimed if c.alarm_id == 151] == ["immediate"]

    try:
        asyncio.run(go())
    finally:
        sms.close()
        hook.close()


def test_the_local_journal_also_tells_a_new_alarm_before_a_wave_of_reminders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """While the database is away, messages wait in the local journal: the same order applies there."""
    from park.journal import Journal

    j = Journal(tmp_path / "journal.sqlite3")
    for i in range(100):
        j.put_message(f"{i}/E1/13800000003/sms/repeat-1", {"i": i}, T0 + timedelta(minutes=5))
    j.put_message("100/E1/13800000003/sms/cleared", {"i": 100}, T0 + timedelta(minutes=5))
    j.put_message("101/E1/13800000003/sms/immediate", {"i": 101}, T0 + timedelta(minutes=5, seconds=1))
    first = j.due_messages(T0 + timedelta(minutes=6), limit=10)
    assert first[0].key == "101/E1/13800000003/sms/immediate"
    assert all(m.key.endswith("/repeat-1") for m in first[1:])
