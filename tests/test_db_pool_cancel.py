"""A stage cancelled while it waits for a pooled connection stops (Python 3.11's wait_for drops such cancels).

CI hung for 300 s in a test whose command dispatcher, cancelled at the end, ran on: psycopg_pool waits
for a connection with ``asyncio.wait_for``, which on Python 3.11 hands back the connection and forgets
the cancellation when both arrive together. Here the connection is freed and the waiting task
cancelled at each point of the hand-over in turn (0..7 loop rounds apart); every time, the task must
end cancelled, not run its query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from park.db import open_pool


async def _handover(url: str, rounds: int) -> str:
    async with open_pool(url, min_size=1, max_size=1) as pool:
        held = await pool.getconn()
        waiting = asyncio.Event()
        ran: list[int] = []

        async def stage() -> None:
            waiting.set()
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                ran.append(1)

        task = asyncio.create_task(stage())
        await waiting.wait()
        for _ in range(3):  # the stage is now inside the pool's wait
            await asyncio.sleep(0)
        await pool.putconn(held)
        for _ in range(rounds):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled" if not ran else "ran, then cancelled"
        return "ran on after its cancel"


def test_a_cancel_during_the_wait_for_a_connection_is_never_lost(make_database: Callable[..., str]) -> None:
    url = make_database("postgres", "hwt")

    async def go() -> list[str]:
        return [await _handover(url, k) for k in range(8)]

    assert asyncio.run(go()) == ["cancelled"] * 8


def test_clean_up_after_a_cancel_still_gets_a_connection(make_database: Callable[..., str]) -> None:
    """Work a stage does after it was cancelled (a final snapshot, a last heartbeat) is not refused."""
    url = make_database("postgres", "hwt")

    async def go() -> int:
        async with open_pool(url, min_size=1, max_size=2) as pool:
            out: list[int] = []

            async def stage() -> None:
                try:
                    await asyncio.Event().wait()
                finally:
                    async with pool.connection() as conn:
                        cur = await conn.execute("SELECT 42")
                        row = await cur.fetchone()
                        assert row is not None
                        out.append(row[0])

            task = asyncio.create_task(stage())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return out[0]

    assert asyncio.run(go()) == 42
