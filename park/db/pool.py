"""The connection pool every stage shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg_pool import AsyncConnectionPool


@asynccontextmanager
async def open_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, name: str = "hazardwatch", wait: bool = True
) -> AsyncIterator[AsyncConnectionPool]:
    """An open async pool; ``wait=False`` lets the service start while the database is down."""
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"autocommit": False, "application_name": name},
        reconnect_timeout=float("inf"),
    )
    await pool.open(wait=wait, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()
