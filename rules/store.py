"""Alarms in the database: every transition an ``alarm_events`` row, the ``alarms`` row kept current.

In the same transaction as any change, ``NOTIFY hazardwatch_alarms, '<id>'`` tells listeners
(the duty-room board) to refresh that alarm.
"""

from __future__ import annotations

import json
from collections.abc import Container, Sequence
from typing import Any

from psycopg import AsyncConnection

from park.types import AlarmEventKind as K
from park.types import Severity
from rules.lifecycle import ACTIVE_ACKED, ACTIVE_UNACKED, Alarm, Transition

NOTIFY_CHANNEL = "hazardwatch_alarms"


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, ensure_ascii=False, default=str)


async def persist(conn: AsyncConnection, transitions: Sequence[Transition], bind: Any,
                  fresh: Container[int] = frozenset()) -> None:
    """Write ``transitions`` (in order) inside the caller's transaction; ``bind(alarm, id)`` names new rows.

    ``fresh`` are ids the caller gave new alarms beforehand (drawn from the id sequence, so an alarm
    has its id — and its messages their keys — while the database is away): their rows are inserted
    with that id, once."""
    touched: set[int] = set()
    inserted: set[int] = set()
    for t in transitions:
        a = t.alarm
        if a.rule == "flood":
            continue  # park/enterprise flood marks are not alarms of their own
        if a.alarm_id is not None and a.alarm_id in fresh and a.alarm_id not in inserted:
            inserted.add(a.alarm_id)
            await conn.execute(
                "INSERT INTO alarms (id, dedup_key, sensor_id, enterprise_code, tag, rule, severity, state, raised_at,"
                " value, limit_value, message, detail, flood)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (a.alarm_id, a.key, a.sensor_id, a.enterprise, a.tag, a.rule, a.severity.value, a.state, a.raised_at,
                 a.value, a.limit, a.message, _json(a.detail), a.flood),
            )
        if a.alarm_id is None:
            cur = await conn.execute(
                "INSERT INTO alarms (dedup_key, sensor_id, enterprise_code, tag, rule, severity, state, raised_at,"
                " value, limit_value, message, detail, flood)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (a.key, a.sensor_id, a.enterprise, a.tag, a.rule, a.severity.value, a.state, a.raised_at, a.value,
                 a.limit, a.message, _json(a.detail), a.flood),
            )
            row = await cur.fetchone()
            assert row is not None
            bind(a, int(row[0]))
        assert a.alarm_id is not None
        sets = ["state = %s", "severity = %s", "value = %s", "limit_value = %s", "message = %s",
                "suppressed = %s", "flood = %s", "detail = %s", "updated_at = %s"]
        args: list[Any] = [a.state, a.severity.value, a.value, a.limit, a.message, a.suppressed, a.flood,
                           _json(a.detail), t.ts]
        if t.kind is K.ACKED:
            sets += ["acked_at = %s", "acked_by = %s", "ack_note = %s"]
            args += [t.ts, t.by, t.detail.get("note")]
        elif t.kind is K.CLEARED:
            sets.append("cleared_at = %s")
            args.append(t.ts)
        elif t.kind is K.RESOLVED:
            sets += ["resolved_at = %s", "resolved_by = %s", "cause = %s", "action = %s",
                     "acked_at = coalesce(acked_at, %s)", "acked_by = coalesce(acked_by, %s)"]
            args += [t.ts, t.by, t.detail.get("cause"), t.detail.get("action"), t.ts, t.by]
        elif t.kind in (K.SHELVED, K.UNSHELVED):
            sets += ["shelved_until = %s", "shelved_by = %s", "shelve_reason = %s"]
            args += [a.shelved_until, t.by if t.kind is K.SHELVED else None, t.detail.get("reason")]
        await conn.execute(f"UPDATE alarms SET {', '.join(sets)} WHERE id = %s", (*args, a.alarm_id))
        await conn.execute(
            "INSERT INTO alarm_events (ts, alarm_id, kind, severity, value, limit_value, by, message, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (t.ts, a.alarm_id, t.kind.value, a.severity.value, a.value, a.limit, t.by, a.message,
             _json(t.detail)),
        )
        touched.add(a.alarm_id)
    for alarm_id in touched:
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(alarm_id)))


async def load_open(conn: AsyncConnection) -> list[Alarm]:
    """Every open alarm, as the core keeps it (for a restart)."""
    cur = await conn.execute(
        "SELECT id, dedup_key, rule, enterprise_code, severity, raised_at, sensor_id, tag, value, limit_value,"
        " message, state, acked_by, shelved_until, suppressed, flood, detail, cleared_at"
        " FROM alarms WHERE state <> 'closed' ORDER BY id"
    )
    out = []
    for r in await cur.fetchall():
        detail = r[16] or {}
        out.append(Alarm(
            key=r[1], rule=r[2], enterprise=r[3], severity=Severity(r[4]), raised_at=r[5], sensor_id=r[6],
            tag=r[7], value=r[8], limit=r[9], message=r[10], state=r[11],
            condition=r[11] in (ACTIVE_UNACKED, ACTIVE_ACKED), latching=bool(detail.get("latching", False)),
            acked_by=r[12], shelved_until=r[13], suppressed=r[14], flood=r[15], alarm_id=r[0], detail=detail,
        ))
    return out
