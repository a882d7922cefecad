"""The connection pool every stage shares."""

from __future__ import annotations

import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

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


async def server_gone(conn: AsyncConnection) -> None:
    """Raise if the server has ended this connection; free on the hot path.

    An idle pooled connection has nothing waiting on its socket — unless the server stopped,
    restarted, failed over or ended the session, which leaves a goodbye message and an
    end-of-file there. Only then is the server asked (one round trip), and the connection
    refused if it does not answer. A host that vanished without a word is caught by the TCP
    keepalives instead.
    """
    if _readable(conn.pgconn.socket):
        await AsyncConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLPRI)
    return bool(p.poll(0))


@asynccontextmanager
async def open_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, name: str = "hazardwatch", wait: bool = True
) -> AsyncIterator[AsyncConnectionPool]:
    """An open async pool; ``wait=False`` lets the service start while the database is down.

    Connections are checked as they are handed out, so none broken by a failover or a restart
    reaches a stage; a libpq multi-host URL (``host=a,b … target_session_attrs=read-write``)
    reconnects to whichever server takes writes.
    """
    given = conninfo_to_dict(url)
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"autocommit": False, "application_name": name,
                **{k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}},
        check=server_gone,
        reconnect_timeout=RECONNECT_TIMEOUT,
    )
    await pool.open(wait=wait, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()
