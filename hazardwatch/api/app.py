"""The HTTP API (CONTRACT §5) and the duty-room board, served by ``hazardwatch run`` in the same process."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from importlib import resources
from typing import Annotated, Any, Literal, Protocol

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, generate_latest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from alerting.audit import alarm_audit
from alerting.errors import BadLink
from alerting.links import LinkSigner
from hazardwatch.api.auth import PARK_UNIT, FailureLimiter, Principal, lookup
from park.clock import Clock, SystemClock
from park.health import Health
from park.model import Park
from park.settings import Settings
from park.site import EnterpriseState
from park.types import to_shanghai
from rules.errors import AlarmNotFound, InvalidTransition

log = logging.getLogger("hazardwatch.api")


class Commands(Protocol):
    """What the API asks of the rule stage (rules.service.RulesService)."""

    async def ack(self, alarm_id: int, by: str, note: str | None = None) -> None: ...
    async def resolve(self, alarm_id: int, by: str, cause: str, action: str) -> None: ...
    async def shelve(self, alarm_id: int, by: str, reason: str, until: datetime) -> None: ...
    async def unshelve(self, alarm_id: int, by: str) -> None: ...
    async def set_enterprise_state(self, enterprise: str, state: EnterpriseState, by: str) -> None: ...


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AckBody(Body):
    by: str = Field(min_length=1, max_length=100, description="who acknowledges (name)")
    note: str | None = Field(default=None, max_length=1000)


class ResolveBody(Body):
    by: str = Field(min_length=1, max_length=100)
    cause: str = Field(min_length=1, max_length=2000, description="原因")
    action: str = Field(min_length=1, max_length=2000, description="处置措施")


class ShelveBody(Body):
    by: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=1000)
    until: AwareDatetime = Field(description="expiry, with a time zone; at most 24 h ahead")


class UnshelveBody(Body):
    by: str = Field(min_length=1, max_length=100)


class StatusBody(Body):
    state: EnterpriseState
    by: str = Field(min_length=1, max_length=100)


ALARM_SQL = (
    "SELECT a.id, a.enterprise_code AS enterprise, a.tag, a.severity, a.state, a.raised_at, a.value,"
    " a.limit_value AS \"limit\", a.acked_at, a.acked_by, a.escalation_level, a.rule, a.message, a.cleared_at,"
    " a.resolved_at, a.resolved_by, a.cause, a.action, a.shelved_until, a.shelve_reason, a.suppressed, a.flood,"
    " s.name AS sensor_name, s.unit, u.name AS enterprise_name, t.code AS town, t.name AS town_name,"
    " t.parent_code AS district"
    " FROM alarms a LEFT JOIN sensors s ON s.id = a.sensor_id LEFT JOIN units u ON u.code = a.enterprise_code"
    " LEFT JOIN units t ON t.code = u.parent_code"
)
SEVERITY_ORDER = "CASE a.severity WHEN 'red' THEN 4 WHEN 'orange' THEN 3 WHEN 'yellow' THEN 2 ELSE 1 END"


async def principal(request: Request) -> Principal:
    """The token's unit; 401 without a valid token, 429 after too many failures from one client."""
    limiter: FailureLimiter = request.app.state.limiter
    client = request.client.host if request.client else "?"
    wait = limiter.blocked(client)
    if wait:
        raise HTTPException(429, "too many failed logins; try again later", headers={"Retry-After": f"{wait:.0f}"})
    auth = request.headers.get("authorization", "")
    # EventSource cannot send headers: the board's live stream passes the token as ?token=
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.query_params.get("token", "")
    if not token:
        raise HTTPException(401, "missing token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    async with request.app.state.pool.connection() as conn:
        p = await lookup(conn, token)
    if p is None:
        limiter.fail(client)
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return p


Auth = Annotated[Principal, Depends(principal)]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def create_app(*, park: Park, pool: AsyncConnectionPool, commands: Commands, settings: Settings,
               registry: CollectorRegistry, readiness: Callable[[], bool], links: LinkSigner,
               clock: Clock | None = None, db_url: str | None = None, health: Health | None = None) -> FastAPI:
    clock = clock or SystemClock()
    limiter = FailureLimiter()
    app = FastAPI(title="hazardwatch", version="1", description="化工园区重大危险源监测预警 API (CONTRACT §5)")
    listen_url = db_url or (settings.database_url.get_secret_value() if settings.database_url else "")

    app.state.pool = pool
    app.state.health = health or Health()  # every stage's state, for /readyz
    app.state.limiter = limiter

    async def audit(p: Principal, by: str | None, action: str, target: str, detail: dict[str, Any]) -> None:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO audit_log (unit_code, token_name, by, action, target, detail) VALUES (%s,%s,%s,%s,%s,%s)",
                (p.unit, p.name, by, action, target, json.dumps(detail, ensure_ascii=False, default=str)))

    async def alarm_in_scope(p: Principal, alarm_id: int) -> dict[str, Any]:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(ALARM_SQL + " WHERE a.id = %s", (alarm_id,))
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"alarm {alarm_id} not found")
        if not p.sees(park, row["enterprise"]):
            raise HTTPException(403, f"alarm {alarm_id} is outside the scope of unit {p.unit}")
        return row

    async def command(p: Principal, alarm_id: int, action: str, by: str, run: Awaitable[None],
                      detail: dict[str, Any]) -> dict[str, Any]:
        try:
            await run
        except AlarmNotFound as e:
            raise HTTPException(409, str(e)) from None
        except InvalidTransition as e:
            raise HTTPException(409, str(e)) from None
        await audit(p, by, action, f"alarm:{alarm_id}", detail)
        return _jsonable(await alarm_in_scope(p, alarm_id))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        db = True
        try:
            async with pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            db = False
        broker = readiness()
        ok = db and broker
        return JSONResponse({"ready": ok, "database": db, "broker": broker}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/api/v1/alarms", tags=["alarms"])
    async def list_alarms(p: Auth, state: Literal["active", "all"] = "active", district: str | None = None,
                          town: str | None = None, enterprise: str | None = None,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                          offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> list[dict[str, Any]]:
        ents = [e for e in p.enterprises(park)
                if (enterprise is None or e == enterprise)
                and (town is None or park.in_scope(town, e))
                and (district is None or park.in_scope(district, e))]
        if enterprise is not None and enterprise in park.enterprises and not p.sees(park, enterprise):
            raise HTTPException(403, f"enterprise {enterprise} is outside the scope of unit {p.unit}")
        where = "a.enterprise_code = ANY(%s)" + (" AND a.state <> 'closed'" if state == "active" else "")
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(ALARM_SQL + f" WHERE {where} ORDER BY {SEVERITY_ORDER} DESC, a.raised_at DESC"
                              " LIMIT %s OFFSET %s", (ents, limit, offset))
            return [_jsonable(r) for r in await cur.fetchall()]

    @app.get("/api/v1/alarms/{alarm_id}", tags=["alarms"])
    async def get_alarm(alarm_id: Annotated[int, Field(ge=1, le=2**62)], p: Auth) -> dict[str, Any]:
        row = await alarm_in_scope(p, alarm_id)
        async with pool.connection() as conn:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute("SELECT ts, kind, severity, value, limit_value AS \"limit\", by, message, detail"
                                  " FROM alarm_events WHERE alarm_id = %s ORDER BY ts", (alarm_id,))
                events = [_jsonable(r) for r in await cur.fetchall()]
            audit_ = await alarm_audit(conn, alarm_id)
        return _jsonable(row) | {"events": events, "notifications": json.loads(json.dumps(audit_, default=str))}

    @app.post("/api/v1/alarms/{alarm_id}/ack", tags=["alarms"])
    async def ack(alarm_id: Annotated[int, Field(ge=1, le=2**62)], body: AckBody, p: Auth) -> dict[str, Any]:
        await alarm_in_scope(p, alarm_id)
        return await command(p, alarm_id, "ack", body.by, commands.ack(alarm_id, body.by, body.note),
                             {"note": body.note})

    @app.post("/api/v1/alarms/{alarm_id}/resolve", tags=["alarms"])
    async def resolve(alarm_id: Annotated[int, Field(ge=1, le=2**62)], body: ResolveBody, p: Auth) -> dict[str, Any]:
        await alarm_in_scope(p, alarm_id)
        return await command(p, alarm_id, "resolve", body.by,
                             commands.resolve(alarm_id, body.by, body.cause, body.action),
                             {"cause": body.cause, "action": body.action})

    @app.post("/api/v1/alarms/{alarm_id}/shelve", tags=["alarms"])
    async def shelve(alarm_id: Annotated[int, Field(ge=1, le=2**62)], body: ShelveBody, p: Auth) -> dict[str, Any]:
        await alarm_in_scope(p, alarm_id)
        now = clock.now()
        if not now < body.until <= now + timedelta(hours=24):
            raise HTTPException(422, "until must be in the future and at most 24 hours ahead (shelving is temporary)")
        return await command(p, alarm_id, "shelve", body.by,
                             commands.shelve(alarm_id, body.by, body.reason, body.until),
                             {"reason": body.reason, "until": body.until})

    @app.post("/api/v1/alarms/{alarm_id}/unshelve", tags=["alarms"])
    async def unshelve(alarm_id: Annotated[int, Field(ge=1, le=2**62)], body: UnshelveBody,
                       p: Auth) -> dict[str, Any]:
        await alarm_in_scope(p, alarm_id)
        return await command(p, alarm_id, "unshelve", body.by, commands.unshelve(alarm_id, body.by), {})

    @app.get("/api/v1/sensors/{sensor_id}/readings", tags=["readings"])
    async def readings(sensor_id: Annotated[int, Field(ge=1, le=2**31 - 1)], p: Auth, start: AwareDatetime,
                       end: AwareDatetime) -> dict[str, Any]:
        spec = park.by_id.get(sensor_id)
        if spec is None:
            raise HTTPException(404, f"sensor {sensor_id} not found")
        if not p.sees(park, spec.enterprise):
            raise HTTPException(403, f"sensor {sensor_id} is outside the scope of unit {p.unit}")
        if end <= start or end - start > timedelta(days=400):
            raise HTTPException(422, "end must be after start, and the range at most 400 days")
        span = end - start
        if span <= timedelta(hours=6):
            sql, res = ("SELECT ts, value, quality FROM readings WHERE sensor_id = %s AND ts >= %s AND ts < %s"
                        " ORDER BY ts LIMIT 20000"), "raw"
        else:
            table, res = ("readings_1m", "1m") if span <= timedelta(days=7) else ("readings_1h", "1h")
            sql = (f"SELECT bucket AS ts, avg_value AS value, min_value AS min, max_value AS max FROM {table}"
                   " WHERE sensor_id = %s AND bucket >= %s AND bucket < %s ORDER BY bucket LIMIT 20000")
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, (sensor_id, start, end))
            points = [_jsonable(r) for r in await cur.fetchall()]
        return {"sensor": {"id": spec.id, "enterprise": spec.enterprise, "tag": spec.tag, "name": spec.name,
                           "unit": spec.unit}, "resolution": res, "points": points}

    @app.get("/api/v1/enterprises", tags=["enterprises"])
    async def enterprises(p: Auth) -> list[dict[str, Any]]:
        ents = p.enterprises(park)
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT u.code, u.name, u.parent_code AS town, u.state, u.state_since, u.state_by,"
                " g.online, g.since AS online_since,"
                " (SELECT count(*) FROM alarms a WHERE a.enterprise_code = u.code AND a.state <> 'closed')"
                " AS open_alarms FROM units u LEFT JOIN gateway_status g ON g.enterprise_code = u.code"
                " WHERE u.code = ANY(%s) ORDER BY u.code", (ents,))
            return [_jsonable(r) for r in await cur.fetchall()]

    @app.put("/api/v1/enterprises/{code}/status", tags=["enterprises"])
    async def set_status(code: Annotated[str, Field(max_length=64)], body: StatusBody,
                         p: Auth) -> dict[str, Any]:
        if code not in park.enterprises:
            raise HTTPException(404, f"enterprise {code} not found")
        if not p.sees(park, code):
            raise HTTPException(403, f"enterprise {code} is outside the scope of unit {p.unit}")
        await commands.set_enterprise_state(code, body.state, body.by)
        await audit(p, body.by, "set_state", f"enterprise:{code}", {"state": body.state.value})
        return {"code": code, "state": body.state.value}

    @app.get("/api/v1/handover", tags=["alarms"])
    async def handover(p: Auth, hours: Annotated[int, Query(ge=1, le=72)] = 8) -> dict[str, Any]:
        """交接班: what happened in the shift, what is still open."""
        since = clock.now() - timedelta(hours=hours)
        ents = p.enterprises(park)
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT a.severity, count(*) AS n FROM alarms a WHERE a.enterprise_code = ANY(%s)"
                              " AND a.raised_at >= %s GROUP BY 1", (ents, since))
            raised = {r["severity"]: r["n"] for r in await cur.fetchall()}
            await cur.execute(ALARM_SQL + f" WHERE a.enterprise_code = ANY(%s) AND a.state <> 'closed'"
                              f" ORDER BY {SEVERITY_ORDER} DESC, a.raised_at", (ents,))
            still_open = [_jsonable(r) for r in await cur.fetchall()]
            await cur.execute("SELECT count(*) AS n FROM alarms a WHERE a.enterprise_code = ANY(%s)"
                              " AND a.resolved_at >= %s", (ents, since))
            resolved = (await cur.fetchone() or {"n": 0})["n"]
        return {"since": since.isoformat(), "raised": raised, "resolved": resolved, "open": still_open}

    @app.get("/api/v1/stream", tags=["alarms"], response_class=StreamingResponse)
    async def stream(p: Auth) -> StreamingResponse:
        """Server-sent events: the alarm row each time it changes (rules NOTIFY hazardwatch_alarms)."""

        async def events() -> AsyncIterator[str]:
            yield "event: hello\ndata: {}\n\n"
            async with await psycopg.AsyncConnection.connect(listen_url, autocommit=True) as conn:
                await conn.execute("LISTEN hazardwatch_alarms")
                gen = conn.notifies(timeout=15)
                while True:
                    got = False
                    async for n in gen:
                        got = True
                        try:
                            row = await alarm_in_scope(p, int(n.payload))
                        except (HTTPException, ValueError):
                            continue
                        yield f"event: alarm\ndata: {json.dumps(_jsonable(row), ensure_ascii=False)}\n\n"
                    if not got:
                        yield ": keepalive\n\n"
                    gen = conn.notifies(timeout=15)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/ack/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def ack_page(token: str) -> HTMLResponse:
        try:
            alarm_id = links.verify(token, clock.now())
        except BadLink as e:
            return HTMLResponse(_page("链接无效", f"<p>{html.escape(e.reason)}：请登录值班平台处理。</p>"), 400)
        row = await _alarm_row(pool, alarm_id)
        if row is None:
            return HTMLResponse(_page("预警不存在", "<p>该预警不存在。</p>"), 404)
        when = to_shanghai(row["raised_at"]).strftime("%Y-%m-%d %H:%M:%S")
        done = row["acked_at"] is not None or row["state"] == "closed"
        body = (f"<p class=sev-{row['severity']}><b>{html.escape(row['enterprise_name'] or row['enterprise'])}</b></p>"
                f"<p>{html.escape(row['message'])}</p><p>发生时间：{when}</p>")
        if done:
            body += f"<p>已由 {html.escape(row['acked_by'] or '')} 确认。</p>"
        else:
            body += ("<form method=post><label>确认人 <input name=by required maxlength=50></label>"
                     "<button type=submit>确认收到并处置</button></form>")
        return HTMLResponse(_page("确认预警", body))

    @app.post("/ack/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def ack_by_link(token: str, request: Request) -> HTMLResponse:
        try:
            alarm_id = links.verify(token, clock.now())
        except BadLink as e:
            return HTMLResponse(_page("链接无效", f"<p>{html.escape(e.reason)}</p>"), 400)
        form = (await request.body()).decode(errors="replace")
        from urllib.parse import parse_qs

        by = (parse_qs(form).get("by") or ["链接确认"])[0][:50]
        try:
            await commands.ack(alarm_id, f"link:{by}")
        except (AlarmNotFound, InvalidTransition) as e:
            return HTMLResponse(_page("无需确认", f"<p>{html.escape(str(e))}</p>"), 409)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO audit_log (unit_code, token_name, by, action, target) VALUES"
                               " ('link', 'ack-link', %s, 'ack', %s)", (by, f"alarm:{alarm_id}"))
        return HTMLResponse(_page("已确认", f"<p>预警 {alarm_id} 已确认，后续升级通知已停止。</p>"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def board() -> HTMLResponse:
        return HTMLResponse(resources.files("hazardwatch.board").joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/api/v1/whoami", tags=["ops"])
    async def whoami(p: Auth) -> dict[str, Any]:
        units = {u.code: {"level": u.level, "name": u.name, "parent": u.parent} for u in park.units.values()
                 if p.unit == PARK_UNIT or any(p.sees(park, e) for e in park.enterprises_under(u.code))
                 or u.code == p.unit}
        return {"unit": p.unit, "name": p.name, "site": park.site.site.name, "units": units}

    return app


async def _alarm_row(pool: AsyncConnectionPool, alarm_id: int) -> dict[str, Any] | None:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(ALARM_SQL + " WHERE a.id = %s", (alarm_id,))
        return await cur.fetchone()


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=zh-CN><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{title}</title><style>body{{font:18px sans-serif;margin:2em;max-width:40em}}"
            f".sev-red{{color:#c00}}.sev-orange{{color:#d60}}button{{font-size:1.1em;padding:.5em 1em}}</style>"
            f"<h1>{title}</h1>{body}</html>")


__all__ = ["Commands", "create_app"]
