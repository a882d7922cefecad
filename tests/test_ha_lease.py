"""Leadership by a lease in real PostgreSQL and TimescaleDB: one leader, takeover, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from park.db.lease import Elector, Fenced, LeaseCore, Term, fence
from tests.ha_helpers import Gate, lease_row, migrated, until

TTL = 2.0  # short, so a stalled leader's session times out quickly; renewals every TTL / 3


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


# -- the decision core, on a hand-moved clock --------------------------------------------------


def test_core_term_is_valid_until_last_renewal_send_plus_ttl_less_margin() -> None:
    term = Term("leader", 3, uuid.uuid4(), "a", 10.0)
    core = LeaseCore(ttl=10.0, renew_every=3.0, margin=0.2)
    assert core.current(0.0) is None
    # timeline: acquired at 100 (send time) → valid until 108; renewal sent at 103 → valid until 111
    core.acquired(term, 100.0)
    cases = [(100.0, term), (107.99, term), (108.0, None)]
    for now, want in cases:
        assert core.current(now) is want, now
    assert core.renew_in(101.0) == pytest.approx(2.0)
    assert core.renew_in(104.0) == 0.0  # overdue: renew at once
    core.renewed(103.0)
    assert core.current(110.9) is term and core.current(111.0) is None
    assert core.remaining(109.0) == pytest.approx(2.0)
    core.lost()
    assert core.current(103.5) is None and core.remaining(103.5) == 0.0


def test_elector_refuses_cadences_that_cannot_keep_a_lease() -> None:
    with pytest.raises(ValueError, match="shorter than ttl"):
        Elector("postgresql://", "a", ttl=2.0, renew_every=2.0)
    with pytest.raises(ValueError, match="shorter than ttl"):
        Elector("postgresql://", "a", ttl=2.0, retry_every=3.0)


# -- real databases ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(*electors: Elector) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(e.run(), name=f"elector-{e.instance}") for e in electors]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]


def elector(url: str, name: str, **kw: object) -> Elector:
    return Elector(url, name, ttl=TTL, retry_every=0.1, **kw)  # type: ignore[arg-type]


async def probe_table(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS ha_probe (id serial, instance text, epoch bigint)")


async def fenced_insert(conn: psycopg.AsyncConnection, term: Term) -> None:
    async with conn.transaction():
        await fence(conn, term)
        await conn.execute("INSERT INTO ha_probe (instance, epoch) VALUES (%s, %s)", (term.instance, term.epoch))


async def probe_rows(url: str, instance: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM ha_probe WHERE instance = %s", (instance,))
        return int((await cur.fetchone() or [0])[0])


def test_two_candidates_exactly_one_leads(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        a, b = elector(db_url, "a"), elector(db_url, "b")
        async with running(a, b):
            await until(lambda: a.leading() is not None or b.leading() is not None, "someone leads")
            leader, other = (a, b) if a.leading() is not None else (b, a)
            # several renewals while the other keeps campaigning every 0.1 s
            await until(lambda: leader.renewals >= 4, "the leader renews")
            assert leader.leading() is not None and other.leading() is None
            assert (leader.role, other.role) == ("leader", "standby")
            assert (leader.takeovers, other.takeovers) == (1, 0)
            epoch, holder, _ = await lease_row(db_url)
            assert (epoch, holder) == (1, leader.instance)

    run(go())


def test_killed_lease_session_leader_steps_down_and_the_other_takes_over(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        await probe_table(db_url)
        stay_out = asyncio.Event()

        async def sleep_a(seconds: float) -> None:
            await asyncio.sleep(seconds)
            if a.core.term is None:  # once a has stepped down it stays out, so that b must take over
                await stay_out.wait()

        a, b = elector(db_url, "a", sleep=sleep_a), elector(db_url, "b")
        worked: list[str] = []

        async def work(term: Term) -> None:
            worked.append(f"start {term.epoch}")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                worked.append(f"cancelled {term.epoch}")
                raise

        async with running(a):
            await until(lambda: a.leading() is not None, "a leads")
            async with running(b), asyncio.TaskGroup() as tg:
                leading = tg.create_task(a.lead(work))
                await until(lambda: worked == ["start 1"], "a's leader work starts")
                term_a = a.leading()
                assert term_a is not None
                epoch, _, pid = await lease_row(db_url)
                assert epoch == term_a.epoch == 1
                async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as admin:
                    await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed = time.monotonic()
                await until(lambda: a.leading() is None and a.role != "leader", "a steps down")
                await until(lambda: worked == ["start 1", "cancelled 1"], "a's leader work is cancelled")
                await until(lambda: b.leading() is not None, "b takes over")
                print(f"takeover after the leader's session was killed: {time.monotonic() - killed:.2f} s")
                term_b = b.leading()
                assert term_b is not None and term_b.epoch == 2 and term_b.token != term_a.token
                assert (await lease_row(db_url))[:2] == (2, "b")
                async with await psycopg.AsyncConnection.connect(db_url) as conn:
                    with pytest.raises(Fenced) as e:
                        await fenced_insert(conn, term_a)
                    assert (e.value.epoch, e.value.current) == (1, 2)
                    await fenced_insert(conn, term_b)
                assert (await probe_rows(db_url, "a"), await probe_rows(db_url, "b")) == (0, 1)
                leading.cancel()
            stay_out.set()

    run(go())


@pytest.mark.parametrize("flavor", ["postgres"])
def test_paused_leader_resumes_fenced(make_database, flavor: str) -> None:  # type: ignore[no-untyped-def]
    """A leader stalls (its renewals held) with a write open inside a fenced transaction.

    timeline: a leads (epoch 1) · a's writer opens a transaction, fences, inserts, does not commit ·
    a's loop stalls · ttl later the server ends a's idle lease session and idle transaction ·
    b takes over (epoch 2) · a's commit fails, a's next write is Fenced · a's loop resumes and
    steps down.
    """
    url = make_database(flavor, "hwha")

    async def go() -> None:
        await migrated(url)
        await probe_table(url)
        gate = Gate()
        a, b = elector(url, "a", sleep=gate.sleep), elector(url, "b")
        async with running(a):
            await until(lambda: a.leading() is not None, "a leads")
            term_a = a.leading()
            assert term_a is not None
            async with running(b):
                writer = await psycopg.AsyncConnection.connect(url)
                try:
                    await fence(writer, term_a)
                    await writer.execute("INSERT INTO ha_probe (instance, epoch) VALUES ('a', 1)")
                    gate.hold()
                    await until(lambda: gate.held > 0, "a's renewal loop stalls")
                    await until(lambda: b.leading() is not None, "b takes over")
                    # a's own clock already says it no longer leads, though its loop is stalled
                    assert a.leading() is None and a.role == "leader"
                    term_b = b.leading()
                    assert term_b is not None and term_b.epoch == 2
                    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
                        await writer.commit()  # the server ended the frozen transaction
                finally:
                    await writer.close()
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    with pytest.raises(Fenced):
                        await fenced_insert(conn, term_a)
                assert await probe_rows(url, "a") == 0
                gate.release()
                await until(lambda: a.role != "leader", "a's loop resumes and steps down")
                assert a.last_step_down is not None and "ran out" in a.last_step_down
                assert b.leading() is not None

    run(go())


def test_fence_refuses_autocommit(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        term = Term("leader", 0, uuid.uuid4(), "x", 2.0)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            with pytest.raises(Exception, match="inside the transaction"):
                await fence(conn, term)

    run(go())


def test_takeover_waits_for_the_old_terms_open_write(db_url: str) -> None:
    """A write the old leader fenced before the takeover commits first; the new term begins after it.

    timeline: a leads (epoch 1) · a's writer fences and inserts, still open · a's lease session is
    killed · b gets the advisory lock but waits on the lease row · the write commits · b leads.
    """

    async def go() -> None:
        await migrated(db_url)
        await probe_table(db_url)
        a = Elector(db_url, "a", ttl=8.0, retry_every=0.1)
        b = Elector(db_url, "b", ttl=8.0, retry_every=0.1)
        async with running(a):
            await until(lambda: a.leading() is not None, "a leads")
            term_a = a.leading()
            assert term_a is not None
            async with running(b), await psycopg.AsyncConnection.connect(db_url, autocommit=True) as admin:
                async with await psycopg.AsyncConnection.connect(db_url) as writer:
                    await fence(writer, term_a)
                    await writer.execute("INSERT INTO ha_probe (instance, epoch) VALUES ('a', 1)")
                    _, _, pid = await lease_row(db_url)
                    await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

                    async def b_waits_on_the_row() -> bool:
                        cur = await admin.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hazardwatch-lease b'"
                            " AND wait_event_type = 'Lock' AND query LIKE '%%FOR UPDATE%%'")
                        return (await cur.fetchone() or [0])[0] == 1

                    await until(b_waits_on_the_row, "b's takeover waits for a's open write", within=6)
                    assert b.leading() is None and b.role == "standby"
                    await writer.commit()
                await until(lambda: b.leading() is not None, "b takes over once the write committed")
                assert await probe_rows(db_url, "a") == 1

    run(go())


def test_leader_steps_down_when_its_term_moved_on(db_url: str) -> None:
    """The lease row says another term began (an operator, or a failover that lost commits)."""

    async def go() -> None:
        await migrated(db_url)
        await probe_table(db_url)
        stay_out = asyncio.Event()

        async def sleep_a(seconds: float) -> None:
            await asyncio.sleep(seconds)
            if a.core.term is None:
                await stay_out.wait()

        a = elector(db_url, "a", sleep=sleep_a)
        async with running(a):
            await until(lambda: a.leading() is not None, "a leads")
            term_a = a.leading()
            assert term_a is not None
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as admin:
                # the same epoch number with another term's token: fencing tells them apart
                await admin.execute("UPDATE ha_lease SET token = gen_random_uuid() WHERE name = 'leader'")
            async with await psycopg.AsyncConnection.connect(db_url) as conn:
                with pytest.raises(Fenced):
                    await fenced_insert(conn, term_a)
            await until(lambda: a.role != "leader", "a steps down")
            assert a.last_step_down == "another instance took over (the lease's term moved on)"
            stay_out.set()

    run(go())


def test_a_leader_whose_own_clock_says_the_lease_ran_out_stops_leading_at_once(db_url: str) -> None:
    """The process was paused (its monotonic clock jumped): before any IO it no longer leads, its
    leader work is cancelled, and its loop steps down rather than renew a lease it may have lost."""

    async def go() -> None:
        await migrated(db_url)
        fake = [1000.0]
        a = elector(db_url, "a", monotonic=lambda: fake[0])
        worked: list[str] = []

        async def work(term: Term) -> None:
            worked.append(f"start {term.epoch}")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                worked.append(f"cancelled {term.epoch}")
                raise

        async with running(a), asyncio.TaskGroup() as tg:
            leading = tg.create_task(a.lead(work))
            await until(lambda: worked == ["start 1"], "a leads and its work starts")
            fake[0] += TTL  # a pause as long as the lease
            assert a.leading() is None  # at once, from the clock alone
            await until(lambda: worked[:2] == ["start 1", "cancelled 1"], "the work of the lost term is cancelled")
            await until(lambda: a.last_step_down is not None, "the loop steps down")
            assert a.last_step_down == "lease ran out before it could be renewed (process paused or starved)"
            leading.cancel()

    run(go())
