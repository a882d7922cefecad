"""Readings of one sensor, raw or rolled up, with its limits for a chart."""

from __future__ import annotations

import bisect
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import AwareDatetime, Field

from hazardwatch.api import queries
from hazardwatch.api.context import Auth, Ctx, jsonable
from hazardwatch.api.models import AUTH_ERRORS

router = APIRouter(tags=["readings"])


@router.get("/api/v1/sensors/{sensor_id}/readings", summary="Readings of one sensor",
            responses=AUTH_ERRORS | {404: {"description": "no such sensor"}})
async def readings(sensor_id: Annotated[int, Field(ge=1, le=2**31 - 1)], p: Auth, ctx: Ctx, start: AwareDatetime,
                   end: AwareDatetime) -> dict[str, Any]:
    """Readings in [start, end): raw up to 6 hours, 1-minute averages (with min/max) up to 7 days,
    hourly beyond (at most 400 days, 20,000 points). `sensor` carries the unit, the display
    precision and the effective limits (standard defaults applied), for drawing them on a chart.
    Readings that arrived late, as a gateway's backfill (store-and-forward, 断点续传), are listed in
    `backfills` (oldest and newest reading time, when they arrived, how many) and raw points among
    them carry `backfilled: true`."""
    spec = ctx.park.by_id.get(sensor_id)
    if spec is None:
        raise HTTPException(404, f"sensor {sensor_id} not found")
    if not p.sees(ctx.park, spec.enterprise):
        raise HTTPException(403, f"sensor {sensor_id} is outside the scope of unit {p.unit}")
    if end <= start or end - start > timedelta(days=400):
        raise HTTPException(422, "end must be after start, and the range at most 400 days")
    async with ctx.pool.connection() as conn:
        res, points = await queries.readings(conn, sensor_id, start, end)
        late = await queries.backfills(conn, sensor_id, start, end)
    if late and res == "raw":
        mark_backfilled(points, late)
    return {"sensor": {"id": spec.id, "enterprise": spec.enterprise, "tag": spec.tag, "name": spec.name,
                       "unit": spec.unit, "precision": spec.precision, "limits": dict(spec.limits.items())},
            "resolution": res, "points": [jsonable(r) for r in points], "backfills": [jsonable(b) for b in late]}


def mark_backfilled(points: list[dict[str, Any]], late: list[dict[str, Any]]) -> None:
    """``backfilled: true`` on every point inside a backfill span (spans merged, then a binary search)."""
    merged: list[list[Any]] = []
    for b in sorted(late, key=lambda b: b["start"]):
        if merged and b["start"] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b["end"])
        else:
            merged.append([b["start"], b["end"]])
    starts = [m[0] for m in merged]
    for pt in points:
        k = bisect.bisect_right(starts, pt["ts"]) - 1
        if k >= 0 and pt["ts"] <= merged[k][1]:
            pt["backfilled"] = True
