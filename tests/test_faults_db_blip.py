"""A database blip inside each stage: the whole service on a fake clock, its database reached through
a proxy that drops every connection at the moment the stage under test touches the database.

For each stage — ingest's writer, the rules' commit, alerting's planning, flood summaries, outbox
claim and attempt record, an API command — the service stays up, the stage reports itself degraded
(``/readyz`` 503 with its reason, ``hazardwatch_stage_degraded{stage}`` 1) and then recovers by
itself once the database is back; no reading is lost and every SMS reaches the gateway exactly once.
The fault is injected at the stage (a wrapper that cuts the proxy, then calls the real method); the
database, broker and service are real."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from alerting.service import FLOOD_SUMMARY_EVERY
from hazardwatch.service import ServiceHandle
from park.clock import FakeClock
from tests.db_proxy import db_proxy
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

# stage under test → (the health stage that must report it, where the fault is injected)
STAGES: dict[str, str | None] = {
    "ingest-writer": "ingest.database",
    "rules-commit": "rules",
    "alerting-plan": "alerting",
    "alerting-flood-summaries": "alerting",
    "alerting-outbox-claim": "alerting",
    "alerting-attempt-record": "alerting",
    "api-command": None,  # the API is no stage: it answers 503 at once and /readyz shows the database away
}


async def until(probe: Callable[[], Any], what: str, within: float = 60.0) -> Any:
    """Wait for ``probe`` (sync or async) to hold; a generous deadline, never a timing."""
    deadline = time.monotonic() + within
    while True:
        got = probe()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.05)


def degraded_metric(h: ServiceHandle, stage: str) -> float | None:
    return h.registry.get_sample_value("hazardwatch_stage_degraded", {"stage": stage})


def arm(h: ServiceHandle, stage: str, cut: Callable[[], None], after: bool = False) -> list[int]:
    """Wrap the method the stage touches the database with: its next call cuts the proxy first (or,
    ``after``, once the real call has returned)."""
    fired: list[int] = []

    def target() -> tuple[Any, str]:
        return {
            "ingest-writer": (h.ingest, "_write"),
            "rules-commit": (h.rules, "_store"),
            "alerting-plan": (h.alerting.pg, "enqueue_and_claim"),  # a first notice: planned and claimed in one write
            "alerting-flood-summaries": (h.alerting.pg, "fold_held"),
            "alerting-outbox-claim": (h.alerting.pg, "claim"),
            "alerting-attempt-record": (h.alerting.pg, "record"),
        }[stage]

    obj, name = target()
    real = getattr(obj, name)
    if asyncio.iscoroutinefunction(real):
        @functools.wraps(real)
        async def wrapped(*a: Any, **kw: Any) -> Any:
            first = not fired
            if first:
                fired.append(1)
                if not after:
                    cut()
            out = await real(*a, **kw)
            if first and after:
                cut()
            return out
    else:
        @functools.wraps(real)
        def wrapped(*a: Any, **kw: Any) -> Any:  # ingest's writer runs in a worker thread
            if not fired:
                fired.append(1)
                cut()
            return real(*a, **kw)
    setattr(obj, name, wrapped)
    return fired


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_database_blip_inside_a_stage_is_survived_with_nothing_lost_or_doubled(  # type: ignore[no-untyped-def]
        stage: str, make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    health_stage = STAGES[stage]
    sms = stand_ins.sms
    clock = FakeClock(T0)
    ms = int(T0.timestamp() * 1000)

    async def go() -> None:
        with db_proxy(make_database("postgres", "hwf2blip")) as proxy:
            async with running_service(stand_ins.site, proxy.url(), mqtt_url, topic_prefix, clock) as (h, client):
                pub = Publisher(mqtt_url)
                run = asyncio.current_task()
                service = next(t for t in asyncio.all_tasks() if t is not run and "run_service" in repr(t.get_coro()))
                if stage == "api-command":
                    headers = await token_for(h, "E1")
                elif stage != "alerting-flood-summaries":
                    fired = arm(h, stage, proxy.down)
                _hh_gas(pub, topic_prefix, ms)
                await until(lambda: _raised(h), "the alarm raised")
                if stage == "alerting-flood-summaries":
                    # summaries are folded every few minutes of the service's time: let one fall due
                    await until(lambda: len(sms.ok()) == 1, "the immediate SMS")
                    # armed only now: the stage's first pass folds at once, and a cut there could come before
                    # the alarm (CI saw it once: the database then stayed down and the test waited for ever)
                    fired = arm(h, stage, proxy.down)
                    clock.advance(FLOOD_SUMMARY_EVERY + timedelta(seconds=1))
                if stage == "api-command":
                    [aid] = [a.alarm_id for a in h.rules.engine.alarms.values() if a.tag == "AT-1"]
                    await until(lambda: len(sms.ok()) == 1, "the immediate SMS")
                    # the board has been using its token: it is known before the database goes away
                    assert (await client.get("/api/v1/alarms", headers=headers)).status_code == 200
                    proxy.down()
                    r = await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": "张工"}, headers=headers)
                    assert r.status_code == 503, r.text
                    assert "数据库" in r.text, "a clear message, not a hang or a 500"
                else:
                    await until(lambda: fired, "the stage touched the database")
                # the stage is degraded while the database is away, and says so
                if health_stage is not None:
                    await until(lambda: not h.health.report().get(health_stage, {"ok": True})["ok"],
                                f"{health_stage} degraded")
                    ready = await client.get("/readyz")
                    assert ready.status_code == 503 and not ready.json()["stages"][health_stage]["ok"], ready.text
                    assert degraded_metric(h, health_stage) == 1
                else:
                    ready = await client.get("/readyz")
                    assert ready.status_code == 503 and ready.json()["database"] is False, ready.text
                assert not service.done(), "the service is still running"
                proxy.up()
                # ... and recovers by itself
                await until(lambda: h.health.all_ok, f"every stage well again: {h.health.report()}")
                await until(lambda: _ready(client), "/readyz 200 again")
                if health_stage is not None:
                    assert degraded_metric(h, health_stage) == 0
                if stage == "api-command":
                    r = await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": "张工"}, headers=headers)
                    assert r.status_code == 200, r.text
                    await until(lambda: _acks(h, aid), "the acknowledgement recorded")
                    assert await _acks(h, aid) == 1, "acknowledged once: the refused attempt changed nothing"
                # nothing lost, nothing doubled
                # (the flood case moves the clock minutes on: more messages may fall due, each once too)
                counts = await until(lambda: len(sms.ok()) >= 1 and _settled(h), "every message delivered and recorded")
                assert counts is not None and counts["readings"] == 1 and counts["alarms"] >= 1, counts
                assert counts["keys_sent_twice"] == 0 and counts["keys_unrecorded"] == 0, (counts, await _notes(h))
                delivered = [json.loads(r["body"])["id"] for r in sms.ok()]
                assert len(delivered) == len(set(delivered)) == counts["sms_keys"], (delivered, counts)
                assert f"{aid1(h)}/E1/13800000003/sms/immediate" in delivered
                assert sms.duplicates() == [], "each SMS delivered once"
                assert proxy.drops >= 1
                assert not service.done()
                pub.close()

    asyncio.run(go())


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def _acks(h: ServiceHandle, aid: int) -> int:
    async with h.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM alarm_events WHERE alarm_id = %s AND kind = 'acked'", (aid,))
        return (await cur.fetchone())[0]  # type: ignore[index]


async def _notes(h: ServiceHandle) -> list[tuple[object, ...]]:
    async with h.pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM notifications ORDER BY id")
        return await cur.fetchall()


def aid1(h: ServiceHandle) -> int | None:
    return next(a.alarm_id for a in h.rules.engine.alarms.values() if a.tag == "AT-1")


def _raised(h: ServiceHandle) -> bool:
    return any(a.tag == "AT-1" for a in h.rules.engine.alarms.values())


def _hh_gas(pub: Publisher, prefix: str, ms: int) -> None:
    """An HH combustible-gas reading: orange, the enterprise's contact by SMS (and its robot)."""
    pub.publish(f"{prefix}/E1/data", json.dumps({"ts": ms, "points": [{"tag": "AT-1", "value": 55}]}))


async def _settled(h: ServiceHandle) -> dict[str, int] | None:
    """What the database holds once every planned message is delivered and recorded; None before."""
    async with h.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FILTER (WHERE status <> 'sent'),"
                                 " count(*) FILTER (WHERE channel = 'sms') FROM outbox")
        open_rows, sms_keys = await cur.fetchone()  # type: ignore[misc]
        if open_rows:
            return None
        out = {"sms_keys": sms_keys}
        for key, sql in (
                ("readings", "SELECT count(*) FROM readings"),
                ("alarms", "SELECT count(*) FROM alarms"),
                ("keys_sent_twice", "SELECT count(*) FROM (SELECT idempotency_key FROM notifications"
                                    " WHERE outcome = 'sent' GROUP BY 1 HAVING count(*) > 1) d"),
                ("keys_unrecorded", "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM notifications n"
                                    " WHERE n.idempotency_key = o.idempotency_key AND n.outcome = 'sent')")):
            cur = await conn.execute(sql)
            out[key] = (await cur.fetchone())[0]  # type: ignore[index]
    return out if out["readings"] >= 1 and sms_keys >= 1 else None


def test_an_attempt_recorded_again_from_the_journal_is_one_row(make_database) -> None:  # type: ignore[no-untyped-def]
    """The blip found this: the database commits an attempt's record, the connection dies before the
    acknowledgement, the record goes to the journal too — applying it again must not add a second row."""
    from alerting.outbox import apply_attempt
    from park.db import migrate, open_pool

    doc = {"key": "7/E1/13800000003/sms/immediate", "outbox_id": None, "alarm_id": 7, "unit": "E1", "contact": "张工",
           "channel": "sms", "step": "immediate", "attempt": 1, "ts": T0, "outcome": "sent", "detail": "",
           "status": "sent", "retry_at": None, "failures": 0}

    async def go() -> list[tuple[Any, ...]]:
        async with open_pool(make_database("postgres", "hwf2rec"), min_size=1, max_size=2) as pool:
            async with pool.connection() as conn:
                await migrate(conn)
            for _ in range(2):  # once as committed before the cut, once by the flusher from the journal
                async with pool.connection() as conn, conn.transaction():
                    await apply_attempt(conn, doc)
            async with pool.connection() as conn, conn.transaction():  # the next attempt is a row of its own
                await apply_attempt(conn, doc | {"attempt": 2, "outcome": "failed"})
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT attempt, outcome FROM notifications ORDER BY id")
                return await cur.fetchall()

    assert asyncio.run(go()) == [(1, "sent"), (2, "failed")]


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before-the-alarm", "after-planning", "during-a-retry", "recording-a-failure"])
def test_an_alarm_is_told_while_the_database_stays_away(  # type: ignore[no-untyped-def]
        when: str, make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    """The database goes away — at alerting's first pass, before any alarm; just after the alarm's first
    message was planned into the outbox table (and claimed by the same write), before it was sent;
    just after a failed attempt was recorded there, before its retry; or as that failed attempt is
    being recorded — and stays away: the alarm's immediate SMS still reaches the gateway, from the
    local journal, and once the database is back it is recorded there once."""
    sms = stand_ins.sms
    clock = FakeClock(T0)
    ms = int(T0.timestamp() * 1000)

    async def go() -> None:
        with db_proxy(make_database("postgres", "hwf2first")) as proxy:
            async with running_service(stand_ins.site, proxy.url(), mqtt_url, topic_prefix, clock) as (h, _client):
                pub = Publisher(mqtt_url)
                if when == "before-the-alarm":
                    fired = arm(h, "alerting-flood-summaries", proxy.down)
                    await until(lambda: fired, "alerting's first pass touched the database")
                elif when == "after-planning":
                    fired = arm(h, "alerting-plan", proxy.down, after=True)
                else:
                    sms.faults.append("500")  # the gateway fails the first attempt
                    fired = arm(h, "alerting-attempt-record", proxy.down, after=when == "during-a-retry")
                _hh_gas(pub, topic_prefix, ms)
                await until(lambda: _raised(h), "the alarm raised")
                if when in ("during-a-retry", "recording-a-failure"):
                    await until(lambda: fired and not h.gate.up, "the failed attempt recorded, then the cut")
                    clock.advance(timedelta(minutes=3))  # past the retry's back-off
                await until(lambda: len(sms.ok()) == 1, "the immediate SMS, with the database still away")
                assert fired and proxy.is_down and not h.gate.up
                proxy.up()
                await until(lambda: h.health.all_ok, f"every stage well again: {h.health.report()}")
                counts = await until(lambda: _settled(h), "every message delivered and recorded")
                assert counts["keys_sent_twice"] == 0 and counts["keys_unrecorded"] == 0, (counts, await _notes(h))
                assert sms.duplicates() == [], "each SMS delivered once"
                pub.close()

    asyncio.run(go())
