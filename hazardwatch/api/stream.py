"""The live stream (server-sent events): one database listener for every viewer, heartbeats, resyncs.

:class:`StreamHub` holds ONE ``LISTEN`` connection (outside the pool, reconnecting with capped,
jittered back-off) and fans each alarm change out to the streams whose token sees it; the row is
fetched once per change, not once per viewer. Each API token may hold ``per_token`` streams
(more → 429), and a stream ends within seconds of its token being revoked.

What a stream says (``event: name`` / ``data: JSON``):

- ``hello``: sent first: the server time, the heartbeat period and whether the feed is live;
- ``alarm``: an alarm row each time it changes;
- ``heartbeat``: every ``heartbeat`` seconds, ``{"ts", "live"}`` — ``live`` is false while the
  database listener is down, so a board can tell "no news" from "no feed";
- ``resync``: changes may have been missed (listener reconnected, viewer too slow): reload;
- ``closed``: the server ends the stream (token revoked, shutdown), with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse
from psycopg_pool import AsyncConnectionPool

from hazardwatch.api import queries
from hazardwatch.api.auth import TOKENS_CHANNEL, Principal, TokenBook
from hazardwatch.api.context import Auth, Ctx
from hazardwatch.api.present import alarm_json
from park.clock import Clock
from park.db.pool import connect_defaults
from park.model import Park

log = logging.getLogger("hazardwatch.api")

ALARMS_CHANNEL = "hazardwatch_alarms"  # rules.store NOTIFYs the alarm id on every change

Event = tuple[str, dict[str, Any]]


class TooManyStreams(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"this token already has {limit} live streams open (the limit); close a board or "
                         "use another token")


@dataclass(eq=False, slots=True)
class Subscriber:
    principal: Principal
    queue: asyncio.Queue[Event]
    created: float = 0.0
    started: bool = False  # its response began; one that never does (client gone at once) is swept
    overflowed: bool = False
    closing: str | None = None


@dataclass(slots=True)
class _Stats:
    notifications: int = 0
    fetches: int = 0
    reconnects: int = 0


class StreamHub:
    def __init__(self, *, listen_url: str, pool: AsyncConnectionPool, park: Park, tokens: TokenBook, clock: Clock,
                 per_token: int = 20, heartbeat: float = 2.0, queue_size: int = 1000,
                 max_backoff: float = 10.0) -> None:
        self.listen_url = listen_url
        self.pool = pool
        self.park = park
        self.tokens = tokens
        self.clock = clock
        self.per_token = per_token
        self.heartbeat = heartbeat
        self.queue_size = queue_size
        self.max_backoff = max_backoff
        self.live = False
        self.live_since: datetime | None = None
        self.stats = _Stats()
        self._subs: dict[int, set[Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None

    # --- viewers --------------------------------------------------------------------------------
    @property
    def viewers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, p: Principal) -> Subscriber:
        mine = self._subs.setdefault(p.token_id, set())
        if len(mine) >= self.per_token:
            raise TooManyStreams(self.per_token)
        sub = Subscriber(p, asyncio.Queue(self.queue_size), time.monotonic())
        mine.add(sub)
        return sub

    def sweep(self, unstarted_after: float = 10.0) -> None:
        """Forget streams whose response never started (the client left before the first byte)."""
        now = time.monotonic()
        for subs in list(self._subs.values()):
            for sub in list(subs):
                if not sub.started and now - sub.created > unstarted_after:
                    self.unsubscribe(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        mine = self._subs.get(sub.principal.token_id)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._subs[sub.principal.token_id]

    def _offer(self, sub: Subscriber, ev: Event) -> None:
        if sub.overflowed:
            return
        try:
            sub.queue.put_nowait(ev)
        except asyncio.QueueFull:  # a viewer too slow to keep up reloads instead of growing memory
            sub.overflowed = True

    def _close_revoked(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                if not self.tokens.active(sub.principal.token_hash) and sub.closing is None:
                    sub.closing = "token revoked"
                    with contextlib.suppress(asyncio.QueueFull):
                        sub.queue.put_nowait(("closed", {"reason": "令牌已撤销"}))

    def close_all(self, reason: str) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.closing = reason
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(("closed", {"reason": reason}))

    # --- the one listener -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the listener (idempotent); :meth:`stop` ends it."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="stream-listener")

    async def stop(self) -> None:
        self.close_all("服务停止")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.live:
                    log.warning("live-stream listener lost the database (%s); boards are told the feed is stale",
                                type(e).__name__)
                self.live = False
                self.stats.reconnects += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(self.max_backoff, delay * 2)
                continue
            delay = 0.5

    async def _listen(self) -> None:
        # keepalives (connect_defaults): a listener on a primary that vanished must fail, not wait on
        # a silent socket, so it reconnects to the promoted one
        kw: dict[str, Any] = {**connect_defaults(self.listen_url), "connect_timeout": 5}
        async with await psycopg.AsyncConnection.connect(self.listen_url, autocommit=True, **kw) as conn:
            await conn.execute(f"LISTEN {ALARMS_CHANNEL}")
            await conn.execute(f"LISTEN {TOKENS_CHANNEL}")
            await self.tokens.refresh()
            self.live, self.live_since = True, self.clock.now()
            for subs in self._subs.values():  # changes made while nobody listened were missed
                for sub in subs:
                    self._offer(sub, ("resync", {"reason": "listener (re)connected"}))
            log.info("live-stream listener connected")
            while True:
                alarm_ids: set[int] = set()
                tokens_changed = False
                # wait for the first notification, then take whatever else is already there
                async for n in conn.notifies(timeout=self.heartbeat, stop_after=1):
                    alarm_ids, tokens_changed = self._note(n, alarm_ids, tokens_changed)
                if alarm_ids or tokens_changed:
                    async for n in conn.notifies(timeout=0.02, stop_after=500):
                        alarm_ids, tokens_changed = self._note(n, alarm_ids, tokens_changed)
                if tokens_changed:
                    await self.tokens.refresh()
                else:
                    await self.tokens.refresh(older_than=self.tokens.max_age)
                self._close_revoked()
                self.sweep()
                if alarm_ids:
                    await self._fan_out(sorted(alarm_ids))

    def _note(self, n: psycopg.Notify, ids: set[int], tokens: bool) -> tuple[set[int], bool]:
        self.stats.notifications += 1
        if n.channel == TOKENS_CHANNEL:
            return ids, True
        with contextlib.suppress(ValueError):
            ids.add(int(n.payload))
        return ids, tokens

    async def _fan_out(self, ids: list[int]) -> None:
        if not self._subs:
            return
        async with self.pool.connection(timeout=10) as conn:
            rows = await queries.alarms_by_id(conn, ids)
        self.stats.fetches += 1
        for row in rows:
            data = alarm_json(self.park, row)
            for subs in self._subs.values():
                for sub in subs:
                    if sub.principal.sees(self.park, row["enterprise"]):
                        self._offer(sub, ("alarm", data))


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


async def events(hub: StreamHub, sub: Subscriber) -> AsyncIterator[str]:
    sub.started = True
    try:
        yield "retry: 2000\n\n"
        yield _sse("hello", {"ts": hub.clock.now(), "heartbeat": hub.heartbeat, "live": hub.live})
        while True:
            if sub.overflowed:
                sub.overflowed = False
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                yield _sse("resync", {"reason": "too many changes at once"})
            try:
                async with asyncio.timeout(hub.heartbeat):  # not wait_for: it can swallow a cancellation on 3.11
                    name, data = await sub.queue.get()
            except TimeoutError:
                if not hub.tokens.active(sub.principal.token_hash):
                    yield _sse("closed", {"reason": "令牌已撤销"})
                    return
                yield _sse("heartbeat", {"ts": hub.clock.now(), "live": hub.live})
                continue
            yield _sse(name, data)
            if name == "closed":
                return
    finally:
        hub.unsubscribe(sub)


router = APIRouter(tags=["stream"])


@router.get("/api/v1/stream", response_class=StreamingResponse, summary="Live alarm changes (server-sent events)",
            responses={200: {"content": {"text/event-stream": {}}, "description": "an endless event stream"},
                       429: {"description": "this token already holds its maximum of live streams"}})
async def stream(p: Auth, ctx: Ctx) -> StreamingResponse:
    """Every change of an alarm the token may see, as it happens, plus a heartbeat every few seconds
    (`live: false` while the server's own database feed is down). Events: `hello`, `alarm`,
    `heartbeat`, `resync` (reload the list: changes may have been missed), `closed`. The board
    passes its token as `?token=` because EventSource cannot send headers. A token may hold a
    limited number of streams (429 beyond); revoking the token ends its streams within seconds."""
    hub = ctx.hub
    if hub is None:
        raise HTTPException(503, "the live stream is not available on this instance", headers={"Retry-After": "5"})
    hub.start()
    try:
        sub = hub.subscribe(p)
    except TooManyStreams as e:
        raise HTTPException(429, str(e), headers={"Retry-After": "30"}) from None
    return StreamingResponse(events(hub, sub), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
