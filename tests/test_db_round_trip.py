"""``one_round_trip``: the short transactions on an alarm's way to a phone reach the server in one go.

Counted on the wire (libpq's own trace of the protocol): one ``ReadyForQuery`` — one wait for the
server — for ``BEGIN``, the statements and ``COMMIT``, where ``conn.transaction()`` costs one per
statement and two more. And it stays a transaction: a failing statement, or an exception in the block, commits
nothing, and the pooled connection comes back idle and as it was (not in autocommit).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable

import psycopg
import pytest

from park.db import open_pool
from park.db.pool import one_round_trip


def _waits(trace: str) -> int:
    """Times the server said it was ready for the next query: each one a wait for its answer."""
    return sum(1 for line in trace.splitlines() if line.split("\t")[1:2] == ["B"] and "\tReadyForQuery" in line)


async def _traced(conn: psycopg.AsyncConnection, body: Callable[[psycopg.AsyncConnection], object]) -> int:
    with tempfile.TemporaryFile("w+") as f:
        conn.pgconn.trace(f.fileno())
        try:
            await body(conn)  # type: ignore[misc]
        finally:
            conn.pgconn.untrace()
        f.seek(0)
        return _waits(f.read())


def test_a_transaction_of_several_statements_is_one_round_trip_and_commits_them_all(make_database) -> None:  # type: ignore[no-untyped-def]
    url = make_database("postgres", "hwrt")

    async def go() -> None:
        async with open_pool(url, min_size=1, max_size=2) as pool, pool.connection() as conn:
            await conn.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
            await conn.commit()

            async def three_inserts_and_an_update(c: psycopg.AsyncConnection) -> None:
                async with one_round_trip(c):
                    for k in (1, 2, 2):
                        await c.execute("INSERT INTO t VALUES (%s, 'a') ON CONFLICT DO NOTHING", (k,))
                    cur = await c.execute("UPDATE t SET v = 'b' WHERE k = 1 RETURNING k")
                assert await cur.fetchall() == [(1,)]  # answers are read after the block

            assert await _traced(conn, three_inserts_and_an_update) == 1

            async def plain(c: psycopg.AsyncConnection) -> None:  # the form it replaces, for the record
                async with c.transaction():
                    for k in (3, 4, 4):
                        await c.execute("INSERT INTO t VALUES (%s, 'a') ON CONFLICT DO NOTHING", (k,))
                    await c.execute("UPDATE t SET v = 'b' WHERE k = 3")

            assert await _traced(conn, plain) >= 5
            assert not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            async with pool.connection() as other:  # committed: another session sees it
                cur = await other.execute("SELECT k, v FROM t ORDER BY k")
                assert await cur.fetchall() == [(1, "b"), (2, "a"), (3, "b"), (4, "a")]

    asyncio.run(go())


@pytest.mark.parametrize("how", ["a statement fails", "the block raises"])
def test_a_failure_inside_commits_nothing_and_the_connection_comes_back_usable(make_database, how: str) -> None:  # type: ignore[no-untyped-def]
    url = make_database("postgres", "hwrt")

    class Stop(Exception):
        pass

    async def go() -> None:
        async with open_pool(url, min_size=1, max_size=1) as pool:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE t (k int PRIMARY KEY)")
                await conn.commit()
            with pytest.raises((psycopg.errors.UniqueViolation, Stop)):
                async with pool.connection() as conn, one_round_trip(conn):
                    await conn.execute("INSERT INTO t VALUES (1)")
                    if how == "a statement fails":
                        await conn.execute("INSERT INTO t VALUES (1)")  # duplicate key
                        await conn.execute("INSERT INTO t VALUES (2)")  # skipped by the server
                    else:
                        raise Stop
            async with pool.connection() as conn:  # the pool's only connection: as it was before
                assert not conn.autocommit
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                cur = await conn.execute("SELECT count(*) FROM t")
                assert await cur.fetchone() == (0,), "nothing of the failed transaction was committed"
                await conn.rollback()
                with pytest.raises(RuntimeError, match="idle connection"):
                    await conn.execute("SELECT 1")  # inside a transaction now: refused, not nested
                    async with one_round_trip(conn):
                        pass

    asyncio.run(go())

