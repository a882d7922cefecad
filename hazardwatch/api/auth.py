"""API tokens: one unit each, stored hashed, revocable; scope checks; failed attempts rate-limited."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from psycopg import AsyncConnection

from park.model import Park

PARK_UNIT = "park"  # the park's duty room: sees everything
TOKEN_PREFIX = "hw_"


@dataclass(frozen=True, slots=True)
class Principal:
    unit: str
    name: str

    def sees(self, park: Park, enterprise: str) -> bool:
        return self.unit == PARK_UNIT or park.in_scope(self.unit, enterprise)

    def enterprises(self, park: Park) -> list[str]:
        return list(park.enterprises) if self.unit == PARK_UNIT else park.enterprises_under(self.unit)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(conn: AsyncConnection, park: Park, unit: str, name: str = "") -> str:
    if unit != PARK_UNIT and unit not in park.units:
        raise ValueError(f"unit {unit!r} is not in the site file; use a district, town or enterprise code, or 'park'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute("INSERT INTO api_tokens (unit_code, name, token_hash) VALUES (%s, %s, %s)",
                       (unit, name, hash_token(token)))
    return token


async def lookup(conn: AsyncConnection, token: str) -> Principal | None:
    """The token's unit, compared in constant time against the stored hash."""
    h = hash_token(token)
    cur = await conn.execute(
        "SELECT unit_code, name, token_hash FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL", (h,))
    row = await cur.fetchone()
    if row is None or not hmac.compare_digest(row[2], h):
        return None
    await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE token_hash = %s", (h,))
    return Principal(row[0], row[1])


class FailureLimiter:
    """At most ``limit`` failed authentications per client per ``window`` seconds."""

    def __init__(self, limit: int = 20, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, client: str) -> float:
        q = self.failures[client]
        now = time.monotonic()
        while q and now - q[0] > self.window:
            q.popleft()
        return self.window - (now - q[0]) if len(q) >= self.limit else 0.0

    def fail(self, client: str) -> None:
        self.failures[client].append(time.monotonic())
