"""The connection pool every stage shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from park.errors import Unavailable

# After a failover or a server restart every pooled connection is dead, and a dead primary host
# (power lost) answers nothing at all; these keep the pool from waiting on it. A URL's own
# settings win.
CONNECT_DEFAULTS = {
    "connect_timeout": "10",  # per host of a multi-host URL
    "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3",
    "tcp_user_timeout": "20000",  # ms: unacknowledged data on a vanished host fails the connection
}
# psycopg_pool doubles its reconnect delay without a cap for as long as this lasts; bounded, a
# failed attempt chain ends and the next request starts a new one at once, so the pool finds a
# promoted replica within seconds however long the outage was.
RECONNECT_TIMEOUT = 10.0


class Pool(AsyncConnectionPool):
    """psycopg_pool's async pool, with a cancellation that arrives during a wait kept.

    While a task waits for a connection, psycopg_pool uses ``asyncio.wait_for``, which on Python 3.11
    returns the connection when a cancellation arrives together with it and drops the cancellation:
    the task runs on, and a stage asked to stop (shutdown, a lost lease) never does. A cancellation
    requested during the wait is re-raised here, after the connection went back to the pool.
    Cancellations requested before the call (clean-up work after a cancel) are not affected.
    """

    async def getconn(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 — psycopg_pool's signature
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0
        conn = await super().getconn(timeout)
        if task is not None and task.cancelling() > before:
            await self.putconn(conn)
            raise asyncio.CancelledError
        return conn


@asynccontextmanager
async def one_round_trip(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """One transaction in one round trip to the server: ``BEGIN``, the statements run inside the
    block, ``COMMIT``, sent as one pipeline with one ``Sync``.

    For the short transactions on an alarm's way to a phone (the rule stage's record, the outbox's
    plan and claim): with the server busy (a backlog being stored) every round trip waits its turn
    for a CPU, and the plain form costs three or more — ``BEGIN``, each statement, ``COMMIT``.
    Inside the block statements are queued, not answered: read a cursor's rows or ``rowcount``
    after the block. An error in any statement, or raised inside the block, commits nothing (the
    server skips the rest; the transaction is rolled back) and is raised here.

    ``conn`` must be idle (a pool's connection, not inside a transaction). It is switched to
    autocommit for the block — so that ``BEGIN`` needs no round trip of its own — and back after;
    a connection that cannot be switched back (broken, cancelled mid-answer) is closed, and the
    pool replaces it.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("one_round_trip() needs an idle connection, not one inside a transaction")
    was = conn.autocommit
    await conn.set_autocommit(True)
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            yield conn  # an exception here: no COMMIT is queued, and the finally below rolls back
            await conn.execute("COMMIT")
    finally:
        try:
            if conn.info.transaction_status != TransactionStatus.IDLE and not conn.closed:
                await conn.execute("ROLLBACK")
            await conn.set_autocommit(was)
        except Exception:  # broken, or cancelled while an answer was on its way: the pool drops it
            await conn.close()


@asynccontextmanager
async def open_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, name: str = "hazardwatch", wait: bool = True,
    open_timeout: float = 30.0, configure: Callable[[AsyncConnection], Awaitable[None]] | None = None,
) -> AsyncIterator[AsyncConnectionPool]:
    """An open async pool; ``wait=False`` lets the service start while the database is down.

    With ``wait``, a database that accepts no connection within ``open_timeout`` raises
    :class:`Unavailable` naming its address (never the password), not psycopg's bare PoolTimeout.

    A libpq multi-host URL (``host=a,b … target_session_attrs=read-write``) reconnects to
    whichever server takes writes. Connections are not checked as they are handed out: when the
    database goes away a stage must fail at once (its alarms go to the local journal) rather than
    wait out the pool's timeout for a healthy one; after a restart or a failover each dead
    connection fails once and is dropped.
    """
    pool = Pool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"autocommit": False, "application_name": name, **connect_defaults(url)},
        reconnect_timeout=RECONNECT_TIMEOUT,
        configure=configure,
    )
    try:
        await pool.open(wait=wait, timeout=open_timeout)
    except PoolTimeout:
        await pool.close()
        raise Unavailable(
            "database",
            f"database {safe_address(url)} accepted no connection within {open_timeout:.0f} s: check that PostgreSQL "
            "runs there and the host, port, user, password and database name (HAZARDWATCH_DATABASE_URL)",
        ) from None
    try:
        yield pool
    finally:
        await pool.close()


def connect_defaults(url: str) -> dict[str, str]:
    """``CONNECT_DEFAULTS`` without what ``url`` sets itself: the keyword arguments every connection
    of the service takes (a pool's, a writer's, a ``LISTEN`` connection's), so that none of them
    waits forever on a host that vanished — the first host of a multi-host URL after a failover."""
    try:
        given = conninfo_to_dict(url)
    except Exception:  # refused when connecting, with the address only (see open_pool)
        given = {}
    return {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}


def safe_address(url: str) -> str:
    """``postgresql://user@host:port/db`` for messages: no password; several hosts kept."""
    try:
        d = conninfo_to_dict(url)
    except Exception:  # a URL psycopg cannot parse: say so without echoing it (it may hold a password)
        return "(unparsable database URL)"
    user = f"{d['user']}@" if d.get("user") else ""
    hosts = str(d.get("host") or "localhost").split(",")
    ports = str(d.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    where = ",".join(f"{h}:{p}" for h, p in zip(hosts, ports, strict=False))
    return f"postgresql://{user}{where}/{d.get('dbname') or ''}"
