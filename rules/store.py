"""Alarms in the database: every transition an ``alarm_events`` row, the ``alarms`` row kept current;
and the rule stage's learned state (``rules_state``).

Each ``alarm_events`` row is written from the transition's own frozen copy of the alarm (severity,
state, value, limit, facts at that event), so when a raise and an upgrade land together the raise
row says what was raised. Messages are rendered here, at the edge, by park.wording.

In the same transaction as any change, ``NOTIFY hazardwatch_alarms, '<id>'`` tells listeners
(the duty-room board) to refresh that alarm.
"""

from __future__ import annotations

import json
from collections.abc import Container, Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from park.types import AlarmEventKind as K
from park.types import GatewayClock, Severity
from park.wording import alarm_text
from rules.lifecycle import ACTIVE_ACKED, ACTIVE_UNACKED, Alarm, Transition

NOTIFY_CHANNEL = "hazardwatch_alarms"


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, ensure_ascii=False, default=str)


def message(t: Transition) -> str:
    """The sentence for this event, from its own facts, value and limit."""
    return alarm_text(t.alarm.rule, t.facts, t.value, t.limit)


async def persist(conn: AsyncConnection, transitions: Sequence[Transition], bind: Any,
                  fresh: Container[int] = frozenset()) -> None:
    """Write ``transitions`` (in order) inside the caller's transaction; ``bind(alarm, id)`` names new rows.

    ``fresh`` are ids the caller gave new alarms beforehand (drawn from the id sequence, so an alarm
    has its id — and its messages their keys — while the database is away): their rows are inserted
    with that id, once.

    Pipelined: a burst of thousands of transitions (a gateway's sensors all going stale) is sent
    without a round trip per statement, so the rule stage is not held for seconds storing it."""
    async with conn.pipeline():
        await persist_statements(conn, transitions, bind, fresh)


async def persist_statements(conn: AsyncConnection, transitions: Sequence[Transition], bind: Any,
                             fresh: Container[int]) -> None:
    """:func:`persist`'s statements, on the caller's pipeline (e.g. :func:`park.db.pool.one_round_trip`):
    none of their answers is waited for here unless a new alarm still needs an id."""
    touched: dict[int, None] = {}  # in order
    inserted: set[int] = set()
    # new alarms without an id yet get theirs in one query, not one INSERT … RETURNING each
    unnamed = list({id(t.alarm): t.alarm for t in transitions
                    if t.alarm.alarm_id is None and t.alarm.rule != "flood"}.values())
    if unnamed:
        cur = await conn.execute("SELECT nextval(pg_get_serial_sequence('alarms', 'id')) FROM generate_series(1, %s)",
                                 (len(unnamed),))
        ids = [int(r[0]) for r in await cur.fetchall()]
        for a, new_id in zip(unnamed, ids, strict=True):
            bind(a, new_id)
    fresh_rows: list[tuple[Any, ...]] = []
    updates: list[tuple[str, tuple[Any, ...]]] = []
    events: list[tuple[Any, ...]] = []
    for t in transitions:
        a = t.alarm
        if a.rule == "flood":
            continue  # park/enterprise flood marks are not alarms of their own
        text = message(t)
        # the row is inserted (once) for an id given beforehand, and with every raise: should this
        # transaction fail, a retry of the same transitions inserts the row it rolled back
        if a.alarm_id is not None and (a.alarm_id in fresh or t.kind is K.RAISED) and a.alarm_id not in inserted:
            inserted.add(a.alarm_id)
            fresh_rows.append((a.alarm_id, a.key, a.sensor_id, a.enterprise, a.tag, a.rule, t.severity.value, t.state,
                               a.raised_at, t.value, t.limit, text, _json(t.facts), a.flood,
                               a.noticed_at or t.noticed_at))
        assert a.alarm_id is not None
        # the alarms row shows the alarm as it is now; the event row as it was at the event
        sets = ["state = %s", "severity = %s", "value = %s", "limit_value = %s", "message = %s",
                "suppressed = %s", "flood = %s", "detail = %s", "updated_at = %s"]
        args: list[Any] = [a.state, a.severity.value, a.value, a.limit, alarm_text(a.rule, a.detail, a.value, a.limit),
                           a.suppressed, a.flood, _json(a.detail), t.ts]
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
        updates.append((f"UPDATE alarms SET {', '.join(sets)} WHERE id = %s", (*args, a.alarm_id)))
        events.append((t.ts, a.alarm_id, t.kind.value, t.severity.value, t.value, t.limit, t.by, text,
                       _json(t.facts | t.detail), t.state, t.noticed_at))
        touched[a.alarm_id] = None
    # a burst written as a few statements each run over many rows: new rows first, then every
    # update in its order (runs of the same statement together), then the events in their order
    async with conn.cursor() as cur:
        if fresh_rows:
            await cur.executemany(
                "INSERT INTO alarms (id, dedup_key, sensor_id, enterprise_code, tag, rule, severity, state, raised_at,"
                " value, limit_value, message, detail, flood, noticed_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                fresh_rows)
        i = 0
        while i < len(updates):
            j = i
            while j < len(updates) and updates[j][0] == updates[i][0]:
                j += 1
            await cur.executemany(updates[i][0], [u[1] for u in updates[i:j]])
            i = j
        if events:
            await cur.executemany(
                "INSERT INTO alarm_events (ts, alarm_id, kind, severity, value, limit_value, by, message, detail,"
                " state, noticed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", events)
        if touched:
            await cur.execute("SELECT pg_notify(%s, x::text) FROM unnest(%s::bigint[]) AS x",
                              (NOTIFY_CHANNEL, list(touched)))


async def load_open(conn: AsyncConnection) -> list[Alarm]:
    """Every open alarm, as the core keeps it (for a restart)."""
    cur = await conn.execute(
        "SELECT id, dedup_key, rule, enterprise_code, severity, raised_at, sensor_id, tag, value, limit_value,"
        " state, acked_by, shelved_until, suppressed, flood, detail, noticed_at"
        " FROM alarms WHERE state <> 'closed' ORDER BY id"
    )
    out = []
    for r in await cur.fetchall():
        detail = r[15] or {}
        out.append(Alarm(
            key=r[1], rule=r[2], enterprise=r[3], severity=Severity(r[4]), raised_at=r[5], sensor_id=r[6],
            tag=r[7], value=r[8], limit=r[9], state=r[10],
            condition=r[10] in (ACTIVE_UNACKED, ACTIVE_ACKED), latching=bool(detail.get("latching", False)),
            acked_by=r[11], shelved_until=r[12], suppressed=r[13], flood=r[14], alarm_id=r[0], detail=detail,
            noticed_at=r[16],
        ))
    return out


# One rules_state row holds at most this much of a blob. libpq grows a connection's output buffer to
# the largest message it has sent and keeps it while the connection lives: a snapshot of megabytes in
# one parameter left every connection of the pool holding that much, one more each minute (issue 16).
PART_BYTES = 128 * 1024


async def save_state(conn: AsyncConnection, blobs: dict[str, bytes], now: datetime) -> None:
    """Keep the rule stage's learned state, each part replaced: a blob in rows of at most ``PART_BYTES``
    (``name``, then ``name/1``, ``name/2`` …), so no statement is larger than that. Run it inside
    a transaction: the old rows of a part go before the new ones come."""
    rows = [(name if i == 0 else f"{name}/{i}", now, blob[at:at + PART_BYTES])
            for name, blob in blobs.items() for i, at in enumerate(range(0, max(1, len(blob)), PART_BYTES))]
    async with conn.cursor() as cur:
        await cur.execute("DELETE FROM rules_state WHERE split_part(name, '/', 1) = ANY(%s)", (list(blobs),))
        await cur.executemany("INSERT INTO rules_state (name, saved_at, data) VALUES (%s, %s, %s)", rows)


async def save_clocks(conn: AsyncConnection, clocks: Sequence[GatewayClock]) -> None:
    """Keep each gateway's latest measured clock offset (one row per enterprise, never older over newer)."""
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO gateway_clocks (enterprise_code, offset_s, measured_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (enterprise_code) DO UPDATE SET offset_s = excluded.offset_s,"
            " measured_at = excluded.measured_at WHERE gateway_clocks.measured_at <= excluded.measured_at",
            [(c.enterprise, c.offset_s, c.ts) for c in clocks],
        )


async def load_state(conn: AsyncConnection) -> dict[str, bytes]:
    """The learned state as ``save_state`` kept it, each blob whole again (one row per blob before parts)."""
    cur = await conn.execute("SELECT name, data FROM rules_state")
    parts: dict[str, dict[int, bytes]] = {}
    for name, data in await cur.fetchall():
        base, _, k = name.partition("/")
        parts.setdefault(base, {})[int(k or 0)] = bytes(data)
    return {name: b"".join(p[k] for k in sorted(p)) for name, p in parts.items()}
