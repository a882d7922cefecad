"""The synchronous-replication guard (``park.db.syncrep``) on a private primary with a synchronous
replica (``tests.pg_cluster``): the replica stopped, a hazardwatch session's commit waits for it —
without the guard, for ever — and the guard, on its injected clock, keeps it on the primary, says
so, leaves other applications' sessions alone, and sees the replica confirm again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import AsyncConnection

from park.db.syncrep import STAGE, SyncRepGuard
from park.health import Health
from tests.ha_helpers import migrated, until
from tests.pg_cluster import PgNode, primary_and_replica, synchronous, wait_streaming


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def waiting(node: PgNode) -> dict[str, list[int]]:
    """application_name → pids of the sessions waiting for the synchronous replica."""
    async with await AsyncConnection.connect(node.url, autocommit=True) as conn:
        cur = await conn.execute("SELECT application_name, pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        out: dict[str, list[int]] = {}
        for app, pid in await cur.fetchall():
            out.setdefault(str(app), []).append(int(pid))
        return out


async def commit_in(conn: AsyncConnection, n: int) -> None:
    await conn.execute("INSERT INTO t (n) VALUES (%s)", (n,))  # autocommit: the statement's commit waits


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_commit_waiting_for_a_lone_synchronous_replica_that_is_down_is_kept_on_the_primary_and_said() -> None:
    with primary_and_replica() as (primary, replica):
        synchronous(primary)

        async def go() -> None:
            await migrated(primary.url)
            async with await AsyncConnection.connect(primary.url, autocommit=True) as setup:
                await setup.execute("CREATE TABLE t (n int)")
            await asyncio.to_thread(replica.stop, "immediate")
            clock, health, registry = Clock(), Health(), CollectorRegistry()
            guard = SyncRepGuard(primary.url, "t", health=health, registry=registry, wait_max=3.0, monotonic=clock,
                                 every=0.01, degraded_every=0.01, probe_every=0.0)
            assert health.report()[STAGE]["ok"]
            stage = await AsyncConnection.connect(primary.url, autocommit=True, application_name="hazardwatch-ingest")
            other = await AsyncConnection.connect(primary.url, autocommit=True, application_name="psql")
            watch = await AsyncConnection.connect(primary.url, autocommit=True, application_name="hazardwatch-syncrep")
            tasks: list[asyncio.Task[None]] = []
            try:
                tasks += [asyncio.create_task(commit_in(stage, 1)), asyncio.create_task(commit_in(other, 2))]
                await until(lambda: _both_wait(primary), "both commits waiting for the replica")
                # seen, not yet overdue on the guard's clock: left alone
                assert await guard.check(watch) == []
                assert health.report()[STAGE]["ok"] and guard.confirming
                clock.t += 3.0
                cut = await guard.check(watch)
                assert cut == [stage.info.backend_pid]
                await asyncio.wait_for(tasks[0], 30)  # the commit returns (kept on the primary, a warning)
                assert not (r := health.report()[STAGE])["ok"] and "primary alone" in str(r["reason"])
                assert registry.get_sample_value("hazardwatch_db_sync_replica_confirming") == 0
                assert registry.get_sample_value("hazardwatch_db_sync_waits_cancelled_total") == 1
                with psycopg.connect(primary.url, autocommit=True) as c:
                    assert c.execute("SELECT n FROM t").fetchall() == [(1,)]  # committed there
                # another application's session is not hazardwatch's business: it still waits
                assert not tasks[1].done() and (await waiting(primary)).get("psql") == [other.info.backend_pid]

                # while the replica does not confirm, a new commit is cut short as soon as it is seen
                tasks.append(asyncio.create_task(commit_in(stage, 3)))
                await until(lambda: _app_waits(primary, "hazardwatch-ingest"), "the next commit waiting")
                assert await guard.check(watch) == [stage.info.backend_pid]
                await asyncio.wait_for(tasks[2], 30)

                # the guard's own loop: its probe commit waits too, is cut at wait_max, the stage stays degraded
                run = asyncio.create_task(guard.run())
                tasks.append(run)
                await until(lambda: _app_waits(primary, "hazardwatch-syncrep-probe t"), "the probe commit waiting")
                clock.t += 3.0
                await until(lambda: guard.probes >= 1, "the probe commit cut short")
                assert not guard.confirming and not health.report()[STAGE]["ok"]

                # the replica back and synchronous: the next probe is confirmed, the stage well again
                await asyncio.to_thread(replica.start)
                await asyncio.to_thread(wait_streaming, primary)
                await until(lambda: health.report()[STAGE]["ok"], "the replica confirming again", 60)
                assert registry.get_sample_value("hazardwatch_db_sync_replica_confirming") == 1
                await commit_in(stage, 4)  # and commits wait for it again, as they should
                assert guard.cancelled == 2
            finally:
                for t in tasks:
                    t.cancel()
                with psycopg.connect(primary.url, autocommit=True) as admin:  # the psql session's wait
                    admin.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'psql'")
                for t in tasks:
                    with contextlib.suppress(BaseException):
                        await t
                for conn in (stage, other, watch):
                    await conn.close()

        asyncio.run(go())


async def _both_wait(node: PgNode) -> bool:
    w = await waiting(node)
    return "hazardwatch-ingest" in w and "psql" in w


async def _app_waits(node: PgNode, app: str) -> bool:
    return app in await waiting(node)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_standby_takes_over_while_the_only_synchronous_replica_is_down() -> None:
    """A takeover commits its new term synchronously (park.db.lease: it must survive a failover), so with
    the replica down it waits — for ever without the guard, and the park has no leader. The standby's
    guard keeps that commit on the primary once overdue on its clock: the standby leads."""
    from park.db.lease import Elector
    from tests.ha_helpers import lease_row

    with primary_and_replica() as (primary, replica):
        synchronous(primary)

        async def go() -> None:
            await migrated(primary.url)
            a, b = (Elector(primary.url, n, ttl=3.0, retry_every=0.1) for n in ("a", "b"))
            clock = Clock()
            guard = SyncRepGuard(primary.url, "b", health=Health(), wait_max=3.0, monotonic=clock, every=0.01,
                                 degraded_every=0.01, probe_every=3600.0)
            tasks = [asyncio.create_task(a.run())]
            try:
                await until(lambda: a.leading() is not None, "a leads")
                tasks += [asyncio.create_task(b.run()), asyncio.create_task(guard.run())]
                await until(lambda: b.role == "standby", "b stands by")
                await asyncio.to_thread(replica.stop, "immediate")
                tasks[0].cancel()  # a's process ends: its lease session closes, b campaigns
                await until(lambda: _app_waits(primary, "hazardwatch-lease b"), "b's takeover waiting for the replica")
                [pid] = (await waiting(primary))["hazardwatch-lease b"]
                # the wait's age counts from the guard's first sight of it: the clock moves only after that
                await until(lambda: pid in guard.waits, "the guard seeing b's takeover wait")
                assert b.leading() is None
                clock.t += 3.0
                await until(lambda: b.leading() is not None, "b leads")
                epoch, holder, _ = await lease_row(primary.url)
                assert (epoch, holder) == (2, "b") and guard.cancelled == 1
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(go())
