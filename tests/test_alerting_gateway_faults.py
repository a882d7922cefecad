"""Vendors failing, with the whole service on a fake clock: the SMS gateway answering 503 for a minute,
the WeCom robot answering 45009, a contact nobody can reach — delivered once after recovery, the duty room
told about the unreachable contact, ingest and rules unaffected throughout."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from park.clock import FakeClock
from tests.alerting_helpers import VendorServer, sms_gateway, sms_id
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service
from tests.test_service_e2e import until

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def ids(srv: VendorServer) -> list[str]:
    return [json.loads(r["body"])["id"] for r in srv.ok()]


async def step_clock(clock: FakeClock, total: timedelta, cond: Any = None,
                     step: timedelta = timedelta(seconds=5)) -> None:
    """Move the fake clock forward in steps, giving the service a look at each (its loops poll every 0.2 s).

    Assertions never depend on these pauses: what must happen is waited for with ``until`` or ``cond``."""
    end = clock.now() + total
    while clock.now() < end:
        clock.advance(step)
        await asyncio.sleep(0.25)
        if cond is not None and cond():
            return


async def committed(probe: Any, ok: Any, within: float = 60.0) -> Any:
    """Query until ``ok`` holds on what is committed; a generous deadline, never a timing."""
    deadline = time.monotonic() + within
    while True:
        got = await probe()
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"not committed within {within:.0f} s: {got}"
        await asyncio.sleep(0.05)


def test_sms_503_for_a_minute_and_wecom_45009_deliver_once_each_after_recovery(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwg")
    sms, robot = stand_ins.sms, stand_ins.robot
    clock = FakeClock(T0)

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, clock) as (h, _client):
            pub = Publisher(mqtt_url)
            ms = int(T0.timestamp() * 1000)
            sms.fail_status = 503
            robot.faults += ["45009"]
            pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms, "points": [{"tag": "AT-1", "value": 55}]}))
            await until(lambda: any(r["status"] == 503 for r in sms.requests))
            await until(lambda: len(robot.requests) >= 1)
            assert robot.ok() == []  # 45009: rate-limited, waiting
            # the gateway stays down for 60 s of the service's time; the message is retried, never abandoned
            await step_clock(clock, timedelta(seconds=60))
            failed = [r for r in sms.requests if r["status"] == 503]
            assert len(failed) >= 3, f"retried with back-off during the minute: {len(failed)} attempts"
            # ingest and rules go on meanwhile: a red toxic reading is judged and stored at once
            pub.publish(f"{topic_prefix}/E1/point/AT-2", json.dumps({"value": 5.0, "ts": ms + 60_000}))
            await until(lambda: any(a.tag == "AT-2" for a in h.rules.engine.alarms.values()))
            sms.fail_status = None
            def all_in() -> bool:
                bodies = [json.loads(r["body"]) for r in sms.ok()]
                # AT-1's robot message itself (rate-limited, retried later): AT-2's may be the first to arrive
                robot_at1 = any("AT-1" in json.loads(r["body"])["markdown"]["content"] for r in robot.ok())
                return (robot_at1 and {"13800000003", "13800000002"} <= {
                    b["phone"] for b in bodies if "AT-2" in b["text"]} and any("AT-1" in b["text"] for b in bodies))

            await step_clock(clock, timedelta(minutes=3), cond=all_in)
            assert all_in(), "every message reached its vendor within 3 minutes of the service's time"
            aid1 = next(a.alarm_id for a in h.rules.engine.alarms.values() if a.tag == "AT-1")
            at1 = [i for i in ids(sms) if i.split("/")[0] == str(aid1)]
            assert at1 and all(i.endswith("/sms/immediate") for i in at1)
            assert len(robot.ok()) >= 1
            assert sms.duplicates() == [], "each message delivered once (no repeat even for the gateway to drop)"
            robot_ids = [json.loads(r["body"])["markdown"]["content"] for r in robot.ok()]
            assert len(robot_ids) == len(set(robot_ids))

            # a vendor's answer is recorded after it arrives: wait on the committed attempts, not the vendor
            async def outcomes() -> dict[tuple[str, str], int]:
                async with h.pool.connection() as conn:
                    cur = await conn.execute("SELECT channel, outcome, count(*) FROM notifications"
                                             " WHERE idempotency_key LIKE %s GROUP BY 1, 2 ORDER BY 1, 2",
                                             (f"{aid1}/%",))
                    return {(c, o): n for c, o, n in await cur.fetchall()}

            got = await committed(outcomes, lambda g: ("sms", "sent") in g and ("wecom_robot", "sent") in g)
            assert got[("sms", "sent")] == 1 and got[("sms", "failed")] >= 3
            assert got[("wecom_robot", "rate_limited")] == 1 and got[("wecom_robot", "sent")] == 1
            async def readings() -> int:
                async with h.pool.connection() as conn:
                    cur = await conn.execute("SELECT count(*) FROM readings")
                    return (await cur.fetchone())[0]  # type: ignore[index,no-any-return]

            # the rules judge a reading before ingest's write commits it: wait for the write too
            assert await committed(readings, lambda n: n >= 2) == 2
            pub.close()

    asyncio.run(go())


def test_a_contact_unreached_for_ten_minutes_is_reported_to_the_duty_room(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwg")
    clock = FakeClock(T0)

    def only_0003_fails(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                        fault: str | None) -> tuple[int, Any, dict[str, str]]:
        if json.loads(body).get("phone") == "13800000003":
            return 503, {"error": "subscriber unreachable"}, {}
        return sms_gateway(method, path, query, headers, body, fault)

    sms = VendorServer(only_0003_fails, dedupe=sms_id)
    site_text = stand_ins.text.replace(stand_ins.sms.url, sms.url)
    from park.sitefile import parse_site

    async def go() -> None:
        async with running_service(parse_site(site_text, environ={}), db, mqtt_url, topic_prefix, clock) as (h, _c):
            pub = Publisher(mqtt_url)
            pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 55, "ts": int(T0.timestamp() * 1000)}))
            await until(lambda: any(r["status"] == 503 for r in sms.requests))
            [aid] = [a.alarm_id for a in h.rules.engine.alarms.values() if a.tag == "AT-1"]
            report = f"{aid}/T1/13800000002/sms/unreachable-E1-13800000003"
            await step_clock(clock, timedelta(minutes=9), step=timedelta(seconds=30))
            assert report not in ids(sms), "not before unreachable_after (10 min)"
            await step_clock(clock, timedelta(minutes=3), step=timedelta(seconds=15), cond=lambda: report in ids(sms))
            assert report in ids(sms)
            text = next(json.loads(r["body"])["text"] for r in sms.ok() if json.loads(r["body"])["id"] == report)
            assert "无法送达" in text and "张工" in text
            async with h.pool.connection() as conn:
                cur = await conn.execute("SELECT kind, detail->>'contact' FROM alarm_events WHERE alarm_id = %s"
                                         " AND kind = 'unreachable'", (aid,))
                assert await cur.fetchall() == [("unreachable", "张工")]  # the board shows it
                cur = await conn.execute("SELECT status FROM outbox WHERE idempotency_key = %s",
                                         (f"{aid}/E1/13800000003/sms/immediate",))
                assert await cur.fetchone() == ("pending",), "still tried: never abandoned while unacknowledged"
            await step_clock(clock, timedelta(minutes=2), step=timedelta(seconds=15))
            assert ids(sms).count(report) == 1, "reported once"
            pub.close()

    try:
        asyncio.run(go())
    finally:
        sms.close()


def test_a_gateway_slow_to_answer_does_not_hold_up_the_next_alarms_first_notice(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    """The SMS gateway takes its time over AT-1's message (up to its timeout); meanwhile AT-2 goes red:
    AT-2's SMS is claimed and sent at once, not after AT-1's request returns (the gateway's timeout is
    set longer than the test waits, so AT-1's attempt cannot end meanwhile)."""
    from park.sitefile import parse_site

    db = make_database("postgres", "hwg")
    sms = stand_ins.sms
    site = parse_site(stand_ins.text.replace(f'url: "{sms.url}/send"}}', f'url: "{sms.url}/send", timeout: 120s}}'),
                      environ={})
    assert site.channels.sms is not None and site.channels.sms.timeout.total_seconds() == 120
    clock = FakeClock(T0)

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, clock) as (_h, _client):
            pub = Publisher(mqtt_url)
            ms = int(T0.timestamp() * 1000)
            sms.hold.clear()  # every request waits for the gateway's answer until the hold is lifted
            try:
                pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 55, "ts": ms}))
                await until(lambda: any(b"AT-1" in b for b in sms.holding), within=30)
                pub.publish(f"{topic_prefix}/E1/point/AT-2", json.dumps({"value": 5.0, "ts": ms + 1000}))
                # AT-1's request is still unanswered (held) while AT-2's reaches the gateway
                await until(lambda: any(b"AT-2" in b for b in sms.holding), within=30)
                assert any(b"AT-1" in b for b in sms.holding) and not sms.requests, "AT-1's still unanswered"
            finally:
                sms.hold.set()
            await until(lambda: {"AT-1", "AT-2"} <= {t for r in sms.ok() for t in ("AT-1", "AT-2")
                                                    if t in json.loads(r["body"])["text"]}, within=30)
            assert sms.duplicates() == []
            pub.close()

    asyncio.run(go())
