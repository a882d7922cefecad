"""Retention and rollups for databases that do not run them themselves.

With the full TimescaleDB edition, policies (retention, compression, continuous aggregates) do
the work and :func:`configure_policies` only sets the retention interval. With the Apache
edition or plain PostgreSQL the service calls :func:`run_maintenance` periodically: it drops
old data (``drop_chunks`` on hypertables, batched ``DELETE`` on plain tables) and brings
``readings_1m`` / ``readings_1h`` up to date, so the same queries work on all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import AsyncConnection

from park.db.migrate import Edition
from park.site import Retention

# Late readings are still folded into rollups this far back on every run.
ROLLUP_LOOKBACK = timedelta(hours=2)
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
    conn: AsyncConnection, edition: Edition, retention: Retention, now: datetime
) -> MaintenanceReport:
    """One pass of retention and rollups; safe to run at any interval, idempotent."""
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
            mark: datetime = row[0] if row else now - ROLLUP_LOOKBACK
            start = min(mark, now) - ROLLUP_LOOKBACK
            end = now
            for table, width in (("readings_1m", "1 minute"), ("readings_1h", "1 hour")):
                cur = await conn.execute(
                    f"INSERT INTO {table} (bucket, sensor_id, avg_value, min_value, max_value, n)"
                    f" SELECT date_bin(INTERVAL '{width}', ts, TIMESTAMPTZ 'epoch') AS b, sensor_id,"
                    "  avg(value), min(value), max(value), count(*)"
                    " FROM readings"
                    f" WHERE quality < 2 AND ts >= date_bin(INTERVAL '{width}', %s::timestamptz, TIMESTAMPTZ 'epoch')"
                    "   AND ts < %s GROUP BY 1, 2"
                    " ON CONFLICT (sensor_id, bucket) DO UPDATE SET avg_value = EXCLUDED.avg_value,"
                    "  min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value, n = EXCLUDED.n",
                    (start, end),
                )
                rolled += cur.rowcount
            await conn.execute(
                "INSERT INTO maintenance_state (key, value) VALUES ('rollup_watermark', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (end,),
            )
            cutoff_roll = now - retention.readings
            await conn.execute("DELETE FROM readings_1m WHERE bucket < %s", (cutoff_roll,))
    return MaintenanceReport(dropped, rejects, rolled, start, end)


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
