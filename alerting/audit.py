"""Who was told what, when, on which channel, with what outcome, and who acknowledged (the regulator's question)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row


async def alarm_audit(conn: AsyncConnection, alarm_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT ts, unit_code AS unit, contact, channel, step, attempt, outcome, detail"
            " FROM notifications WHERE alarm_id = %s ORDER BY ts, id", (alarm_id,))
        attempts = await cur.fetchall()
        await cur.execute(
            "SELECT idempotency_key AS key, unit_code AS unit, contact, channel, step, status, attempts, due_at,"
            " sent_at FROM outbox WHERE alarm_id = %s ORDER BY due_at, id", (alarm_id,))
        messages = await cur.fetchall()
        await cur.execute("SELECT acked_at, acked_by, ack_note, resolved_at, resolved_by, cause, action,"
                          " escalation_level FROM alarms WHERE id = %s", (alarm_id,))
        ack = await cur.fetchone()
    return {"alarm_id": alarm_id, "messages": messages, "attempts": attempts, "acknowledgement": ack}
