"""Every query the API runs, in one place: routers call these and never write SQL themselves."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from alerting.audit import alarm_audit
from hazardwatch.api.auth import Principal

ALARM_SQL = (
    "SELECT a.id, a.enterprise_code AS enterprise, a.tag, a.severity, a.state, a.raised_at, a.value,"
    " a.limit_value AS \"limit\", a.acked_at, a.acked_by, a.escalation_level, a.rule, a.message, a.cleared_at,"
    " a.resolved_at, a.resolved_by, a.cause, a.action, a.shelved_until, a.shelve_reason, a.suppressed, a.flood,"
    " a.detail, a.sensor_id, a.updated_at,"
    # columns other stages may add later are read tolerantly: absent → null
    " (to_jsonb(a) ->> 'noticed_at')::timestamptz AS noticed_at,"
    " s.name AS sensor_name, s.unit, s.kind, u.name AS enterprise_name, t.code AS town, t.name AS town_name,"
    " t.parent_code AS district"
    " FROM alarms a LEFT JOIN sensors s ON s.id = a.sensor_id LEFT JOIN units u ON u.code = a.enterprise_code"
    " LEFT JOIN units t ON t.code = u.parent_code"
)
SEVERITY_ORDER = "CASE a.severity WHEN 'red' THEN 4 WHEN 'orange' THEN 3 WHEN 'yellow' THEN 2 ELSE 1 END"
MAX_POINTS = 20_000


async def ping(conn: AsyncConnection) -> None:
    await conn.execute("SELECT 1")


async def alarm(conn: AsyncConnection, alarm_id: int) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(ALARM_SQL + " WHERE a.id = %s", (alarm_id,))
        return await cur.fetchone()


async def alarms_by_id(conn: AsyncConnection, ids: list[int]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(ALARM_SQL + " WHERE a.id = ANY(%s) ORDER BY a.id", (ids,))
        return await cur.fetchall()


async def alarms(conn: AsyncConnection, enterprises: list[str], *, active: bool, limit: int,
                 offset: int) -> list[dict[str, Any]]:
    where = "a.enterprise_code = ANY(%s)" + (" AND a.state <> 'closed'" if active else "")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(ALARM_SQL + f" WHERE {where} ORDER BY {SEVERITY_ORDER} DESC, a.raised_at DESC"
                          " LIMIT %s OFFSET %s", (enterprises, limit, offset))
        return await cur.fetchall()


async def alarm_history(conn: AsyncConnection, alarm_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The alarm's transitions and its notification audit (messages, attempts, acknowledgement)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT ts, kind, severity, value, limit_value AS \"limit\", by, message, detail"
                          " FROM alarm_events WHERE alarm_id = %s ORDER BY ts", (alarm_id,))
        events = await cur.fetchall()
    return events, await alarm_audit(conn, alarm_id)


async def audit(conn: AsyncConnection, p: Principal | None, by: str | None, action: str, target: str,
                detail: dict[str, Any], *, unit: str | None = None, token_name: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (unit_code, token_name, by, action, target, detail) VALUES (%s,%s,%s,%s,%s,%s)",
        (unit or (p.unit if p else ""), token_name if token_name is not None else (p.name if p else ""), by, action,
         target, json.dumps(detail, ensure_ascii=False, default=str)))


async def readings(conn: AsyncConnection, sensor_id: int, start: datetime, end: datetime) -> tuple[str, list[dict]]:
    """Raw readings for spans up to 6 h, else the 1-minute (≤ 7 d) or 1-hour rollups."""
    span = end - start
    if span <= timedelta(hours=6):
        sql, res = ("SELECT ts, value, quality FROM readings WHERE sensor_id = %s AND ts >= %s AND ts < %s"
                    f" ORDER BY ts LIMIT {MAX_POINTS}"), "raw"
    else:
        table, res = ("readings_1m", "1m") if span <= timedelta(days=7) else ("readings_1h", "1h")
        sql = (f"SELECT bucket AS ts, avg_value AS value, min_value AS min, max_value AS max FROM {table}"
               f" WHERE sensor_id = %s AND bucket >= %s AND bucket < %s ORDER BY bucket LIMIT {MAX_POINTS}")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, (sensor_id, start, end))
        return res, await cur.fetchall()


async def backfills(conn: AsyncConnection, sensor_id: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The backfills (late arrivals) of one sensor that overlap [start, end), oldest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT start_ts AS start, end_ts AS end, received_at, n FROM reading_backfills"
                          " WHERE sensor_id = %s AND end_ts >= %s AND start_ts < %s ORDER BY start_ts LIMIT 1000",
                          (sensor_id, start, end))
        return await cur.fetchall()


async def latest_reading(conn: AsyncConnection, sensor_id: int) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT ts, value, quality FROM readings WHERE sensor_id = %s ORDER BY ts DESC LIMIT 1",
                          (sensor_id,))
        return await cur.fetchone()


async def enterprises(conn: AsyncConnection, codes: list[str]) -> list[dict[str, Any]]:
    """Each enterprise's state, gateway status and measured clock offset, open alarms and the worst
    open severity."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT u.code, u.name, u.parent_code AS town, u.state, u.state_since, u.state_by,"
            " g.online, g.since AS online_since, c.offset_s AS clock_offset_s, c.measured_at AS clock_measured_at,"
            " (SELECT count(*) FROM alarms a WHERE a.enterprise_code = u.code AND a.state <> 'closed') AS open_alarms,"
            f" (SELECT a.severity FROM alarms a WHERE a.enterprise_code = u.code AND a.state <> 'closed'"
            f"  ORDER BY {SEVERITY_ORDER} DESC LIMIT 1) AS worst,"
            " EXISTS (SELECT 1 FROM alarms a WHERE a.enterprise_code = u.code AND a.state <> 'closed'"
            "  AND a.rule IN ('comm_loss', 'stale')) AS stale"
            " FROM units u LEFT JOIN gateway_status g ON g.enterprise_code = u.code"
            " LEFT JOIN gateway_clocks c ON c.enterprise_code = u.code"
            " WHERE u.code = ANY(%s) ORDER BY u.code", (codes,))
        return await cur.fetchall()


async def shift_summary(conn: AsyncConnection, codes: list[str], since: datetime, until: datetime,
                        unit: str) -> dict[str, Any]:
    """交接班: raised and resolved in [since, until), what is open now, and the handovers recorded."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT a.severity, count(*) AS n FROM alarms a WHERE a.enterprise_code = ANY(%s)"
                          " AND a.raised_at >= %s AND a.raised_at < %s GROUP BY 1", (codes, since, until))
        raised = {r["severity"]: r["n"] for r in await cur.fetchall()}
        await cur.execute(ALARM_SQL + f" WHERE a.enterprise_code = ANY(%s) AND a.state <> 'closed'"
                          f" ORDER BY {SEVERITY_ORDER} DESC, a.raised_at", (codes,))
        still_open = await cur.fetchall()
        await cur.execute(ALARM_SQL + " WHERE a.enterprise_code = ANY(%s) AND a.resolved_at >= %s"
                          " AND a.resolved_at < %s ORDER BY a.resolved_at", (codes, since, until))
        resolved = await cur.fetchall()
        await cur.execute("SELECT id, ts, unit_code AS unit, handed_over_by, taken_over_by, note FROM handovers"
                          " WHERE ts >= %s AND ts < %s AND unit_code = %s ORDER BY ts",
                          (since, until, unit))
        handovers = await cur.fetchall()
    return {"raised": raised, "open": still_open, "resolved": resolved, "handovers": handovers}


async def record_handover(conn: AsyncConnection, unit: str, ts: datetime, shift_start: datetime, by: str,
                          to: str, note: str | None) -> int:
    cur = await conn.execute(
        "INSERT INTO handovers (ts, unit_code, shift_start, handed_over_by, taken_over_by, note)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id", (ts, unit, shift_start, by, to, note))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])
