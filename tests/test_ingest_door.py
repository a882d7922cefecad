"""The door: time sanity and cheap checks first (issue 11, items 1–2).

A reading older than the backfill bound (default 7 days) or more than 5 minutes ahead is refused
with its reason; an oversize message is refused before anything parses it, whatever its topic,
and kept as its first KiB and its length; the rejects table is bounded by retention.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import psycopg

from ingest.decode import KEEP_BYTES, MAX_SEQ_GAP, Decoded, Decoder
from ingest.errors import RejectReason as R
from park.db.maintenance import run_maintenance
from park.db.migrate import Edition
from park.model import Park
from park.site import Retention
from park.types import epoch_us
from tests.ingest_helpers import TAGS, Publisher, prepare, running_ingest, settings_for, site, until, wait_rows

PARK = Park.from_site(site())
NOW = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
NOW_US = epoch_us(NOW)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def decode(topic: str, payload: bytes | str | dict[str, object], dec: Decoder | None = None) -> Decoded:
    out = Decoded()
    raw = payload if isinstance(payload, bytes) else (payload if isinstance(payload, str)
                                                      else json.dumps(payload)).encode()
    (dec or Decoder(PARK)).decode(out, topic, raw, NOW_US)
    return out


def test_readings_from_1970_and_older_than_the_backfill_bound_are_refused_with_the_reason() -> None:
    for ts in (1000, ms(NOW - timedelta(days=7, seconds=1)), ms(datetime(1999, 12, 31, tzinfo=UTC))):
        for topic, doc in (("hw/v1/E1/data", {"ts": ts, "points": [{"tag": "AT-000", "value": 60}]}),
                           ("hw/v1/E1/point/AT-000", {"value": 60, "ts": ts})):
            out = decode(topic, doc)
            assert out.sensor_id == [], (topic, ts)
            assert [r.reason for r in out.rejects] == [R.OLD_TIMESTAMP]
            assert "backfill bound (7 d)" in out.rejects[0].detail
    # inside the bound: a gateway's store-and-forward is stored
    out = decode("hw/v1/E1/data", {"ts": ms(NOW - timedelta(days=6, hours=23)),
                                   "points": [{"tag": "AT-000", "value": 1}]})
    assert out.rejects == [] and len(out) == 1


def test_the_backfill_bound_is_configurable() -> None:
    dec = Decoder(PARK, backfill=timedelta(hours=1))
    three_hours = {"ts": ms(NOW - timedelta(hours=3)), "points": [{"tag": "AT-000", "value": 1}]}
    assert [r.reason for r in decode("hw/v1/E1/data", three_hours, dec).rejects] == [R.OLD_TIMESTAMP]
    assert len(decode("hw/v1/E1/data", three_hours)) == 1  # the default 7 days keeps it
    s = settings_for("mqtt://127.0.0.1:1", "postgresql://x@127.0.0.1/x", "hw/v1", backfill="36h")
    assert s.backfill == timedelta(hours=36)


def test_more_than_five_minutes_ahead_is_refused_and_says_to_check_the_clock() -> None:
    out = decode("hw/v1/E1/data", {"ts": ms(NOW + timedelta(minutes=5, seconds=1)),
                                   "points": [{"tag": "AT-000", "value": 1}]})
    assert [r.reason for r in out.rejects] == [R.FUTURE_TIMESTAMP] and "clock" in out.rejects[0].detail
    assert len(decode("hw/v1/E1/data", {"ts": ms(NOW + timedelta(minutes=4)),
                                        "points": [{"tag": "AT-000", "value": 1}]})) == 1


def test_size_is_checked_before_the_topic_and_the_enterprise_and_only_a_kib_is_kept() -> None:
    big = b"{" + b" " * 1_000_000 + b"}"
    for topic in ("hw/v1/E9/data", "elsewhere/x", "hw/v1/E1/nonsense/deep", "hw/v1/E1/data"):
        out = decode(topic, big)
        assert [r.reason for r in out.rejects] == [R.OVERSIZE], topic
        r = out.rejects[0]
        assert r.payload is not None and len(r.payload) == KEEP_BYTES and r.size == len(big)
    # every other message-level reject is truncated the same way
    bad_json = b"[" * 200_000
    r = decode("hw/v1/E1/data", bad_json).rejects[0]
    assert r.reason is R.BAD_JSON and r.payload == bad_json[:KEEP_BYTES] and r.size == len(bad_json)


def test_no_counter_or_timestamp_makes_work_in_proportion() -> None:
    dec = Decoder(PARK)
    for seq in (1, 2**62):
        decode("hw/v1/E1/data", {"ts": ms(NOW), "seq": seq, "points": []}, dec)
    out = decode("hw/v1/E1/data", {"ts": ms(NOW), "seq": 2**63 - 1, "points": []}, dec)
    assert out.seq_gaps <= MAX_SEQ_GAP
    # clock observations from 1970 and from year 9999 are single numbers, no level holds on them
    decode("hw/v1/E2/point/LT-1", {"value": 1, "ts": 0}, dec)
    decode("hw/v1/E2/point/LT-1", {"value": 1, "ts": 253_402_300_799_999}, dec)
    assert len(dec.clocks) == 1 and dec.clocks.estimate("E2") is None


def test_at_the_door_for_real(mqtt_url: str, topic_prefix: str, make_database) -> None:  # type: ignore[no-untyped-def]
    """Over the broker into the database: the 1970 reading and the 8-day-old one are not stored, a
    1 MB message to an unknown enterprise leaves 1 KiB and its length, and good readings around them
    are all stored."""
    db = make_database("timescaledb", "hwi")
    settings = settings_for(mqtt_url, db, topic_prefix)
    now = datetime.now(UTC)

    async def go() -> None:
        await prepare(db)
        async with running_ingest(settings) as svc:
            pub = Publisher(mqtt_url)
            good = [(f"{topic_prefix}/E1/data", json.dumps({"ts": ms(now - timedelta(minutes=i)), "points": [
                {"tag": t, "value": 1} for t in TAGS]})) for i in range(5)]
            bad: list[tuple[str, bytes | str]] = [
                (f"{topic_prefix}/E1/point/AT-000", json.dumps({"value": 60, "ts": 1000})),
                (f"{topic_prefix}/E1/data", json.dumps({"ts": ms(now - timedelta(days=8)),
                                                        "points": [{"tag": "AT-001", "value": 60}]})),
                (f"{topic_prefix}/E404/data", b"x" * 1_000_000),
            ]
            pub.publish_many([good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], good[4]])
            pub.close()
            assert await wait_rows(db, 5 * len(TAGS)) == 5 * len(TAGS)
            await until(lambda: svc.metrics.rejected.labels("oversize")._value.get() == 1, what="oversize counted")
            assert svc.metrics.rejected.labels("old_timestamp")._value.get() == 2
        async with await psycopg.AsyncConnection.connect(db) as conn:
            cur = await conn.execute("SELECT reason, octet_length(payload), payload_bytes, topic FROM rejects"
                                     " ORDER BY reason, id")
            rows = await cur.fetchall()
            assert [r[0] for r in rows] == ["old_timestamp", "old_timestamp", "oversize"]
            assert rows[2][1:] == (KEEP_BYTES, 1_000_000, f"{topic_prefix}/E404/data")
            cur = await conn.execute("SELECT count(*) FROM readings WHERE ts < now() - interval '7 days'")
            assert await cur.fetchone() == (0,)

    asyncio.run(go())


def test_rejects_are_bounded_by_retention(make_database) -> None:  # type: ignore[no-untyped-def]
    db = make_database("postgres", "hwi")

    async def go() -> None:
        await prepare(db)
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            now = datetime.now(UTC)
            for age in (40, 31, 29, 1):
                await conn.execute("INSERT INTO rejects (received_at, topic, reason, payload, payload_bytes)"
                                   " VALUES (%s, 't', 'oversize', %s, 1000000)",
                                   (now - timedelta(days=age), b"x" * KEEP_BYTES))
            report = await run_maintenance(conn, Edition.PLAIN, Retention(rejects=timedelta(days=30)), now)
            assert report.rejects_deleted == 2
            cur = await conn.execute("SELECT count(*) FROM rejects")
            assert await cur.fetchone() == (2,)

    asyncio.run(go())
