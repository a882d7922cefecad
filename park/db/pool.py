"""The connection pool every stage shares."""

from __future__ import annotations

import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
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
    url: str, *, min_size: int = 2, max_size: int = 10, name: str = "hazardwatch", wait: bool = True,
    open_timeout: float = 30.0,
) -> AsyncIterator[AsyncConnectionPool]:
    """An open async pool; ``wait=False`` lets the service start while the database is down.

    With ``wait``, a database that accepts no connection within ``open_timeout`` raises
    :class:`Unavailable` naming its address (never the password), not psycopg's bare PoolTimeout.

    Connections are checked as they are handed out, so none broken by a failover or a restart
    reaches a stage; a libpq multi-host URL (``host=a,b … target_session_attrs=read-write``)
    reconnects to whichever server takes writes.
    """
    try:
        given = conninfo_to_dict(url)
    except Exception:  # refused when connecting, with the address only (see below)
        given = {}
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
