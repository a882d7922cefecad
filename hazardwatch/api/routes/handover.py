"""交接班: the current shift's summary, and who handed over to whom (audited)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from hazardwatch.api import queries
from hazardwatch.api.context import Auth, Ctx, jsonable
from hazardwatch.api.models import AUTH_ERRORS, HandoverBody
from hazardwatch.api.present import alarm_json
from hazardwatch.api.shifts import current_shift
from park.types import to_shanghai

router = APIRouter(tags=["handover"])


@router.get("/api/v1/handover", summary="Shift handover summary (交接班)", responses=AUTH_ERRORS)
async def handover(p: Auth, ctx: Ctx, hours: Annotated[int | None, Query(ge=1, le=72)] = None) -> dict[str, Any]:
    """The current shift (from the site's `site.shifts` start times, local time): alarms raised and
    resolved in it, everything still open, and the handovers recorded. With `hours`, the last
    `hours` hours instead of the shift."""
    now = ctx.clock.now()
    if hours is not None:
        since, until = now - timedelta(hours=hours), now
    else:
        since, until = current_shift(now, list(ctx.park.site.site.shifts), ctx.park.site.site.timezone)
    async with ctx.pool.connection() as conn:
        s = await queries.shift_summary(conn, p.alarm_scopes(ctx.park), since, min(until, now + timedelta(seconds=1)),
                                        p.unit)
    return {"since": since.isoformat(), "until": until.isoformat(),
            "shift": f"{to_shanghai(since):%m-%d %H:%M}–{to_shanghai(until):%H:%M}",
            "raised": s["raised"], "resolved": len(s["resolved"]),
            "resolved_alarms": [alarm_json(ctx.park, r) for r in s["resolved"]],
            "open": [alarm_json(ctx.park, r) for r in s["open"]],
            "handovers": [jsonable(r) for r in s["handovers"]]}


@router.post("/api/v1/handover", summary="Record a handover", responses=AUTH_ERRORS)
async def record(body: HandoverBody, p: Auth, ctx: Ctx) -> dict[str, Any]:
    """Who handed the duty over to whom, with the points handed over; kept and audited."""
    now = ctx.clock.now()
    start, _ = current_shift(now, list(ctx.park.site.site.shifts), ctx.park.site.site.timezone)
    async with ctx.pool.connection() as conn, conn.transaction():
        hid = await queries.record_handover(conn, p.unit, now, start, body.handed_over_by, body.taken_over_by,
                                            body.note)
        await queries.audit(conn, p, body.handed_over_by, "handover", f"handover:{hid}",
                            {"to": body.taken_over_by, "note": body.note})
    return {"id": hid, "ts": now.isoformat(), "shift_start": start.isoformat(),
            "handed_over_by": body.handed_over_by, "taken_over_by": body.taken_over_by, "note": body.note}
