"""Which readings arrived as a backfill (断点续传), for the board to mark them: older than
``backfill_after`` on arrival once the gateway's measured clock offset is removed. Pure: the decoder
on explicit arrival times, no clock of its own.

Timeline: E2's gateway runs 10 minutes slow and reports every 5 s for a minute (its offset is
learned); E1 reports live, then flushes readings 40 to 31 minutes old."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import psycopg

from hazardwatch.api import queries
from hazardwatch.api.routes.readings import mark_backfilled
from ingest import service
from ingest.decode import Decoded, Decoder
from ingest.marks import MARK, PendingMarks
from ingest.writer import write_marks
from park.model import Park
from park.types import ReadingBatch, epoch_us, from_epoch_us
from tests.ingest_helpers import TAGS, Publisher, prepare, running_ingest, settings_for, site, wait_rows

S = 1_000_000
T0 = epoch_us(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))


def _batch(dec: Decoder, ent: str, points: list[dict[str, object]], rx: int, ts: int | None = None) -> Decoded:
    out = Decoded()
    doc: dict[str, object] = {"points": points} | ({"ts": ts // 1000} if ts is not None else {})
    dec.decode(out, f"hw/v1/{ent}/data", json.dumps(doc).encode(), rx)
    return out


def test_late_readings_are_marked_per_sensor_and_a_slow_clock_is_not_a_backfill() -> None:
    park = Park.from_site(site())
    dec = Decoder(park)
    lt = park.sensor("E2", "LT-1")
    a0, a1 = park.sensor("E1", "AT-000"), park.sensor("E1", "AT-001")
    assert lt is not None and a0 is not None and a1 is not None
    rx = T0
    for _ in range(13):  # a minute of E2's slow clock: the estimator learns −600 s
        out = _batch(dec, "E2", [{"tag": "LT-1", "value": 5.0}], rx, ts=rx - 600 * S)
        rx += 5 * S
    assert dec.clocks.estimate("E2") == -600.0
    assert _spans(dec, out.batch()) == [], "ten minutes slow is a wrong clock, not a backfill"
    live = _batch(dec, "E1", [{"tag": "AT-000", "value": 3.0}], rx, ts=rx - 20_000)
    assert _spans(dec, live.batch()) == []
    flush = [{"tag": t, "value": 3.0, "ts": (rx - (40 * 60 - k * 60) * S) // 1000}
             for k in range(10) for t in ("AT-001", "AT-000")]
    spans = _spans(dec, _batch(dec, "E1", flush, rx).batch())
    first, last = rx - 40 * 60 * S, rx - 31 * 60 * S
    assert spans == [(a0.id, first, last, 10), (a1.id, first, last, 10)]
    # a minute late is not a backfill (backfill_after: 2 min)
    assert _spans(dec, _batch(dec, "E1", [{"tag": "AT-000", "value": 3.0, "ts": (rx - 60 * S) // 1000}],
                                 rx).batch()) == []


def _spans(dec: Decoder, batch: ReadingBatch) -> list[tuple[int, int, int, int]]:
    """(sensor id, oldest µs, newest µs, count) of the decoder's late marks, as plain tuples."""
    return [(int(r["sid"]), int(r["start"]), int(r["end"]), int(r["n"])) for r in dec.late_marks(batch)]


def _marks(rows: list[tuple[int, int, int, int, int]]) -> npt.NDArray[np.void]:
    return np.array(rows, dtype=MARK)


def test_pending_marks_are_one_per_sensor_whatever_the_writes_and_readings() -> None:
    """Timeline (minutes, arrival in brackets): sensor 7 backfills 0–4 [60] then 5–9 [61] in two
    writes, sensor 9 backfills 0–9 [61]; then a re-sent stretch 2–3 of sensor 7 [62]."""
    pm = PendingMarks(compact_at=3)
    m = 60 * S
    pm.add(_marks([(7, 0, 4 * m, 60 * m, 5)]))
    pm.add(_marks([(9, 0, 9 * m, 61 * m, 10), (7, 5 * m, 9 * m, 61 * m, 5)]))
    pm.add(_marks([(7, 2 * m, 3 * m, 62 * m, 2)]))
    assert len(pm) <= 3, "coalesced in place once past compact_at: bounded by the sensors, not the writes"
    got = pm.take()
    assert got.tolist() == [(7, 0, 9 * m, 62 * m, 12), (9, 0, 9 * m, 61 * m, 10)]
    assert len(pm) == 0 and pm.take().tolist() == []
    # a backlog across a registry: 50 writes of 1,000 sensors each leave 1,000 marks, never 50,000
    for k in range(50):
        pm.add(_marks([(s, k * S, k * S, 70 * m, 1) for s in range(1, 1001)]))
        assert len(pm) <= 2 * 1000 + 1000
    many = pm.take()
    assert len(many) == 1000 and set(many["n"].tolist()) == {50} and set(many["end"].tolist()) == {49 * S}


def test_marks_are_written_off_the_commit_path_coalesced_kept_on_failure_and_on_a_clean_shutdown(
        mqtt_url: str, topic_prefix: str, make_database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Timeline (minutes before now): E1's gateway flushes 40–36 and 35–31 in two messages (two
    commits), then reports live; the marks' first write fails (injected), the second stores them; then
    it flushes 30–26 and the stage shuts down cleanly before its interval comes."""
    monkeypatch.setattr(service, "MARK_EVERY", 3600.0)  # no write of the interval's own during the test
    failures = [psycopg.OperationalError("injected: the marks' write fails once")]

    def flaky(conn: psycopg.Connection, marks: npt.NDArray[np.void]) -> None:
        if failures:
            raise failures.pop()
        write_marks(conn, marks)

    monkeypatch.setattr(service, "write_marks", flaky)
    db = make_database("timescaledb", "hwmark")
    settings = settings_for(mqtt_url, db, topic_prefix)
    now_ms = int(time.time()) * 1000
    minute = 60_000

    def stretch(first: int, last: int) -> str:  # minutes ago, every E1 tag each minute
        return json.dumps({"points": [{"tag": t, "value": 1.0, "ts": now_ms - k * minute}
                                      for k in range(first, last - 1, -1) for t in TAGS]})

    async def marks(conn: psycopg.AsyncConnection) -> list[tuple[int, datetime, datetime, int]]:
        cur = await conn.execute("SELECT sensor_id, start_ts, end_ts, n FROM reading_backfills"
                                 " ORDER BY sensor_id, start_ts")
        return await cur.fetchall()

    async def go() -> None:
        park = await prepare(db)
        sid = park.sensor("E1", "AT-000")
        assert sid is not None
        ago = lambda k: from_epoch_us((now_ms - k * minute) * 1000)  # noqa: E731
        pub = Publisher(mqtt_url)
        async with running_ingest(settings) as svc, \
                await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            pub.publish(f"{topic_prefix}/E1/data", stretch(40, 36))
            assert await wait_rows(db, 5 * len(TAGS)) == 5 * len(TAGS)
            pub.publish(f"{topic_prefix}/E1/data", stretch(35, 31))
            live = {"ts": now_ms, "points": [{"tag": "AT-000", "value": 2.0}]}
            pub.publish(f"{topic_prefix}/E1/data", json.dumps(live))
            assert await wait_rows(db, 10 * len(TAGS) + 1) == 10 * len(TAGS) + 1
            assert await marks(conn) == [], "the readings' commits write no marks"
            assert not await svc.flush_marks()  # the injected failure: the marks wait
            assert await marks(conn) == []
            assert await svc.flush_marks()
            got = await marks(conn)
            assert len(got) == len(TAGS), "one mark per sensor, both commits coalesced"
            assert got[0] == (sid.id, ago(40), ago(31), 10)
            # the board's reader: the late stretch shaded, the live reading not
            late = await queries.backfills(conn, sid.id, ago(60), ago(-1))
            _res, points = await queries.readings(conn, sid.id, ago(60), ago(-1))
            mark_backfilled(points, late)
            assert [p.get("backfilled", False) for p in points] == [True] * 10 + [False]
            assert sum(b["n"] for b in late) == 10
            pub.publish(f"{topic_prefix}/E1/data", stretch(30, 26))
            assert await wait_rows(db, 15 * len(TAGS) + 1) == 15 * len(TAGS) + 1
        # a clean shutdown wrote what was pending
        async with await psycopg.AsyncConnection.connect(db) as conn:
            got = await marks(conn)
            assert len(got) == 2 * len(TAGS)
            assert got[:2] == [(sid.id, ago(40), ago(31), 10), (sid.id, ago(30), ago(26), 5)]
        pub.close()

    asyncio.run(go())
