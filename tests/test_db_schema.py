"""Schema and registry on real PostgreSQL and real TimescaleDB (the db_url fixture runs both)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from park.db.maintenance import run_maintenance
from park.db.migrate import Edition, migrate
from park.db.registry import sync_registry
from park.site import Retention
from park.sitefile import parse_site
from tests.site_helpers import MINIMAL_SITE, variant

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


async def _connect(url: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(url)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_migrations_run_twice_and_pick_the_edition(db_url: str) -> None:
    async def go() -> None:
        async with await _connect(db_url) as conn:
            edition, applied = await migrate(conn)
            assert applied and applied[0] == "0001_foundation.sql"
            again_edition, again = await migrate(conn)
            assert again == [] and again_edition is edition
            cur = await conn.execute("SELECT count(*) FROM schema_migrations")
            assert (await cur.fetchone())[0] == len(applied)
            if "5433" in db_url:
                assert edition is Edition.APACHE
                cur = await conn.execute(
                    "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1"
                )
                assert [r[0] for r in await cur.fetchall()] == ["alarm_events", "readings"]
            else:
                assert edition is Edition.PLAIN
            for table in ("readings", "sensors", "alarms", "alarm_events", "notifications", "rejects",
                          "readings_1m", "readings_1h"):
                await conn.execute(f"SELECT * FROM {table} LIMIT 0")

    run(go())


def test_concurrent_migrators_do_not_race(db_url: str) -> None:
    async def one() -> list[str]:
        async with await _connect(db_url) as conn:
            return (await migrate(conn))[1]

    async def go() -> None:
        results = await asyncio.gather(one(), one(), one())
        assert sorted(len(r) for r in results)[:2] == [0, 0]  # exactly one applied them
        assert max(len(r) for r in results) >= 1

    run(go())


def test_registry_sync_updates_in_place_and_keeps_history(db_url: str) -> None:
    async def go() -> None:
        async with await _connect(db_url) as conn:
            await migrate(conn)
            park1 = await sync_registry(conn, parse_site(MINIMAL_SITE, environ={}))
            ids1 = {s.tag: s.id for s in park1.sensors}
            await conn.execute(
                "INSERT INTO readings (ts, sensor_id, value) VALUES (%s, %s, 1.5)", (NOW, ids1["AT-2002"])
            )
            await conn.commit()
            # the duty room stops the enterprise through the API; a file edit elsewhere must not undo it
            await conn.execute("UPDATE units SET state = 'stopped' WHERE code = 'E001'")
            await conn.commit()
            edited = variant("name: T-101 液位", "name: T-101 液位计",
                             variant("{tag: AT-2002, kind: gas_combustible, unit: \"%LEL\"}",
                                     "{tag: AT-2003, kind: oxygen}"))
            park2 = await sync_registry(conn, parse_site(edited, environ={}))
            ids2 = {s.tag: s.id for s in park2.sensors}
            assert ids2["LT-1001"] == ids1["LT-1001"] and ids2["AT-2001"] == ids1["AT-2001"]
            cur = await conn.execute("SELECT tag, name, retired_at IS NOT NULL FROM sensors ORDER BY id")
            rows = await cur.fetchall()
            assert [r[0] for r in rows] == ["LT-1001", "AT-2001", "AT-2002", "AT-2003"]  # no duplicates
            assert rows[0][1] == "T-101 液位计" and rows[2][2] is True and rows[3][2] is False
            cur = await conn.execute("SELECT count(*) FROM readings WHERE sensor_id = %s", (ids1["AT-2002"],))
            assert (await cur.fetchone())[0] == 1  # history of a retired sensor stays
            cur = await conn.execute("SELECT state FROM units WHERE code = 'E001'")
            assert (await cur.fetchone())[0] == "stopped"
            # the sensor comes back with its old id; the same file twice changes nothing
            park3 = await sync_registry(conn, parse_site(MINIMAL_SITE, environ={}))
            assert {s.tag: s.id for s in park3.sensors} == ids1
            cur = await conn.execute("SELECT max(updated_at) FROM sensors")
            before = (await cur.fetchone())[0]
            await sync_registry(conn, parse_site(MINIMAL_SITE, environ={}))
            cur = await conn.execute("SELECT max(updated_at), count(*) FROM sensors")
            after, n = await cur.fetchone()
            assert after == before and n == 4
            # the file itself changing the state wins
            await sync_registry(conn, parse_site(
                variant("name: 某某化工有限公司", "name: 某某化工有限公司\n            state: maintenance"),
                environ={}))
            cur = await conn.execute("SELECT state FROM units WHERE code = 'E001'")
            assert (await cur.fetchone())[0] == "maintenance"

    run(go())


def test_retention_and_rollups_give_the_same_answers(db_url: str) -> None:
    async def go() -> None:
        async with await _connect(db_url) as conn:
            edition, _ = await migrate(conn)
            park = await sync_registry(conn, parse_site(MINIMAL_SITE, environ={}))
            sid = park.sensors[0].id
            old = NOW - timedelta(days=40)
            rows = [(NOW - timedelta(minutes=30) + timedelta(seconds=10 * i), sid, float(i % 6), 0) for i in range(180)]
            rows += [(old + timedelta(minutes=i), sid, 1.0, 0) for i in range(10)]
            rows.append((NOW - timedelta(minutes=5, seconds=3), sid, 999.0, 2))  # bad quality stays out of rollups
            async with conn.cursor() as cur, cur.copy("COPY readings (ts, sensor_id, value, quality) FROM STDIN") as cp:
                for r in rows:
                    await cp.write_row(r)
            await conn.commit()
            rep = await run_maintenance(conn, edition, Retention(readings=timedelta(days=30)), NOW)
            await conn.commit()
            assert rep.rollup_rows > 0
            cur = await conn.execute("SELECT count(*) FROM readings WHERE ts < %s", (NOW - timedelta(days=30),))
            assert (await cur.fetchone())[0] == 0
            cur = await conn.execute(
                "SELECT count(*), sum(n), max(max_value) FROM readings_1m WHERE sensor_id = %s", (sid,)
            )
            buckets, n, mx = await cur.fetchone()
            assert (buckets, n, mx) == (30, 180, 5.0)
            cur = await conn.execute("SELECT sum(n) FROM readings_1h WHERE sensor_id = %s", (sid,))
            assert (await cur.fetchone())[0] == 180
            # idempotent: a second pass changes nothing
            await run_maintenance(conn, edition, Retention(readings=timedelta(days=30)), NOW)
            await conn.commit()
            cur = await conn.execute("SELECT sum(n) FROM readings_1m WHERE sensor_id = %s", (sid,))
            assert (await cur.fetchone())[0] == 180

    run(go())


def test_a_later_pass_rereads_the_recent_readings_and_the_marked_backfills_not_the_whole_lookback(
        db_url: str) -> None:
    """A pass after the first re-reads what changed since the watermark: readings arrived on time and
    the buckets of backfill marks, whatever their age — not two hours of readings every time."""
    async def go() -> None:
        async with await _connect(db_url) as conn:
            edition, _ = await migrate(conn)
            park = await sync_registry(conn, parse_site(MINIMAL_SITE, environ={}))
            sid = park.sensors[0].id
            keep = Retention(readings=timedelta(days=30))

            async def store(*rows: tuple[datetime, float]) -> None:
                copy = "COPY readings (ts, sensor_id, value, quality) FROM STDIN"
                async with conn.cursor() as cur, cur.copy(copy) as cp:
                    for ts, v in rows:
                        await cp.write_row((ts, sid, v, 0))
                await conn.commit()

            async def minute(at: datetime) -> tuple[int, float] | None:
                cur = await conn.execute("SELECT n, max_value FROM readings_1m WHERE sensor_id = %s AND bucket = %s",
                                         (sid, at))
                row = await cur.fetchone()
                await conn.commit()
                return None if row is None else (row[0], row[1])

            await store((NOW - timedelta(minutes=1), 1.0))
            await run_maintenance(conn, edition, keep, NOW)  # the first pass: the watermark is NOW
            await conn.commit()
            later = NOW + timedelta(minutes=5)
            hour_ago, day_ago = NOW - timedelta(hours=1), NOW - timedelta(days=1)
            # on time; an hour late and unmarked; a day late and marked (the ingest stage marks backfills)
            ninety_ago = NOW - timedelta(minutes=90)
            await store((later - timedelta(minutes=1), 2.0), (hour_ago, 3.0), (ninety_ago, 6.0),
                        (day_ago, 4.0), (day_ago + timedelta(seconds=10), 5.0), (day_ago + timedelta(minutes=2), 7.0))
            await conn.execute("INSERT INTO reading_backfills (sensor_id, start_ts, end_ts, received_at, n)"
                               " VALUES (%s, %s, %s, %s, 3)", (sid, day_ago, day_ago + timedelta(minutes=2), later))
            await conn.commit()
            await run_maintenance(conn, edition, keep, later, full=False)
            await conn.commit()
            assert await minute(later - timedelta(minutes=1)) == (1, 2.0)
            assert await minute(day_ago) == (2, 5.0)
            # the hour from its minutes: the mean weighted by each minute's count
            cur = await conn.execute("SELECT n, avg_value, max_value FROM readings_1h WHERE sensor_id = %s"
                                     " AND bucket = %s", (sid, day_ago))
            n, avg, mx = await cur.fetchone()
            await conn.commit()
            assert (n, mx) == (3, 7.0) and avg == pytest.approx((4.0 + 5.0 + 7.0) / 3)
            assert await minute(hour_ago) is None  # not re-read: it is neither recent nor marked
            # a gateway whose clock runs an hour slow stamps its live readings an hour back, unmarked
            await conn.execute("INSERT INTO gateway_clocks (enterprise_code, offset_s, measured_at)"
                               " VALUES ('E001', -3800, %s)", (later,))
            await conn.commit()
            await run_maintenance(conn, edition, keep, later + timedelta(minutes=5), full=False)
            await conn.commit()
            assert await minute(hour_ago) == (1, 3.0)
            assert await minute(ninety_ago) is None
            # the service's first pass after a restart re-reads the last two hours whole
            await run_maintenance(conn, edition, keep, later + timedelta(minutes=10), full=True)
            await conn.commit()
            assert await minute(ninety_ago) == (1, 6.0)

    run(go())


def test_one_open_alarm_per_key_is_enforced_by_the_schema(db_url: str) -> None:
    async def go() -> None:
        async with await _connect(db_url) as conn:
            await migrate(conn)
            ins = ("INSERT INTO alarms (dedup_key, enterprise_code, rule, severity, state, raised_at)"
                   " VALUES ('s:1:hh', 'E001', 'threshold', 'red', %s, %s)")
            await conn.execute(ins, ("active_unacked", NOW))
            await conn.commit()
            with pytest.raises(psycopg.errors.UniqueViolation):
                await conn.execute(ins, ("active_unacked", NOW))
            await conn.rollback()
            await conn.execute("UPDATE alarms SET state = 'closed'")
            await conn.execute(ins, ("active_unacked", NOW))
            await conn.commit()

    run(go())
