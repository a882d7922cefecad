"""Retention and rollups for databases that do not run them themselves.

With the full TimescaleDB edition, policies (retention, compression, continuous aggregates) do
the work and :func:`configure_policies` only sets the retention interval. With the Apache
edition or plain PostgreSQL the service calls :func:`run_maintenance` periodically: it drops
old data (``drop_chunks`` on hypertables, batched ``DELETE`` on plain tables) and brings
``readings_1m`` / ``readings_1h`` up to date, so the same queries work on all three.

A rollup pass costs what it re-reads, so it re-reads only what can have changed since the last one:
the recent readings (from the watermark less ``late_after``, the slowest gateway clock's offset and a
margin: readings that arrive on time or a little late) and, for each sensor that received a backfill
since, the buckets its late readings fall in (the ingest stage's ``reading_backfills`` marks,
whatever their age). A ``full`` pass (the service's first after it starts) re-reads the last
:data:`ROLLUP_LOOKBACK` whole, for marks a crash lost before they were written. Re-reading a fixed
two hours every pass cost up to 360 million rows a pass at 50,000 readings/s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import AsyncConnection

from park.db.migrate import Edition
from park.site import Retention

# A full pass (the first after start-up) re-reads this far back.
ROLLUP_LOOKBACK = timedelta(hours=2)
# An incremental pass re-reads readings from the watermark less late_after, the slowest gateway
# clock and this margin (a reading received up to late_after after its time on the gateway's clock is
# not marked as a backfill), at most ROLLUP_LOOKBACK ...
LIVE_MARGIN = timedelta(minutes=1)
# ... and the sensors whose backfill marks were received from the watermark less this (marks are
# written in bulk a few seconds after their readings' commit; a mark held longer, over a database
# outage, is older than the watermark only if a pass succeeded meanwhile).
MARKS_MARGIN = timedelta(minutes=10)
# The recent readings are rolled up this much at a time.
SLICE = timedelta(minutes=1)
_DELETE_BATCH = 50_000


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    readings_dropped: int
    rejects_deleted: int
    rollup_rows: int
    rolled_from: datetime | None
    rolled_to: datetime | None


async def configure_policies(conn: AsyncConnection, edition: Edition, retention: Retention) -> None:
    """With the full edition, (re)set the retention policy from the site file."""
    if edition is not Edition.FULL:
        return
    async with conn.transaction():
        await conn.execute("SELECT remove_retention_policy('readings', if_exists => true)")
        await conn.execute(
            "SELECT add_retention_policy('readings', drop_after => %s::interval)", (retention.readings,)
        )


async def run_maintenance(
    conn: AsyncConnection, edition: Edition, retention: Retention, now: datetime, *,
    late_after: timedelta = timedelta(minutes=2), full: bool = True, pause: float = 0.0,
) -> MaintenanceReport:
    """One pass of retention and rollups; safe to run at any interval, idempotent.

    ``late_after``: the site's ``alarm_management.backfill_after`` (readings later than this are marked
    as backfills); ``full=False``: re-read only what changed since the last pass (module docstring);
    ``pause``: rest this many times as long as each minute's rollup took before the next (the service
    rests as long as it worked, so a pass never holds a core of the database for long)."""
    dropped = 0
    rejects = 0
    rolled = 0
    start: datetime | None = None
    end: datetime | None = None
    cutoff = now - retention.readings
    if edition is Edition.APACHE:
        async with conn.transaction():
            cur = await conn.execute("SELECT count(*) FROM drop_chunks('readings', older_than => %s)", (cutoff,))
            dropped = (await cur.fetchone() or [0])[0]
    elif edition is Edition.PLAIN:
        dropped = await _delete_batched(conn, "readings", "ts", cutoff)
    rejects = await _delete_batched(conn, "rejects", "received_at", now - retention.rejects)
    if edition is not Edition.FULL:
        async with conn.transaction():
            cur = await conn.execute("SELECT value FROM maintenance_state WHERE key = 'rollup_watermark'")
            row = await cur.fetchone()
            mark: datetime = min(row[0], now) if row else now - ROLLUP_LOOKBACK
            whole = full or not row
            if whole:
                start = marks_since = mark - ROLLUP_LOOKBACK
            else:
                # a gateway whose clock is slow stamps its live readings that much earlier, unmarked
                cur = await conn.execute("SELECT coalesce(max(-offset_s), 0) FROM gateway_clocks")
                slow = timedelta(seconds=max(0.0, float((await cur.fetchone() or [0])[0])))
                start = mark - min(late_after + LIVE_MARGIN + slow, ROLLUP_LOOKBACK)
                marks_since = mark - MARKS_MARGIN
        end = now
        # hours from the minutes just brought up to date, except in a whole pass (minutes before its
        # start may never have been rolled): re-reading an hour of raw readings every pass would
        # cost what re-reading the fixed two hours did
        rolled += await _roll_up(conn, "readings_1m", "1 minute", _FROM_READINGS, marks_since, start, end, SLICE, pause)
        rolled += await _roll_up(conn, "readings_1h", "1 hour", _FROM_READINGS if whole else _FROM_MINUTES,
                                 marks_since, start, end, None, pause)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO maintenance_state (key, value) VALUES ('rollup_watermark', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (end,),
            )
            await conn.execute("DELETE FROM readings_1m WHERE bucket < %s", (now - retention.readings,))
    return MaintenanceReport(dropped, rejects, rolled, start, end)


async def _roll_up(conn: AsyncConnection, table: str, width: str, src: dict[str, str], marks_since: datetime,
                   start: datetime, end: datetime, step: timedelta | None, pause: float) -> int:
    """The marked buckets older than ``start``, then the recent ones a ``step`` at a time (one statement
    when None), each in a transaction of its own (upserts: a pass cut short is done again whole by the
    next), resting ``pause`` × as long as a step took. The rows written."""
    async with conn.transaction():
        cur = await conn.execute(_ROLLUP_MARKED.format(table=table, width=width, **src), (marks_since, start))
        rolled = cur.rowcount
    a = start
    while a < end:
        b = min(a + step, end) if step else end
        t0 = time.monotonic()
        async with conn.transaction():
            cur = await conn.execute(_ROLLUP_RECENT.format(table=table, width=width, **src), (a, b))
            rolled += cur.rowcount
        if pause and b < end:
            await asyncio.sleep((time.monotonic() - t0) * pause)
        a = b
    return rolled


_UPSERT = (" GROUP BY 1, 2 ON CONFLICT (sensor_id, bucket) DO UPDATE SET avg_value = EXCLUDED.avg_value,"
           " min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value, n = EXCLUDED.n")
# what a bucket is made of: readings, or the minute buckets (exact: the mean weighted by the count)
_FROM_READINGS = {"src": "readings", "t": "ts", "ok": "r.quality < 2",
                  "aggs": "avg(r.value), min(r.value), max(r.value), count(*)"}
_FROM_MINUTES = {"src": "readings_1m", "t": "bucket", "ok": "true",
                 "aggs": "sum(r.avg_value * r.n) / sum(r.n), min(r.min_value), max(r.max_value), sum(r.n)"}
# the buckets from start to end
_ROLLUP_RECENT = (
    "INSERT INTO {table} (bucket, sensor_id, avg_value, min_value, max_value, n)"
    " SELECT date_bin(INTERVAL '{width}', r.{t}, TIMESTAMPTZ 'epoch'), r.sensor_id, {aggs} FROM {src} r"
    " WHERE {ok} AND r.{t} >= date_bin(INTERVAL '{width}', %s::timestamptz, TIMESTAMPTZ 'epoch') AND r.{t} < %s"
    + _UPSERT
)
# the whole buckets of each sensor's late readings marked since marks_since, older than start (the
# recent buckets are the other statement's): one span per sensor, from its oldest to its newest mark
_ROLLUP_MARKED = (
    "INSERT INTO {table} (bucket, sensor_id, avg_value, min_value, max_value, n)"
    " SELECT date_bin(INTERVAL '{width}', r.{t}, TIMESTAMPTZ 'epoch'), r.sensor_id, {aggs} FROM {src} r JOIN ("
    "  SELECT sensor_id, date_bin(INTERVAL '{width}', min(start_ts), TIMESTAMPTZ 'epoch') AS s, max(end_ts) AS e"
    "  FROM reading_backfills WHERE received_at >= %s GROUP BY sensor_id) m ON r.sensor_id = m.sensor_id"
    " WHERE {ok} AND r.{t} >= m.s AND r.{t} < date_bin(INTERVAL '{width}', m.e, TIMESTAMPTZ 'epoch')"
    " + INTERVAL '{width}' AND r.{t} < date_bin(INTERVAL '{width}', %s::timestamptz, TIMESTAMPTZ 'epoch')"
    + _UPSERT
)


async def _delete_batched(conn: AsyncConnection, table: str, column: str, cutoff: datetime) -> int:
    total = 0
    while True:
        async with conn.transaction():
            cur = await conn.execute(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
                f" WHERE {column} < %s LIMIT {_DELETE_BATCH}))",
                (cutoff,),
            )
            n = cur.rowcount
        total += n
        if n < _DELETE_BATCH:
            return total
