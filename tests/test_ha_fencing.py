"""Fencing inside ``hazardwatch run``: the database refuses an old term's writes, and an instance
whose term ran out by its own clock stops its stages and sends nothing, before IO tells it so."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from alerting.errors import NotLeading
from alerting.outbox import Claimed
from alerting.service import AlertingService
from hazardwatch.leadership import FENCED_SQLSTATE, Leadership, fenced_sessions, is_fenced, term_setting
from park.clock import FakeClock
from park.db import open_pool
from park.db.lease import Elector, Term
from park.settings import EnvSettings, load_settings
from park.sitefile import parse_site
from tests.ha_helpers import migrated, registered, until

SITE = """\
site: {name: 围栏测试园区}
channels: {sms: {provider: http, url: "http://127.0.0.1:9/send"}}
districts:
  - code: D1
    name: 一区
    towns:
      - code: T1
        name: 一镇
        enterprises:
          - code: E1
            name: 一号化工
            contacts: [{name: 张工, phone: "13800000003", channels: [sms]}]
            sensors:
              - {tag: AT-1, kind: gas_combustible}
"""

EVENT = "INSERT INTO alarm_events (ts, alarm_id, kind, severity, message) VALUES (now(), 1, 'raised', 'red', 'x')"


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


async def set_term(url: str, epoch: int, token: uuid.UUID) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("UPDATE ha_lease SET epoch = %s, token = %s WHERE name = 'leader'", (epoch, token))


def test_the_database_refuses_every_write_of_a_term_that_is_over(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        old = Term("leader", 1, uuid.uuid4(), "a", 2.0)
        await set_term(db_url, old.epoch, old.token)
        async with open_pool(db_url, min_size=1, max_size=2, configure=fenced_sessions(old)) as pool:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT current_setting('hazardwatch.lease')")
                assert (await cur.fetchone()) == (term_setting(old),)
                await conn.execute(EVENT)  # the current term writes
            # a takeover waits for a writer of the old term still inside its transaction
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(EVENT)
                async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as other:
                    with pytest.raises(psycopg.errors.LockNotAvailable):
                        await other.execute("SELECT 1 FROM ha_lease WHERE name = 'leader' FOR UPDATE NOWAIT")
            await set_term(db_url, 2, uuid.uuid4())  # another instance took over
            for sql in (EVENT, "UPDATE alarms SET state = state", "UPDATE outbox SET status = status",
                        "DELETE FROM notifications", "UPDATE commands SET state = state",
                        "UPDATE units SET name = name", "DELETE FROM rules_state"):
                with pytest.raises(psycopg.Error) as e:
                    async with pool.connection() as conn:
                        await conn.execute(sql)
                assert e.value.sqlstate == FENCED_SQLSTATE, sql
                assert is_fenced(e.value)
        # sessions that carry no term (a standby's API, the command line) are not fenced
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute(EVENT)
            cur = await conn.execute("SELECT count(*) FROM alarm_events")
            assert (await cur.fetchone()) == (3,)

    run(go())


def test_a_term_over_by_the_local_clock_stops_the_stages_and_sends_nothing(make_database) -> None:
    url = make_database("postgres", "hwha2")

    async def go() -> None:
        await migrated(url)
        now = [1000.0]
        # renewals stalled (a frozen process): only the local clock can end the term
        stalled = asyncio.Event()

        async def sleep(seconds: float) -> None:
            await asyncio.sleep(min(seconds, 0.05))
            if el.core.term is not None and el.renewals >= 1:
                await stalled.wait()

        el = Elector(url, "a", ttl=2.0, retry_every=0.1, monotonic=lambda: now[0], sleep=sleep)
        lead = Leadership(el)
        started: list[int] = []
        cancelled: list[int] = []

        async def work(term: Term) -> None:
            started.append(term.epoch)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(term.epoch)
                raise

        tasks = [asyncio.create_task(el.run()), asyncio.create_task(lead.run(work))]
        try:
            await until(lambda: started == [1] and el.renewals >= 1, "a leads and renewed once")
            assert lead.may_act() and lead.role == "leader"
            now[0] += 2.0  # past the term's validity by the local clock; the renewal loop knows nothing yet
            assert not lead.may_act(), "a leader whose term ran out by its own clock may still send"
            await until(lambda: cancelled == [1], "the term's stages cancelled")
            assert el.core.term is not None and el.renewals == 1, "the run loop had not noticed: the clock did it"
        finally:
            stalled.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run(go())


def test_alerting_does_not_send_when_it_may_not(make_database) -> None:
    url = make_database("postgres", "hwha2")
    site = parse_site(SITE, environ={})

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, msg: object) -> str:
            self.sent.append(str(msg))
            return "ok"

    async def go() -> None:
        park = await registered(url, site)
        settings = load_settings(site, EnvSettings(database_url=url, mqtt_client_id="x"))
        sms = Recorder()
        allowed = [True]
        async with open_pool(url, min_size=1, max_size=2) as pool:
            svc = AlertingService(settings=settings, park=park, pool=pool, clock=FakeClock(datetime.now(UTC)),
                                  inbox=asyncio.Queue(), registry=CollectorRegistry(), channels={"sms": sms},  # type: ignore[dict-item]
                                  may_send=lambda: allowed[0])
            c = Claimed(None, "1/E1/13800000003/sms/immediate", 1, "E1", "张工", "sms", "immediate",
                        {"address": "13800000003", "text": "x"}, 1)
            allowed[0] = False
            with pytest.raises(NotLeading):
                await svc.deliver(c, datetime.now(UTC))
            assert sms.sent == []

    run(go())


def test_a_leader_whose_renewal_fails_after_its_term_ran_out_does_not_lead_on_offline(make_database) -> None:
    """Frozen mid-renewal: when the process resumes, the server has ended its lease session and the
    renewal fails with a database error. That is a pause, not an outage: the instance must step down
    as a standby, not "lead on through the local journal" (which would let it send while another
    instance leads)."""
    url = make_database("postgres", "hwha2")

    async def go() -> None:
        await migrated(url)
        now = [1000.0]
        el = Elector(url, "a", ttl=5.0, retry_every=0.1, monotonic=lambda: now[0])
        lead = Leadership(el)
        seen: list[tuple[str, bool, str]] = []  # (role, may_act, reason) at every change of role
        el.listen(lambda role, term, reason: seen.append((role, lead.may_act(), reason)))

        async def work(term: Term) -> None:
            await asyncio.Event().wait()

        tasks = [asyncio.create_task(el.run()), asyncio.create_task(lead.run(work))]
        try:
            await until(lambda: lead.may_act(), "a leads")
            async with await psycopg.AsyncConnection.connect(url) as blocker:
                # the next renewal waits on the lease row: a renewal under way
                await blocker.execute("SELECT 1 FROM ha_lease WHERE name = 'leader' FOR UPDATE")

                async def renewal_waiting() -> bool:
                    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
                        cur = await c.execute("SELECT pid FROM pg_stat_activity WHERE application_name ="
                                              " 'hazardwatch-lease a' AND wait_event_type = 'Lock'")
                        pids[:] = [r[0] for r in await cur.fetchall()]
                        return bool(pids)

                pids: list[int] = []
                await until(renewal_waiting, "the renewal waits on the lease row")
                mark = len(seen)
                now[0] += 5.0  # the process was frozen past its term (by its own clock) ...
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
                    # ... and meanwhile the server ended its silent session
                    await c.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
                await until(lambda: el.core.term is None, "a steps down")
                await blocker.rollback()
            after = seen[mark:]
            assert after, "no change of role seen"
            assert all(role != "offline" and not may for role, may, _ in after), after
            assert "paused" in after[0][2], after
            assert not lead.offline_kept and not lead.may_act()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run(go())
