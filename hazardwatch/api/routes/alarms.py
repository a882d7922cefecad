"""Alarms: list, one alarm with its detail, and the operator commands (docs/contract.md §5)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import Field

from hazardwatch.api import queries
from hazardwatch.api.auth import PARK_UNIT, Principal
from hazardwatch.api.context import ApiContext, Auth, Ctx, jsonable
from hazardwatch.api.models import (
    AUTH_ERRORS,
    COMMAND_ERRORS,
    AckBody,
    ResolveBody,
    ShelveBody,
    UnshelveBody,
)
from hazardwatch.api.present import alarm_json, responsible, timeline
from park.types import PARK_SCOPE
from rules.errors import AlarmNotFound, InvalidTransition

router = APIRouter(tags=["alarms"])
AlarmId = Annotated[int, Field(ge=1, le=2**62)]


async def alarm_in_scope(ctx: ApiContext, p: Principal, alarm_id: int) -> dict[str, Any]:
    async with ctx.pool.connection() as conn:
        row = await queries.alarm(conn, alarm_id)
    if row is None:
        raise HTTPException(404, f"alarm {alarm_id} not found")
    if not p.sees(ctx.park, row["enterprise"]):
        raise HTTPException(403, f"alarm {alarm_id} is outside the scope of unit {p.unit}")
    return row


async def run_command(ctx: ApiContext, p: Principal, alarm_id: int, action: str, by: str, run: Awaitable[None],
                      detail: dict[str, Any]) -> dict[str, Any]:
    """Run one operator command, audit it, answer the alarm as it is now.

    ``park.errors.Unavailable`` from the command becomes 503 (the app's handler)."""
    try:
        await run
    except (AlarmNotFound, InvalidTransition) as e:
        raise HTTPException(409, str(e)) from None
    async with ctx.pool.connection() as conn:
        await queries.audit(conn, p, by, action, f"alarm:{alarm_id}", detail)
    return alarm_json(ctx.park, await alarm_in_scope(ctx, p, alarm_id))


@router.get("/api/v1/alarms", summary="List alarms", responses=AUTH_ERRORS)
async def list_alarms(p: Auth, ctx: Ctx, state: Literal["active", "all"] = "active", district: str | None = None,
                      town: str | None = None, enterprise: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                      offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> list[dict[str, Any]]:
    """Alarms of the token's subtree, most severe and newest first: `active` (not closed) or `all`,
    narrowed to a district, town or enterprise. Each has the contract's fields (`id`, `enterprise`,
    `tag`, `severity`, `state`, `raised_at`, `value`, `limit`, `acked_at`, `acked_by`,
    `escalation_level`) plus names, `value_text` / `limit_text` rounded to the sensor's precision
    with the unit, and `text`, the rule explained in Chinese."""
    park = ctx.park
    if enterprise is not None and enterprise in park.enterprises and not p.sees(park, enterprise):
        raise HTTPException(403, f"enterprise {enterprise} is outside the scope of unit {p.unit}")
    ents = [e for e in p.enterprises(park)
            if (enterprise is None or e == enterprise)
            and (town is None or park.in_scope(town, e))
            and (district is None or park.in_scope(district, e))]
    if p.unit == PARK_UNIT and enterprise in (None, PARK_SCOPE) and town is None and district is None:
        ents.append(PARK_SCOPE)  # park-level alarms (an MQTT broker unreachable): the duty room's
    async with ctx.pool.connection() as conn:
        rows = await queries.alarms(conn, ents, active=state == "active", limit=limit, offset=offset)
    return [alarm_json(park, r) for r in rows]


@router.get("/api/v1/alarms/{alarm_id}", summary="One alarm with its history", responses=COMMAND_ERRORS)
async def get_alarm(alarm_id: AlarmId, p: Auth, ctx: Ctx) -> dict[str, Any]:
    """The alarm, its transitions (`events`), every message and delivery attempt (`notifications`),
    everyone responsible with their phone numbers (`responsible`, nearest unit first), the sensor
    with its limits and latest reading (`sensor`), and one time-ordered `timeline` in words."""
    row = await alarm_in_scope(ctx, p, alarm_id)
    async with ctx.pool.connection() as conn:
        events, notes = await queries.alarm_history(conn, alarm_id)
        latest = await queries.latest_reading(conn, row["sensor_id"]) if row.get("sensor_id") else None
    park = ctx.park
    spec = park.by_id.get(row["sensor_id"]) if row.get("sensor_id") is not None else None
    sensor = None
    if spec is not None:
        sensor = {"id": spec.id, "tag": spec.tag, "name": spec.display_name, "kind": spec.kind.value,
                  "kind_zh": spec.kind.zh, "unit": spec.unit, "precision": spec.precision,
                  "limits": dict(spec.limits.items()),
                  "latest": jsonable(latest) | {"text": spec.show(latest["value"])} if latest else None}
    return ctx.redactor(alarm_json(park, row) | {
        "events": [jsonable(e) for e in events],
        "notifications": _plain(notes),
        "responsible": responsible(park, row["enterprise"]),
        "sensor": sensor,
        "timeline": timeline(park, events, notes),
    })


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj.isoformat() if isinstance(obj, datetime) else obj


@router.post("/api/v1/alarms/{alarm_id}/ack", summary="Acknowledge an alarm", responses=COMMAND_ERRORS)
async def ack(alarm_id: AlarmId, body: AckBody, p: Auth, ctx: Ctx) -> dict[str, Any]:
    """Acknowledge: further escalation steps stop. `by` names the person; the token's unit is recorded too."""
    await alarm_in_scope(ctx, p, alarm_id)
    return await run_command(ctx, p, alarm_id, "ack", body.by, ctx.commands.ack(alarm_id, body.by, body.note),
                             {"note": body.note})


@router.post("/api/v1/alarms/{alarm_id}/resolve", summary="Record the handling (处置) and close",
             responses=COMMAND_ERRORS)
async def resolve(alarm_id: AlarmId, body: ResolveBody, p: Auth, ctx: Ctx) -> dict[str, Any]:
    """处置记录: the cause and the action taken; the alarm is closed (and acknowledged if it was not)."""
    await alarm_in_scope(ctx, p, alarm_id)
    return await run_command(ctx, p, alarm_id, "resolve", body.by,
                             ctx.commands.resolve(alarm_id, body.by, body.cause, body.action),
                             {"cause": body.cause, "action": body.action})


@router.post("/api/v1/alarms/{alarm_id}/shelve", summary="Shelve an alarm for a while", responses=COMMAND_ERRORS)
async def shelve(alarm_id: AlarmId, body: ShelveBody, p: Auth, ctx: Ctx) -> dict[str, Any]:
    """Shelving (ISA-18.2) is temporary: `until` must be in the future and at most 24 h ahead."""
    await alarm_in_scope(ctx, p, alarm_id)
    now = ctx.clock.now()
    until = body.until.astimezone(UTC)
    if not now < until <= now + timedelta(hours=24):
        raise HTTPException(422, "until must be in the future and at most 24 hours ahead (shelving is temporary)")
    return await run_command(ctx, p, alarm_id, "shelve", body.by,
                             ctx.commands.shelve(alarm_id, body.by, body.reason, until),
                             {"reason": body.reason, "until": until})


@router.post("/api/v1/alarms/{alarm_id}/unshelve", summary="End a shelving early", responses=COMMAND_ERRORS)
async def unshelve(alarm_id: AlarmId, body: UnshelveBody, p: Auth, ctx: Ctx) -> dict[str, Any]:
    """The alarm is live again at once."""
    await alarm_in_scope(ctx, p, alarm_id)
    return await run_command(ctx, p, alarm_id, "unshelve", body.by, ctx.commands.unshelve(alarm_id, body.by), {})
