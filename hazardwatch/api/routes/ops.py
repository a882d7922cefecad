"""Liveness, readiness, metrics and the API description (optionally protected, see limits.OpsGuard)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from hazardwatch.api import queries
from hazardwatch.api.context import ApiContext, Ctx, presented_token
from hazardwatch.api.limits import OpsGuard

router = APIRouter(tags=["ops"])
# Swagger UI's assets come from a Python package (fastapi-offline), never a CDN: /docs works offline
DOCS_ASSETS = resources.files("fastapi_offline") / "static"


async def guard(request: Request, ctx: ApiContext, *, api_token_ok: bool) -> None:
    g: OpsGuard = request.app.state.ops_guard
    if g.open or g.from_allowed_network(request):
        return
    token = presented_token(request)
    if g.has_scrape_token(token):
        return
    if api_token_ok and token and len(token) <= 200 and await ctx.tokens.check(token) is not None:
        return
    if g.token is None:
        raise HTTPException(403, "not reachable from this address (http.ops_from)")
    raise HTTPException(401, "this endpoint needs the scrape token: Authorization: Bearer <http.metrics_token>",
                        headers={"WWW-Authenticate": "Bearer"})


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """Always `{"status": "ok"}` while the process answers."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness of every stage", responses={503: {"description": "not ready"}})
async def readyz(ctx: Ctx) -> JSONResponse:
    """Ready when the database answers, the broker session is up and no stage reports itself
    degraded. `stages` lists every stage with its reason while degraded; `live_stream` says
    whether the boards' live feed is connected."""
    db = True
    try:
        async with ctx.pool.connection(timeout=2) as conn:
            await queries.ping(conn)
    except Exception:
        db = False
    broker = bool(ctx.readiness())
    stages = ctx.health.report() if ctx.health is not None else {}
    ok = db and broker and all(bool(s.get("ok")) for s in stages.values())
    body = {"ready": ok, "database": db, "broker": broker, "stages": stages,
            "live_stream": ctx.hub.live if ctx.hub is not None else None}
    return JSONResponse(body, status_code=200 if ok else 503)


class _Only:
    """``registry`` with only the samples named (a term's stages register as one collector without
    names, which prometheus_client's own ``restricted_registry`` would leave out)."""

    def __init__(self, registry: CollectorRegistry, names: set[str]) -> None:
        self.registry, self.names = registry, names

    def collect(self) -> Iterator[Metric]:
        for m in self.registry.collect():
            samples = [x for x in m.samples if x.name in self.names]
            if samples:
                kept = Metric(m.name, m.documentation, m.type, m.unit)
                kept.samples = samples
                yield kept


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
            responses={401: {"description": "scrape token required"}, 403: {"description": "address not allowed"}})
async def metrics(request: Request, ctx: Ctx) -> PlainTextResponse:
    """Prometheus text format. Protected when `http.metrics_token` or `http.ops_from` is set.
    `?name[]=…` (repeatable) limits the answer to those metrics, as Prometheus' own exporters do."""
    await guard(request, ctx, api_token_ok=False)
    names = set(request.query_params.getlist("name[]"))
    registry = _Only(ctx.registry, names) if names else ctx.registry
    # written out in a worker thread: with a national registry (thousands of enterprises, a labelled
    # series each) the text takes a tenth of a second, and the event loop — every alarm — must not wait
    text = await asyncio.to_thread(generate_latest, registry)
    return PlainTextResponse(text.decode(), media_type="text/plain; version=0.0.4")


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, ctx: Ctx) -> JSONResponse:
    await guard(request, ctx, api_token_ok=True)
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs(request: Request, ctx: Ctx) -> HTMLResponse:
    await guard(request, ctx, api_token_ok=True)
    token = request.query_params.get("token")
    spec = "/openapi.json" + (f"?token={quote(token)}" if token else "")
    return get_swagger_ui_html(openapi_url=spec, title="hazardwatch API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon.png")


@router.get("/docs-assets/{name}", include_in_schema=False)
async def docs_asset(name: str) -> Response:
    types = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
    if name not in types:
        raise HTTPException(404, "no such asset")
    data = (DOCS_ASSETS / name).read_bytes()
    return Response(data, media_type=types[name], headers={"Cache-Control": "public, max-age=86400"})
