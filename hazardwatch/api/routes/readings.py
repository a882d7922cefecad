"""Readings of one sensor, raw or rolled up, with its limits for a chart."""

from __future__ import annotations

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
    precision and the effective limits (standard defaults applied), for drawing them on a chart."""
    spec = ctx.park.by_id.get(sensor_id)
    if spec is None:
        raise HTTPException(404, f"sensor {sensor_id} not found")
    if not p.sees(ctx.park, spec.enterprise):
        raise HTTPException(403, f"sensor {sensor_id} is outside the scope of unit {p.unit}")
    if end <= start or end - start > timedelta(days=400):
        raise HTTPException(422, "end must be after start, and the range at most 400 days")
    async with ctx.pool.connection() as conn:
        res, points = await queries.readings(conn, sensor_id, start, end)
    return {"sensor": {"id": spec.id, "enterprise": spec.enterprise, "tag": spec.tag, "name": spec.name,
                       "unit": spec.unit, "precision": spec.precision, "limits": dict(spec.limits.items())},
            "resolution": res, "points": [jsonable(r) for r in points]}
