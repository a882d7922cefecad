"""Units and enterprises: who the token is, enterprise status, and the park map (一张图)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import Field

from hazardwatch.api import queries
from hazardwatch.api.auth import PARK_UNIT
from hazardwatch.api.context import Auth, Ctx, jsonable
from hazardwatch.api.models import AUTH_ERRORS, COMMAND_ERRORS, StatusBody
from park.model import Park

router = APIRouter(tags=["units"])


@router.get("/api/v1/whoami", summary="The token's unit and what it sees", responses=AUTH_ERRORS)
async def whoami(p: Auth, ctx: Ctx) -> dict[str, Any]:
    """The token's unit and name, the park's name, the units in its scope (for filters), and the
    duty-room shift start times."""
    park = ctx.park
    units = {u.code: {"level": u.level, "name": u.name, "parent": u.parent} for u in park.units.values()
             if p.unit == PARK_UNIT or u.code == p.unit
             or any(p.sees(park, e) for e in park.enterprises_under(u.code))}
    unit_name = "园区值班室" if p.unit == PARK_UNIT else park.units[p.unit].name if p.unit in park.units else p.unit
    return {"unit": p.unit, "unit_name": unit_name, "name": p.name, "site": park.site.site.name, "units": units,
            "shifts": list(park.site.site.shifts)}


@router.get("/api/v1/enterprises", summary="Enterprises in scope with their status", responses=AUTH_ERRORS)
async def enterprises(p: Auth, ctx: Ctx) -> list[dict[str, Any]]:
    """Each enterprise: operating state (running / stopped / maintenance), gateway online, open
    alarms, the worst open severity, whether its data is stale, and its gateway's measured clock
    offset: `clock_offset_s` (gateway minus hazardwatch, seconds; null until measured),
    `clock_measured_at`, `clock_skew_max_s` (the bound) and `clock_wrong` (beyond the bound)."""
    async with ctx.pool.connection() as conn:
        rows = await queries.enterprises(conn, p.enterprises(ctx.park))
    return [jsonable(r | clock_fields(ctx.park, r)) for r in rows]


def clock_fields(park: Park, row: dict[str, Any]) -> dict[str, Any]:
    """The gateway clock as the board shows it: offset, the bound, and whether it is beyond."""
    bound = park.site.alarm_management.clock_skew_max.total_seconds()
    off = row.get("clock_offset_s")
    return {"clock_offset_s": off, "clock_measured_at": row.get("clock_measured_at"), "clock_skew_max_s": bound,
            "clock_wrong": off is not None and abs(off) > bound}


@router.put("/api/v1/enterprises/{code}/status", summary="Set an enterprise's operating state",
            responses=COMMAND_ERRORS)
async def set_status(code: Annotated[str, Field(max_length=64)], body: StatusBody, p: Auth,
                     ctx: Ctx) -> dict[str, Any]:
    """running / stopped (停产) / maintenance (检修). Maintenance suppresses process alarms by design;
    gas, fire and voting alarms are never suppressed."""
    if code not in ctx.park.enterprises:
        raise HTTPException(404, f"enterprise {code} not found")
    if not p.sees(ctx.park, code):
        raise HTTPException(403, f"enterprise {code} is outside the scope of unit {p.unit}")
    await ctx.commands.set_enterprise_state(code, body.state, body.by)
    async with ctx.pool.connection() as conn:
        await queries.audit(conn, p, body.by, "set_state", f"enterprise:{code}", {"state": body.state.value})
    return {"code": code, "state": body.state.value}


def layout(park: Park, codes: list[str]) -> dict[str, Any]:
    """Positions on the site plan: the site file's ``map: {x, y}`` where given, else a grid by town."""
    plan = park.site.site.map
    w, h = plan.width, plan.height
    towns: dict[str, list[str]] = {}
    for e in codes:
        towns.setdefault(park.units[e].parent or "", []).append(e)
    out_towns, out_ents = [], []
    cols = max(1, math.ceil(math.sqrt(len(towns))))
    rows = max(1, math.ceil(len(towns) / cols))
    tw, th = w / cols, h / rows
    for i, (town, ents) in enumerate(towns.items()):
        tx, ty = (i % cols) * tw, (i // cols) * th
        u = park.units.get(town)
        out_towns.append({"code": town, "name": u.name if u else town, "x": tx, "y": ty, "w": tw, "h": th})
        ec = max(1, math.ceil(math.sqrt(len(ents) * tw / th)))
        er = max(1, math.ceil(len(ents) / ec))
        for j, e in enumerate(ents):
            pos = park.enterprises[e].map
            x = pos.x if pos else tx + tw * ((j % ec) + 0.5) / ec
            y = pos.y if pos else ty + 24 + (th - 24) * ((j // ec) + 0.5) / er
            out_ents.append({"code": e, "name": park.enterprises[e].name, "town": town, "x": x, "y": y,
                             "placed": pos is not None})
    return {"width": w, "height": h, "towns": out_towns, "enterprises": out_ents,
            "auto": not any(e["placed"] for e in out_ents)}


@router.get("/api/v1/map", summary="The park at a glance (一张图)", responses=AUTH_ERRORS)
async def park_map(p: Auth, ctx: Ctx) -> dict[str, Any]:
    """Enterprises on the site plan with the worst open alarm, open count, and whether the gateway
    is offline or the data stale. Positions come from the site file (`map: {x, y}` on an
    enterprise, plan size in `site.map`); without them, a grid grouped by town (`auto: true`). Each
    enterprise also carries its gateway's measured clock offset (`clock_offset_s`, `clock_wrong`)."""
    codes = p.enterprises(ctx.park)
    async with ctx.pool.connection() as conn:
        status = {r["code"]: r for r in await queries.enterprises(conn, codes)}
    out = layout(ctx.park, codes)
    for e in out["enterprises"]:
        st = status.get(e["code"]) or {}
        e |= {"worst": st.get("worst"), "open_alarms": st.get("open_alarms", 0),
              "online": st.get("online"), "stale": bool(st.get("stale")) or st.get("online") is False,
              "state": st.get("state")} | clock_fields(ctx.park, st)
    return out
