"""What every router shares: the park, the pool, the commands, the clock; and the token dependency.

Routers take :class:`ApiContext` from ``request.app.state.ctx`` and a :class:`Principal` from
:func:`principal`; they never build their own connections or read settings themselves.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerting.links import LinkSigner
from hazardwatch.api.auth import FailureLimiter, Principal, TokenBook
from hazardwatch.api.redact import Redactor
from park.clock import Clock
from park.health import Health
from park.model import Park
from park.settings import Settings
from park.site import EnterpriseState

if TYPE_CHECKING:
    from hazardwatch.api.stream import StreamHub


class Commands(Protocol):
    """What the API asks of the rule stage — the one seam for operator commands.

    Today the local ``rules.service.RulesService``; with several instances, a forwarder that hands
    the command to the leader. Each may raise ``rules.errors.AlarmNotFound`` /
    ``InvalidTransition`` (answered 409) or ``park.errors.Unavailable`` (503 with Retry-After).
    """

    async def ack(self, alarm_id: int, by: str, note: str | None = None) -> None: ...
    async def resolve(self, alarm_id: int, by: str, cause: str, action: str) -> None: ...
    async def shelve(self, alarm_id: int, by: str, reason: str, until: datetime) -> None: ...
    async def unshelve(self, alarm_id: int, by: str) -> None: ...
    async def set_enterprise_state(self, enterprise: str, state: EnterpriseState, by: str) -> None: ...


@dataclass(slots=True)
class ApiContext:
    park: Park
    pool: AsyncConnectionPool
    commands: Commands
    settings: Settings
    registry: CollectorRegistry
    readiness: Callable[[], bool]
    links: LinkSigner
    clock: Clock
    tokens: TokenBook
    limiter: FailureLimiter
    redactor: Redactor
    health: Health | None = None
    hub: StreamHub | None = field(default=None)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]


def client_address(request: Request) -> str:
    """The caller's address (X-Forwarded-For is applied only for configured proxies, see app.py)."""
    return request.client.host if request.client else "?"


def presented_token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    # EventSource cannot send headers: the board's live stream passes the token as ?token=
    return request.query_params.get("token", "")


async def principal(request: Request, ctx: Ctx) -> Principal:
    """The token's unit; 401 without a valid token; failures slowed, and refused (429) past a limit."""
    token = presented_token(request)
    if not token:
        raise HTTPException(401, "missing token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    if len(token) <= 200:  # a valid token is about 46 characters; a longer one cannot match
        p = await ctx.tokens.check(token)
        if p is not None:
            return p
    source = client_address(request)
    wait = ctx.limiter.blocked(source, token)
    if wait:
        raise HTTPException(429, "too many failed tokens from this address; try again later",
                            headers={"Retry-After": f"{math.ceil(wait)}"})
    await asyncio.sleep(ctx.limiter.fail(source, token))
    raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})


Auth = Annotated[Principal, Depends(principal)]


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}

__all__ = ["ApiContext", "Auth", "Commands", "Ctx", "client_address", "context", "jsonable", "principal"]
