"""Overlapped writes (issue 16, item 1): several COPY transactions in flight, acknowledgements strictly
after the commit that holds each message's readings and in arrival order, exactly once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from ingest.transport import Message
from ingest.writer import write_readings
from park.types import ReadingBatch
from tests.ingest_helpers import TAGS, Publisher, prepare, running_ingest, settings_for, until, wait_rows

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)  # one chunk holds T0 … T0+1h


def batch(i: int) -> str:
    return json.dumps({"ts": int((T0 + timedelta(seconds=i)).timestamp() * 1000),
                       "points": [{"tag": t, "value": i} for t in TAGS]})


async def count(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM readings")
    return (await cur.fetchone())[0]  # type: ignore[index, no-any-return]


def test_later_work_commits_meanwhile_but_is_acknowledged_only_after_the_earlier(  # type: ignore[no-untyped-def]
        mqtt_url: str, topic_prefix: str, db_url: str) -> None:
    """Timeline: batch 0's transaction is held up (another session holds one of its keys); batches
    1–20 are committed by the other writers meanwhile, yet nothing is acknowledged; released, batch
    0 commits and all 21 are acknowledged, in the order they arrived."""
    db = db_url
    settings = settings_for(mqtt_url, db, topic_prefix)
    settled: list[int] = []

    async def go() -> None:
        await prepare(db)
        async with running_ingest(settings, writers=3) as svc, \
                await psycopg.AsyncConnection.connect(db) as blocker, \
                await psycopg.AsyncConnection.connect(db, autocommit=True) as probe:
            real_settle = svc.transport.settle

            def settle(msgs: list[Message]) -> int:  # observe, then do the real thing
                settled.extend(json.loads(m[1])["points"][0]["value"] for m in msgs)
                return real_settle(msgs)

            svc.transport.settle = settle  # type: ignore[method-assign]
            cur = await blocker.execute("SELECT id FROM sensors WHERE tag = %s", (TAGS[0],))
            sid = (await cur.fetchone())[0]  # type: ignore[index]
            # the chunk exists beforehand: a chunk made by an open transaction would hold up every writer
            await probe.execute("INSERT INTO readings (ts, sensor_id, value, quality) SELECT %s, id, 0, 0"
                                " FROM sensors WHERE tag = 'LT-1'", (T0 + timedelta(minutes=30),))
            await blocker.execute("INSERT INTO readings (ts, sensor_id, value, quality) VALUES (%s, %s, 0, 0)",
                                  (T0, sid))  # uncommitted: batch 0's COPY waits on this key
            pub = Publisher(mqtt_url)
            try:
                pub.publish(f"{topic_prefix}/E1/data", batch(0))
                await until(lambda: svc.metrics.writes_in_flight._value.get() == 1 and not svc._pending,
                            what="batch 0 being written")
                pub.publish_many([(f"{topic_prefix}/E1/data", batch(i)) for i in range(1, 21)])
                await until(lambda: svc.metrics.batches._value.get() >= 1, what="a later transaction committed")
                rows, deadline = 0, asyncio.get_running_loop().time() + 30
                while rows < 20 * len(TAGS) + 1 and asyncio.get_running_loop().time() < deadline:
                    rows = await count(probe)
                    await asyncio.sleep(0.02)
                assert rows == 20 * len(TAGS) + 1  # the other writers did not wait for batch 0 …
                assert settled == []  # … but nothing is acknowledged before it
                await blocker.rollback()
                assert await wait_rows(db, 21 * len(TAGS) + 1) == 21 * len(TAGS) + 1
                await until(lambda: len(settled) == 21, what="all acknowledged")
            finally:
                pub.close()

    asyncio.run(go())
    assert settled == list(range(21))


def test_overlapping_writers_and_redelivered_duplicates_store_each_reading_once(  # type: ignore[no-untyped-def]
        mqtt_url: str, topic_prefix: str, db_url: str) -> None:
    """Every batch published twice, interleaved, with three writers: transactions meet on the same
    keys (waits, deadlocks, the duplicate fallback) and each (sensor, ts) is stored once."""
    settings = settings_for(mqtt_url, db_url, topic_prefix)
    n = 400

    async def go() -> None:
        await prepare(db_url)
        async with running_ingest(settings, writers=3) as svc:
            pub = Publisher(mqtt_url)
            try:
                msgs: list[tuple[str, bytes | str]] = []
                for i in range(n):
                    msgs.append((f"{topic_prefix}/E1/data", batch(i)))
                    msgs.append((f"{topic_prefix}/E1/data", batch(max(0, i - 37))))
                await asyncio.to_thread(pub.publish_many, msgs)
            finally:
                pub.close()
            assert await wait_rows(db_url, n * len(TAGS)) == n * len(TAGS)
            await until(lambda: svc.metrics.stored._value.get() + svc.metrics.duplicates._value.get()
                        == 2 * n * len(TAGS), what="every message written")
            assert svc.metrics.stored._value.get() == n * len(TAGS)
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            cur = await conn.execute("SELECT count(*), count(DISTINCT (sensor_id, ts)) FROM readings")
            assert await cur.fetchone() == (n * len(TAGS), n * len(TAGS))

    asyncio.run(go())


def test_a_reading_twice_in_one_batch_is_stored_once_by_a_second_copy_the_first_arrival_kept(
        db_url: str) -> None:
    """Two messages merged into one batch carry one detector's reading at one instant (a red reading
    and the detector's periodic report): the COPY meets the duplicate key, the batch goes again by
    COPY with each reading once (not through the slower staging table), the first arrival kept. A
    batch that meets a reading already stored still goes through the staging table."""
    asyncio.run(prepare(db_url))
    ts = int(T0.timestamp() * 1_000_000)
    with psycopg.connect(db_url) as conn:
        sids = [r[0] for r in conn.execute("SELECT id FROM sensors ORDER BY id LIMIT 3").fetchall()]
        # sensor 0 at ts comes twice (60 first, then 0), sensor 1 at ts and ts+1 s, sensor 2 once
        rows = [(sids[0], ts, 60.0), (sids[1], ts, 1.0), (sids[0], ts, 0.0), (sids[2], ts, 2.0),
                (sids[1], ts + 1_000_000, 3.0)]
        batch = ReadingBatch(np.array([r[0] for r in rows], np.int32), np.array([r[1] for r in rows], np.int64),
                             np.array([r[2] for r in rows], np.float64), np.zeros(len(rows), np.int8))
        with conn.transaction():
            assert write_readings(conn, batch) == (4, True)
        stage = "SELECT to_regclass('pg_temp._readings_stage') IS NOT NULL"
        assert conn.execute(stage).fetchone() == (False,), "went through the staging table"
        got = conn.execute("SELECT sensor_id, extract(epoch FROM ts)::bigint, value FROM readings"
                           " ORDER BY 1, 2").fetchall()
        assert got == sorted([(s, t // 1_000_000, v) for s, t, v in rows if v != 0.0]), "the first arrival kept"
        with conn.transaction():  # readings already stored: nothing new, by the staging table
            assert write_readings(conn, batch) == (0, True)
        assert conn.execute(stage).fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (4,)
