"""The HTTP API (docs/contract.md §5) and the duty-room board, served by ``hazardwatch run`` in the same process.

``create_app`` only composes: the shared context, the limits, the error mapping and one router
per resource (``hazardwatch.api.routes``, the live stream in ``hazardwatch.api.stream``).
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from psycopg import OperationalError
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from alerting.links import LinkSigner
from hazardwatch.api import cluster, stream
from hazardwatch.api.auth import FailureLimiter, TokenBook
from hazardwatch.api.context import ApiContext, Commands
from hazardwatch.api.limits import MAX_BODY, BodyLimit, OpsGuard
from hazardwatch.api.redact import Redactor
from hazardwatch.api.routes import alarms, board, handover, ops, readings, units
from hazardwatch.api.routes import links as ack_links
from park.clock import Clock, SystemClock
from park.errors import Unavailable
from park.health import Health
from park.model import Park
from park.settings import Settings

log = logging.getLogger("hazardwatch.api")

DESCRIPTION = """化工园区重大危险源监测预警 API — the duty room's board, enterprises and other platforms.

Every `/api/v1` call needs `Authorization: Bearer <token>` (`hazardwatch token create --unit CODE`);
a token reaches only its unit's subtree (`park` for the duty room). Errors: 401 no or bad token,
403 outside the token's unit, 409 not possible in the alarm's state, 413 body over 64 KiB,
429 too many failed tokens or live streams, 503 the database is away (retry after `Retry-After`)."""


DATABASE_AWAY = "数据库暂时不可用，请稍后重试（the database is not reachable right now; try again shortly）"


def create_app(*, park: Park, pool: AsyncConnectionPool, commands: Commands, settings: Settings,
               registry: CollectorRegistry, readiness: Callable[[], bool], links: LinkSigner,
               clock: Clock | None = None, db_url: str | None = None, health: Health | None = None,
               max_body: int = MAX_BODY) -> FastAPI:
    """The application; ``commands`` is the one seam for operator commands (local rules or the leader)."""
    clock = clock or SystemClock()
    http = park.site.http
    tokens = TokenBook(pool)
    ctx = ApiContext(park=park, pool=pool, commands=commands, settings=settings, registry=registry,
                     readiness=readiness, links=links, clock=clock, tokens=tokens, limiter=FailureLimiter(),
                     redactor=Redactor(park.site, settings), health=health)
    listen_url = db_url or (settings.database_url.get_secret_value() if settings.database_url else "")
    ctx.hub = stream.StreamHub(listen_url=listen_url, pool=pool, park=park, tokens=tokens, clock=clock,
                               per_token=http.max_streams_per_token)
    guard = OpsGuard(http.metrics_token.get_secret_value() if http.metrics_token else None, http.ops_from)
    if guard.open and not _loopback(settings.http_host):
        log.warning("the API listens on %s with /metrics and /openapi.json open to anyone who reaches it; "
                    "set http.metrics_token or http.ops_from in the site file", settings.http_host)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        assert ctx.hub is not None
        ctx.hub.start()
        try:
            yield
        finally:
            await ctx.hub.stop()

    app = FastAPI(title="hazardwatch", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.state.ops_guard = guard

    @app.exception_handler(Unavailable)
    async def unavailable(_r: Request, e: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, 503, headers={"Retry-After": f"{max(1, math.ceil(e.retry_after))}"})

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_away(_r: Request, e: Exception) -> JSONResponse:
        log.warning("API request failed on the database: %s", type(e).__name__)
        return JSONResponse({"detail": DATABASE_AWAY}, 503, headers={"Retry-After": "5"})

    for r in (ops.router, alarms.router, readings.router, units.router, handover.router, stream.router,
              ack_links.router, board.router, cluster.router):
        app.include_router(r)

    app.add_middleware(BodyLimit, max_bytes=max_body)
    if http.trusted_proxies:  # X-Forwarded-For is believed only from these (uvicorn's own is turned off)
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(http.trusted_proxies))
    return app


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


__all__ = ["Commands", "create_app"]
