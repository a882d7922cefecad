"""Database failover: primary + streaming replica (initdb, pg_basebackup -R, private ports); the
primary stops, the replica is promoted, and the service's pool — opened once on a libpq multi-host
URL — finds the new primary by itself and writes go on, with no restart and nothing lost or doubled.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from park.db import open_pool
from park.db.lease import Elector
from tests.ha_helpers import migrated, until
from tests.pg_cluster import multi_host_url, primary_and_replica, wait_streaming


@pytest.mark.slow
def test_pool_on_a_multi_host_url_follows_a_promotion_by_itself() -> None:
    with primary_and_replica() as (primary, replica):
        with psycopg.connect(primary.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE hwha_writes (n integer PRIMARY KEY, port integer NOT NULL)")
        url = multi_host_url(primary, replica)
        acked: list[tuple[int, int, float]] = []  # (n, server port or -1 if already there, when)
        retried: set[int] = set()  # writes sent whose commit acknowledgement never came back: outcome unknown
        faults = {"broken": 0, "timeout": 0}

        async def writer(pool) -> None:  # type: ignore[no-untyped-def]
            n = 0
            while True:
                sent = False
                try:
                    async with pool.connection(timeout=5) as conn:
                        # idempotent, as readings are: a retried write lands once
                        sent = True
                        cur = await conn.execute("INSERT INTO hwha_writes (n, port) VALUES (%s, inet_server_port())"
                                                 " ON CONFLICT (n) DO NOTHING RETURNING port", (n,))
                        row = await cur.fetchone()
                    # the block committed on leaving: n is acknowledged
                    acked.append((n, row[0] if row else -1, time.monotonic()))
                    n += 1
                except PoolTimeout:
                    faults["timeout"] += 1
                except psycopg.OperationalError:
                    faults["broken"] += 1
                    if sent:
                        retried.add(n)
                except asyncio.CancelledError:
                    if sent:
                        retried.add(n)  # the test ends mid-write: it may have committed
                    raise
                await asyncio.sleep(0.01)

        async def go() -> None:
            async with open_pool(url, min_size=3, max_size=4) as pool:
                task = asyncio.create_task(writer(pool))
                try:
                    await until(lambda: len(acked) >= 30, "writes to the primary")
                    assert {port for _, port, _ in acked} == {primary.port}
                    await asyncio.to_thread(primary.stop, "fast")
                    # the pool has found the primary gone and failed to connect, as a real outage goes
                    await until(lambda: pool.get_stats().get("connections_errors", 0) >= 8, "reconnect attempts fail")
                    await asyncio.to_thread(replica.promote)
                    promoted, before = time.monotonic(), len(acked)
                    await until(lambda: len(acked) >= before + 30, "writes go on after the promotion", within=60)
                    first = min(t for _, _, t in acked[before:])
                    print(f"first write {first - promoted:.2f} s after the promotion; faults seen {faults}")
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            # a write retried after its acknowledgement was lost may find its row already replicated (-1)
            assert {port for n, port, _ in acked[before:] if port != -1} == {replica.port}
            assert all(n in retried for n, port, _ in acked if port == -1)
            # each connection the stop left dead fails once and is dropped (the pool holds at most 4)
            assert faults["broken"] <= 4, faults

        asyncio.run(go())
        assert not replica.in_recovery()
        with psycopg.connect(replica.url, autocommit=True) as conn:
            rows = [r[0] for r in conn.execute("SELECT n FROM hwha_writes ORDER BY n").fetchall()]
        # acknowledged ⊆ stored ⊆ acknowledged ∪ unknown outcome: a write whose commit acknowledgement
        # was lost (the failover, or the writer cancelled at the end) may or may not have landed
        done = [n for n, _, _ in acked]
        assert len(done) == len(set(done)) and len(rows) == len(set(rows)), "nothing stored twice"
        assert set(done) <= set(rows), f"acknowledged but lost: {sorted(set(done) - set(rows))}"
        assert set(rows) <= set(done) | retried, f"stored but never sent: {sorted(set(rows) - set(done) - retried)}"


@pytest.mark.slow
def test_leadership_moves_to_the_promoted_replica_with_a_higher_epoch() -> None:
    """Advisory locks are not replicated: after the promotion the instances campaign again there."""
    with primary_and_replica() as (primary, replica):

        async def go() -> None:
            await migrated(primary.url)
            url = multi_host_url(primary, replica)
            a, b = (Elector(url, name, ttl=2.0, retry_every=0.1) for name in ("a", "b"))
            tasks = [asyncio.create_task(e.run()) for e in (a, b)]
            try:
                await until(lambda: a.leading() is not None or b.leading() is not None, "someone leads")
                first = (a.leading() or b.leading())
                assert first is not None and first.epoch == 1
                await asyncio.to_thread(wait_streaming, primary)
                await asyncio.to_thread(primary.stop, "fast")
                await until(lambda: a.leading() is None and b.leading() is None, "the leader steps down")
                await asyncio.to_thread(replica.promote)
                promoted = time.monotonic()
                await until(lambda: a.leading() is not None or b.leading() is not None, "someone leads again")
                print(f"a leader again {time.monotonic() - promoted:.2f} s after the promotion")
                again = a.leading() or b.leading()
                assert again is not None and again.epoch == 2 and again.token != first.token
                assert [e.leading() is not None for e in (a, b)].count(True) == 1
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(go())

