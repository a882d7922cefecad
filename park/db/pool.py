"""The connection pool every stage shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from park.errors import Unavailable


@asynccontextmanager
async def open_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, name: str = "hazardwatch", wait: bool = True,
    open_timeout: float = 30.0,
) -> AsyncIterator[AsyncConnectionPool]:
    """An open async pool; ``wait=False`` lets the service start while the database is down.

    With ``wait``, a database that accepts no connection within ``open_timeout`` raises
    :class:`Unavailable` naming its address (never the password), not psycopg's bare PoolTimeout.
    """
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"autocommit": False, "application_name": name},
        reconnect_timeout=float("inf"),
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
