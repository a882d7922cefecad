"""The whole service on the real broker and database, fed a reading from 1970 and one three hours old.

Before the door and the noticed-time escalation, the 1970 reading froze the service (≈499,000
reminder rounds caught up at once) and the three-hour-old one sent 12 SMS at once, reminders
included. Now: the 1970 reading is refused with its reason and raises nothing; the old one raises
its alarm once and each recipient gets one message; /healthz stays green; memory does not climb.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from park.clock import FakeClock
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service
from tests.test_service_e2e import until


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_1970_reading_and_a_three_hour_old_one(make_database, mqtt_url: str, topic_prefix: str,  # type: ignore[no-untyped-def]
                                                 stand_ins: StandIns) -> None:
    db = make_database("timescaledb", "hwx")
    sms, robot = stand_ins.sms, stand_ins.robot
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FakeClock(now)

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, clock) as (h, client):
            assert (await client.get("/healthz")).status_code == 200
            before = rss_mb()
            pub = Publisher(mqtt_url)
            pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"ts": 1000, "value": 80}))
            old = int((now - timedelta(hours=3)).timestamp() * 1000)
            pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": old, "points": [{"tag": "AT-1", "value": 55}]}))
            pub.close()
            # the old reading's alarm, told at once to the enterprise (SMS and its WeCom robot)
            await until(lambda: len(sms.ok()) >= 1 and len(robot.ok()) >= 1, within=60)
            # a minute later, two escalation passes: nothing more is due (the town's step is at 10 min)
            clock.advance(timedelta(minutes=1))
            passes = h.alerting.ticks_done
            await until(lambda: h.alerting.ticks_done >= passes + 2, within=60)
            await h.rules.tick()
            assert (await client.get("/healthz")).status_code == 200
            grown = rss_mb() - before
            async with await psycopg.AsyncConnection.connect(db) as conn:
                cur = await conn.execute("SELECT reason FROM rejects ORDER BY id")
                rejects = [r[0] for r in await cur.fetchall()]
                cur = await conn.execute("SELECT tag, rule, raised_at FROM alarms ORDER BY id")
                alarms = await cur.fetchall()
                cur = await conn.execute("SELECT idempotency_key FROM outbox ORDER BY id")
                queued = [r[0] for r in await cur.fetchall()]
        assert rejects == ["old_timestamp"], "the 1970 reading is refused at the door with its reason"
        assert [(a[0], a[1]) for a in alarms] == [("AT-1", "high")], "one alarm, from the old reading only"
        per_recipient = Counter(json.loads(r["body"])["phone"] for r in sms.ok())
        assert per_recipient == {"13800000003": 1}, per_recipient
        assert len(robot.ok()) == 1
        assert all(k.endswith("/immediate") for k in queued), queued
        assert grown < 50, f"resident memory grew {grown:.0f} MB"
        print(f"RSS growth over both readings: {grown:.1f} MB")

    asyncio.run(go())
