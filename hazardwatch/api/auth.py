"""API tokens: one unit each, stored hashed, revocable; scope checks; failed attempts slowed.

Active tokens are kept in memory (:class:`TokenBook`, refreshed every few seconds and at once when
a token is revoked), so checking a token costs no query and a flood of bad tokens cannot reach
the database. Failures are counted per source address and per presented token prefix
(:class:`FailureLimiter`): a failure is answered late, and past the limit refused at once with
429 — but a valid token is accepted before the counters are consulted, so an attacker behind
the park's NAT never locks the duty room out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from park.model import Park
from park.types import PARK_SCOPE

log = logging.getLogger("hazardwatch.api")

PARK_UNIT = "park"  # the park's duty room: sees everything
TOKEN_PREFIX = "hw_"
TOKENS_CHANNEL = "hazardwatch_tokens"  # NOTIFY on create/revoke: every instance reloads its book


@dataclass(frozen=True, slots=True)
class Principal:
    unit: str
    name: str
    token_id: int = 0
    token_hash: str = ""

    def sees(self, park: Park, enterprise: str) -> bool:
        return self.unit == PARK_UNIT or park.in_scope(self.unit, enterprise)

    def enterprises(self, park: Park) -> list[str]:
        return list(park.enterprises) if self.unit == PARK_UNIT else park.enterprises_under(self.unit)

    def alarm_scopes(self, park: Park) -> list[str]:
        """The ``enterprise`` values of the alarms this token sees: its enterprises, and for the
        duty room (``park``) the park-level alarms too (``PARK_SCOPE``: an MQTT broker unreachable)."""
        return self.enterprises(park) + ([PARK_SCOPE] if self.unit == PARK_UNIT else [])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(conn: AsyncConnection, park: Park | None, unit: str, name: str = "") -> str:
    """A new token for ``unit``, checked against the site file (``park``) or, without one, against
    the units the service keeps in the database."""
    if park is not None and unit != PARK_UNIT and unit not in park.units:
        raise ValueError(f"unit {unit!r} is not in the site file; use a district, town or enterprise code, or 'park'")
    if park is None and unit != PARK_UNIT:
        cur = await conn.execute("SELECT 1 FROM units WHERE code = %s AND retired_at IS NULL", (unit,))
        if await cur.fetchone() is None:
            raise ValueError(f"unit {unit!r} is not in the database's registry; use a district, town or "
                             "enterprise code of the running site (`hazardwatch db migrate --config SITE.yaml` "
                             "syncs it), or 'park'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute("INSERT INTO api_tokens (unit_code, name, token_hash) VALUES (%s, %s, %s)",
                       (unit, name, hash_token(token)))
    await conn.execute("SELECT pg_notify(%s, 'created')", (TOKENS_CHANNEL,))
    return token


async def revoke_token(conn: AsyncConnection, token_id: int) -> bool:
    """Revoke one token; running services drop it (and close its live streams) within seconds."""
    cur = await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                             (token_id,))
    await conn.execute("SELECT pg_notify(%s, 'revoked')", (TOKENS_CHANNEL,))
    return cur.rowcount > 0


async def lookup(conn: AsyncConnection, token: str) -> Principal | None:
    """The token's unit straight from the database (the command line; the API uses a TokenBook)."""
    h = hash_token(token)
    cur = await conn.execute(
        "SELECT id, unit_code, name FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL", (h,))
    row = await cur.fetchone()
    return None if row is None else Principal(row[1], row[2], int(row[0]), h)


class TokenBook:
    """The active tokens by hash, kept fresh: reloaded when ``max_age`` old and at once on a NOTIFY.

    A token not in the book (created a moment ago) is looked up directly, but at most
    ``miss_rate`` such lookups a second: a flood of bad tokens cannot turn into a flood of queries.
    A database outage keeps the last good book: operators stay logged in; commands answer 503, and so
    does a token the book does not hold yet (it may have been created a moment before the outage).
    """

    def __init__(self, pool: AsyncConnectionPool, *, max_age: float = 3.0, miss_rate: float = 20.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.max_age = max_age
        self.miss_rate = miss_rate
        self._now = monotonic
        self._by_hash: dict[str, Principal] = {}
        self._loaded_at = -math.inf
        self._lock = asyncio.Lock()
        self._used: dict[int, float] = {}
        self._budget, self._budget_at = miss_rate, monotonic()
        self.version = 0  # bumped at each reload

    async def refresh(self, *, older_than: float = 0.0) -> None:
        """Reload unless it was reloaded within ``older_than`` seconds (one reload at a time)."""
        async with self._lock:
            if self._now() - self._loaded_at < older_than:
                return
            try:
                async with self.pool.connection(timeout=5) as conn:
                    cur = await conn.execute(
                        "SELECT id, unit_code, name, token_hash FROM api_tokens WHERE revoked_at IS NULL")
                    rows = await cur.fetchall()
            except Exception as e:  # keep the last good book; the database may be away for a while
                log.warning("reloading API tokens failed (%s); keeping the %d known", type(e).__name__,
                            len(self._by_hash))
                self._loaded_at = self._now()
                return
            self._by_hash = {r[3]: Principal(r[1], r[2], int(r[0]), r[3]) for r in rows}
            self._loaded_at = self._now()
            self.version += 1

    def _spend(self) -> bool:
        now = self._now()
        self._budget = min(self.miss_rate, self._budget + (now - self._budget_at) * self.miss_rate)
        self._budget_at = now
        if self._budget < 1:
            return False
        self._budget -= 1
        return True

    async def check(self, token: str) -> Principal | None:
        """The principal of a valid token, else None."""
        await self.refresh(older_than=self.max_age)
        p = self._by_hash.get(hash_token(token))
        if p is None and self._spend():  # created a moment ago?
            # the database away is not a bad token: its error goes up and is answered 503 with
            # Retry-After (app.py), never 401, and is not counted as a failed authentication
            async with self.pool.connection(timeout=5) as conn:
                p = await lookup(conn, token)
            if p is not None:
                self._by_hash[p.token_hash] = p
        if p is not None:
            await self._mark_used(p)
        return p

    def active(self, token_hash: str) -> bool:
        return token_hash in self._by_hash

    async def _mark_used(self, p: Principal) -> None:
        now = self._now()
        if now - self._used.get(p.token_id, -math.inf) < 60:
            return
        self._used[p.token_id] = now
        with contextlib.suppress(Exception):  # bookkeeping only: never fail a request over it
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (p.token_id,))


class FailureLimiter:
    """Failed authentications per source address and per token prefix, over a sliding ``window``.

    The first ``free`` failures of a key are answered at once; later ones wait ``base`` seconds,
    doubling per failure up to ``max_delay``; past ``limit`` the key is refused with 429 until its
    oldest failure leaves the window. Only failures are counted: the caller checks a token first.
    At most ``max_keys`` keys are remembered (the oldest forgotten), so spraying addresses costs
    bounded memory.
    """

    def __init__(self, *, free: int = 5, limit: int = 20, window: float = 60.0, base: float = 0.05,
                 max_delay: float = 2.0, max_keys: int = 10_000,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.free, self.limit, self.window = free, limit, window
        self.base, self.max_delay, self.max_keys = base, max_delay, max_keys
        self._now = monotonic
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def keys(source: str, token: str) -> tuple[str, str]:
        body = token[len(TOKEN_PREFIX):] if token.startswith(TOKEN_PREFIX) else token
        return f"src:{source}", f"tok:{body[:6]}"

    def _count(self, key: str) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        now = self._now()
        while q and now - q[0] > self.window:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def blocked(self, source: str, token: str) -> float:
        """Seconds until this source or prefix may try again; 0 when it may."""
        wait = 0.0
        for key in self.keys(source, token):
            q = self._count(key)
            if len(q) >= self.limit:
                wait = max(wait, self.window - (self._now() - q[0]))
        return wait

    def fail(self, source: str, token: str) -> float:
        """Record a failure; the delay (seconds) to answer it with."""
        now = self._now()
        n = 0
        for key in self.keys(source, token):
            q = self._count(key)
            q.append(now)
            self._fails[key] = q
            self._fails.move_to_end(key)
            n = max(n, len(q))
        while len(self._fails) > self.max_keys:
            self._fails.popitem(last=False)
        return 0.0 if n <= self.free else min(self.max_delay, self.base * 2 ** (n - self.free - 1))
