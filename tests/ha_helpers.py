"""Helpers for the high-availability tests: a migrated database, polling, stallable sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg

from park.db.migrate import migrate
from park.db.registry import sync_registry
from park.model import Park
from park.site import Site


async def migrated(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)


async def registered(url: str, site: Site) -> Park:
    """A migrated database with ``site``'s registry in it: the park, with its registry ids."""
    await migrated(url)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        park = await sync_registry(conn, site)
        await conn.commit()
    return park


async def until(pred: Callable[[], bool | Awaitable[bool]], what: str, within: float = 30.0,
                every: float = 0.05) -> float:
    """Poll ``pred`` until it holds; return the seconds it took. Fails after ``within`` seconds."""
    t0 = time.monotonic()
    while True:
        got = pred()
        if not isinstance(got, bool):
            got = await got
        if got:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(every)


class Gate:
    """An injectable ``sleep`` that a test can hold shut: the caller stalls until it is opened.

    Stands in for a process whose loop stops (a long GC pause, a starved event loop) while the
    rest of the world — the database, the other instances — goes on.
    """

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.held = 0  # sleeps currently stalled

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.open.is_set():
            self.held += 1
            try:
                await self.open.wait()
            finally:
                self.held -= 1


async def lease_row(url: str, name: str = "leader") -> tuple[int, str | None, int | None]:
    """(epoch, holder, holder_pid) of a lease."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT epoch, holder, holder_pid FROM ha_lease WHERE name = %s", (name,))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), row[1], row[2]
