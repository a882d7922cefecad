"""Acknowledgement links name their recipient: a forwarded link records the original recipient; absurd,
forged and expired links change nothing (400, never 500); links of closed alarms are dead; no secret
leaves through an API answer."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from alerting.errors import BadLink
from alerting.links import LinkSigner
from park.clock import FakeClock
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for
from tests.test_service_e2e import T0, until

SECRET = b"test-link-secret-0123456789"  # what tests.service_helpers gives the service


def test_link_round_trip_names_the_recipient_and_refuses_nonsense() -> None:
    s = LinkSigner(SECRET)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    tok = s.sign(42, now + timedelta(days=3), "E1", "13800000003")
    c = s.claim(tok, now)
    assert (c.alarm_id, c.unit, c.fingerprint) == (42, "E1", s.fingerprint("13800000003"))
    assert "13800000003" not in tok and len(tok) < 45  # short enough for SMS, and the phone is not in it
    assert s.fingerprint("13800000003") != LinkSigner(b"another-secret-of-16+").fingerprint("13800000003")
    with pytest.raises(BadLink, match="expired"):
        s.claim(tok, now + timedelta(days=4))
    with pytest.raises(BadLink, match="malformed expiry"):  # signed, but claiming decades: refused
        s.claim(s.sign(42, datetime(2100, 1, 1, tzinfo=UTC), "E1", "x"), now)
    for bad in ("", "!!!", "a" * 500, tok[:-2] + ("AA" if tok[-2:] != "AA" else "BB"), tok[:10]):
        with pytest.raises(BadLink):
            s.claim(bad, now)


def test_a_forwarded_link_records_the_original_recipient(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                         topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")
    sms = stand_ins.sms

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, client):
            pub = Publisher(mqtt_url)
            # red (Cl2 over 2× OEL): the enterprise (张工) and the town (镇值班) are told at once
            pub.publish(f"{topic_prefix}/E1/point/AT-2", json.dumps({"value": 5.0, "ts": int(T0.timestamp() * 1000)}))
            pub.close()
            await until(lambda: len(sms.ok()) >= 2)
            by_phone = {json.loads(r["body"])["phone"]: json.loads(r["body"])["text"] for r in sms.ok()}
            town_text = by_phone["13800000002"]
            path = httpx.URL(town_text[town_text.index("http"):].split()[0]).path
            # the town's duty officer forwards the SMS; someone else opens and presses the button
            shown = await client.get(path)
            assert shown.status_code == 200 and "镇值班" in shown.text and "一镇" in shown.text
            assert "<input" not in shown.text  # no name to type
            done = await client.post(path, data={"by": "转发给的人"})
            assert done.status_code == 200, done.text
            alarm = next(iter(h.rules.engine.alarms.values()))
            assert alarm.acked_by == "镇值班（一镇）"
            hdr = await token_for(h, "park")
            row = (await client.get(f"/api/v1/alarms/{alarm.alarm_id}", headers=hdr)).json()
            assert row["acked_by"] == "镇值班（一镇）"
            # the audit log says it came through the town's link
            async with h.pool.connection() as conn:
                cur = await conn.execute("SELECT unit_code, by, detail FROM audit_log WHERE action = 'ack'")
                unit, by, detail = (await cur.fetchall())[-1]
            assert (unit, by, detail["via"]) == ("T1", "镇值班（一镇）", "link")
            # a second press: nothing more to do, and no server error
            assert (await client.post(path)).status_code == 409
            # resolved → the link is dead
            r = await client.post(f"/api/v1/alarms/{alarm.alarm_id}/resolve", headers=hdr,
                                  json={"by": "值班员", "cause": "泄漏", "action": "关阀"})
            assert r.status_code == 200
            assert (await client.get(path)).status_code == 410
            assert (await client.post(path)).status_code == 410

    asyncio.run(go())


def test_absurd_forged_and_expired_links_answer_400(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                    topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")
    clock = FakeClock(T0)

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, clock) as (h, client):
            pub = Publisher(mqtt_url)
            pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 60, "ts": int(T0.timestamp() * 1000)}))
            pub.close()
            await until(lambda: bool(h.rules.engine.alarms))
            aid = next(iter(h.rules.engine.alarms.values())).alarm_id
            s = LinkSigner(SECRET)
            absurd = s.sign(aid, datetime(2105, 1, 1, tzinfo=UTC), "E1", "13800000003")
            expired = s.sign(aid, clock.now() - timedelta(seconds=1), "E1", "13800000003")
            forged = LinkSigner(b"not-the-service-secret").sign(aid, clock.now() + timedelta(hours=1), "E1", "x")
            for tok in (absurd, expired, forged, "x" * 300, "%00", "..%2f..", "AAAA"):
                for method in ("GET", "POST"):
                    r = await client.request(method, f"/ack/{tok}")
                    assert r.status_code in (400, 404), (tok, method, r.status_code)
            assert next(iter(h.rules.engine.alarms.values())).state == "active_unacked"  # nothing changed

    asyncio.run(go())


def test_no_secret_in_api_answers(make_database, mqtt_url: str, topic_prefix: str,  # type: ignore[no-untyped-def]
                                  stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwweb")
    robot_key = "robot-e1"  # the stand-in site's WeCom robot key

    async def go() -> None:
        async with running_service(stand_ins.site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, client):
            pub = Publisher(mqtt_url)
            pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 60, "ts": int(T0.timestamp() * 1000)}))
            pub.close()
            await until(lambda: bool(h.rules.engine.alarms))
            aid = next(iter(h.rules.engine.alarms.values())).alarm_id
            # a vendor error that quotes its URL, as kept in the attempts (fault injected)
            async with h.pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO notifications (alarm_id, idempotency_key, unit_code, contact, channel, step, outcome,"
                    " detail) VALUES (%s, 'k', 'E1', '群机器人', 'wecom_robot', 'immediate', 'failed', %s)",
                    (aid, f"POST https://qyapi.example/cgi-bin/webhook/send?key={robot_key}: 500;"
                          " gettoken?corpid=x&corpsecret=abcdef123456 access_token=zzz999yyy"))
            hdr = await token_for(h, "park")
            answers = []
            for path in ("/api/v1/alarms?state=all", f"/api/v1/alarms/{aid}", "/api/v1/enterprises", "/api/v1/map",
                         "/api/v1/whoami", "/api/v1/handover", "/api/v1/alarms/999999", "/api/v1/sensors/1/readings"):
                r = await client.get(path, headers=hdr)
                assert r.status_code < 500
                answers.append(r.text)
            answers.append((await client.get("/api/v1/alarms", headers={"Authorization": f"Bearer {robot_key}"})).text)
            text = "\n".join(answers)
            for secret in (robot_key, "abcdef123456", "zzz999yyy", "test-link-secret-0123456789"):
                assert secret not in text, secret
            assert "key=***" in text

    asyncio.run(go())
