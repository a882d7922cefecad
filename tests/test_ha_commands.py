"""Operator commands through the database (commands table + NOTIFY) on real PostgreSQL and TimescaleDB."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from park.db import open_pool
from park.db.commands import (
    Ack,
    Command,
    CommandClient,
    CommandDispatcher,
    CommandRefused,
    SetEnterpriseState,
    Shelve,
)
from park.db.lease import Fenced, Term
from park.errors import Unavailable
from park.site import EnterpriseState
from tests.ha_helpers import migrated


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class Recorder:
    """A leader's handler: records what it applied; refuses, fails or stalls on request."""

    def __init__(self) -> None:
        self.applied: list[Command] = []
        self.refuse: CommandRefused | None = None
        self.fail_times = 0  # raise Unavailable this many times first
        self.crash = False
        self.stall = asyncio.Event()
        self.stall.set()
        self.started = asyncio.Event()

    async def __call__(self, cmd: Command) -> None:
        self.started.set()
        await self.stall.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise Unavailable("database", "database away")
        if self.crash:
            raise KeyError("boom")
        if self.refuse is not None:
            raise self.refuse
        self.applied.append(cmd)


@contextlib.asynccontextmanager
async def tasks(*coros: object) -> AsyncIterator[list[asyncio.Task[None]]]:
    ts = [asyncio.create_task(c) for c in coros]  # type: ignore[arg-type]
    try:
        yield ts
    finally:
        for t in ts:
            t.cancel()
        await asyncio.gather(*ts, return_exceptions=True)


async def states(url: str) -> list[tuple[str, str | None]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT state, code FROM commands ORDER BY id")
        return [(r[0], r[1]) for r in await cur.fetchall()]


ACK = Ack(alarm_id=7, by="值班员张三", note="现场确认")


def test_a_command_is_applied_by_the_leader_and_answered_through_notify(db_url: str) -> None:
    """Both sides poll only every 60 s here: an answer within 10 s came by the notifications."""

    async def go() -> None:
        await migrated(db_url)
        handler = Recorder()
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            client = CommandClient(pool, instance="standby-1", poll=60)
            leader = CommandDispatcher(pool, handler, instance="leader-1", poll=60)
            async with tasks(client.run(), leader.run()):
                await client.listening.wait()
                await leader.listening.wait()
                until_ = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
                cmds: list[Command] = [ACK, Shelve(alarm_id=8, by="李四", reason="仪表检修", until=until_),
                                       SetEnterpriseState(enterprise="E001", state=EnterpriseState.MAINTENANCE,
                                                          by="王五")]
                for cmd in cmds:
                    # were a notification lost, the answer would wait for a 60 s poll
                    out = await asyncio.wait_for(client.submit(cmd, within=120), 10)
                    assert out.applied and (out.code, out.reason) == (None, None)
                assert handler.applied == cmds  # typed, equal after the round trip through JSON
        assert await states(db_url) == [("applied", None)] * 3

    run(go())


def test_a_refusal_comes_back_with_its_code_and_reason(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        handler = Recorder()
        handler.refuse = CommandRefused("invalid", "alarm 7 is acknowledged: cannot ack")
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            client = CommandClient(pool, instance="s", poll=0.2)
            async with tasks(CommandDispatcher(pool, handler, instance="l", poll=0.2).run()):
                out = await client.submit(ACK, within=10)
        assert (out.state, out.code, out.reason) == ("refused", "invalid", "alarm 7 is acknowledged: cannot ack")

    run(go())


def test_no_leader_times_out_and_the_command_is_never_applied_later(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        handler = Recorder()
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            client = CommandClient(pool, instance="s", poll=0.1)
            with pytest.raises(Unavailable, match=r"no leader took the command within 0\.5 s; it was not applied"):
                await client.submit(ACK, within=0.5)
            assert await states(db_url) == [("expired", None)]
            # a leader comes up afterwards: the withdrawn command stays withdrawn
            leader = CommandDispatcher(pool, handler, instance="l", poll=0.1)
            async with tasks(leader.run()):
                await leader.listening.wait()
                assert await leader.step() is False
            assert handler.applied == [] and await states(db_url) == [("expired", None)]

    run(go())


def test_a_transient_fault_is_retried_and_a_crash_is_reported_without_stopping_the_leader(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        handler = Recorder()
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            client = CommandClient(pool, instance="s", poll=0.1)
            async with tasks(CommandDispatcher(pool, handler, instance="l", poll=0.1).run()):
                handler.fail_times = 2
                assert (await client.submit(ACK, within=15)).applied
                handler.crash = True
                out = await client.submit(ACK, within=10)
                assert (out.state, out.code, out.reason) == ("failed", "error", "the leader could not apply it "
                                                                              "(KeyError)")
                handler.crash = False
                assert (await client.submit(ACK, within=10)).applied
        assert handler.applied == [ACK, ACK]

    run(go())


def test_a_leader_that_dies_while_applying_leaves_a_failed_command_not_a_hanging_one(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        stuck, fresh = Recorder(), Recorder()
        stuck.stall.clear()
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            client = CommandClient(pool, instance="s", poll=0.1)
            async with tasks(client.submit(ACK, within=20)) as (waiting,):
                async with tasks(CommandDispatcher(pool, stuck, instance="old", poll=0.1).run()):
                    await stuck.started.wait()
                # the old leader is gone mid-command; the next one starts
                async with tasks(CommandDispatcher(pool, fresh, instance="new", poll=0.1).run()):
                    out = await waiting
        assert (out.state, out.code) == ("failed", "leader_changed")
        assert fresh.applied == [] and stuck.applied == []

    run(go())


def test_a_fenced_leader_takes_no_command(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        token = uuid.uuid4()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute("UPDATE ha_lease SET epoch = 5, token = %s WHERE name = 'leader'", (token,))
        term = Term("leader", 5, token, "l", 2.0)
        handler = Recorder()
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            client = CommandClient(pool, instance="s", poll=0.1)
            leader = CommandDispatcher(pool, handler, instance="l", term=term, poll=0.1)
            async with tasks(leader.run()):
                assert (await client.submit(ACK, within=10)).applied
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                await conn.execute("UPDATE ha_lease SET epoch = 6, token = gen_random_uuid() WHERE name = 'leader'")
                await conn.execute("INSERT INTO commands (kind, args, deadline) VALUES"
                                   " ('ack', '{\"alarm_id\": 9, \"by\": \"x\"}', now() + interval '1 minute')")
            with pytest.raises(Fenced):
                await leader.step()
        assert len(handler.applied) == 1 and (await states(db_url))[-1] == ("pending", None)

    run(go())


def test_a_malformed_command_row_is_refused_with_what_is_wrong(db_url: str) -> None:
    async def go() -> None:
        await migrated(db_url)
        handler = Recorder()
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO commands (kind, args, deadline) VALUES"
                                   " ('ack', '{\"alarm_id\": \"seven\", \"by\": \"x\"}', now() + interval '1 minute'),"
                                   " ('reboot', '{}', now() + interval '1 minute')")
            leader = CommandDispatcher(pool, handler, instance="l")
            assert await leader.step() and await leader.step() and not await leader.step()
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT state, code, reason FROM commands ORDER BY id")
                rows = await cur.fetchall()
        assert [r[:2] for r in rows] == [("refused", "bad_command")] * 2
        assert "alarm_id" in rows[0][2] and "reboot" in rows[1][2]
        assert handler.applied == []

    run(go())


def test_a_command_past_its_deadline_is_not_taken(db_url: str) -> None:
    """The client that sent it gave up (and may have crashed before withdrawing it): too late to apply."""

    async def go() -> None:
        await migrated(db_url)
        handler = Recorder()
        async with open_pool(db_url, min_size=1, max_size=4) as pool:
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO commands (kind, args, deadline) VALUES"
                                   " ('ack', '{\"alarm_id\": 7, \"by\": \"x\"}', now() - interval '1 second')")
            leader = CommandDispatcher(pool, handler, instance="l", poll=0.1)
            assert await leader.step() is False
            async with tasks(leader.run()):
                await leader.listening.wait()
        assert handler.applied == [] and await states(db_url) == [("expired", None)]

    run(go())


def test_database_away_answers_unavailable_at_once() -> None:
    async def go() -> None:
        async with open_pool("postgresql://postgres@127.0.0.1:9/none?connect_timeout=1", min_size=1,
                             max_size=1, wait=False) as pool:
            client = CommandClient(pool, instance="s")
            with pytest.raises(Unavailable, match="could not be handed to the leader"):
                await client.submit(ACK, within=1)

    run(go())


def test_commands_carry_the_payloads_the_api_takes() -> None:
    with pytest.raises(ValueError):
        Ack(alarm_id=1, by="")  # who acknowledges is required
    with pytest.raises(ValueError):
        Shelve(alarm_id=1, by="x", reason="r", until=datetime(2026, 11, 23, 9, 0))  # naive: refused
    s = Shelve(alarm_id=1, by="x", reason="r", until=datetime(2026, 11, 23, 9, 0, tzinfo=UTC) + timedelta(hours=1))
    assert s.kind == "shelve"

