"""The whole service on the real broker and database: MQTT reading → alarm → SMS and WeCom → acknowledgement."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx

from park.clock import FakeClock
from tests.alerting_helpers import VendorServer
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for

# the fake clock starts two hours back, so readings stamped on it are never "from the future" for ingest
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def phones(srv: VendorServer, tag: str) -> list[str]:
    return [json.loads(r["body"])["phone"] for r in srv.ok() if tag in json.loads(r["body"])["text"]]


async def until(cond, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(within / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_hh_gas_escalates_enterprise_town_district_and_api_ack_stops_the_rest(
        make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:  # type: ignore[no-untyped-def]
    db = make_database("timescaledb", "hwe")
    sms, robot, site = stand_ins.sms, stand_ins.robot, stand_ins.site
    clock = FakeClock(T0)

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, clock) as (h, client):
            pub = Publisher(mqtt_url)
            ms = int(T0.timestamp() * 1000)
            # orange: combustible second level (50 %LEL) — enterprise now, town at 10 min, district at 30 min
            pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms, "points": [{"tag": "AT-1", "value": 55}]}))
            await until(lambda: phones(sms, "AT-1") == ["13800000003"])
            await until(lambda: len(robot.ok()) == 1)
            assert "橙色预警" in json.loads(robot.ok()[0]["body"])["markdown"]["content"]
            clock.advance(timedelta(minutes=10))
            await until(lambda: "13800000002" in phones(sms, "AT-1"))
            clock.advance(timedelta(minutes=20))
            await until(lambda: "13800000001" in phones(sms, "AT-1"))
            # red: toxic second level — enterprise and town at once; acknowledged through the API at once
            pub.publish(f"{topic_prefix}/E1/point/AT-2", json.dumps({"value": 5.0, "ts": ms + 1_800_000}))
            await until(lambda: sorted(phones(sms, "AT-2")) == ["13800000002", "13800000003"])
            enterprise_hdr = await token_for(h, "E1")
            other_hdr = await token_for(h, "E2")
            listed = (await client.get("/api/v1/alarms", headers=enterprise_hdr)).json()
            assert isinstance(listed, list), listed
            [red] = [a for a in listed
                     if a["tag"] == "AT-2"]
            assert (red["severity"], red["escalation_level"]) == ("red", "town")
            assert (await client.post(f"/api/v1/alarms/{red['id']}/ack", json={"by": "李工"},
                                      headers=other_hdr)).status_code == 403
            r = await client.post(f"/api/v1/alarms/{red['id']}/ack", json={"by": "张工", "note": "已到现场"},
                                  headers=enterprise_hdr)
            assert r.status_code == 200 and r.json()["acked_by"] == "张工"
            before = len(phones(sms, "AT-2"))
            clock.advance(timedelta(minutes=30))  # past the district step and several reminders
            await asyncio.sleep(1.5)
            assert len(phones(sms, "AT-2")) == before, "acknowledgement must stop further steps"
            detail = (await client.get(f"/api/v1/alarms/{red['id']}", headers=enterprise_hdr)).json()
            assert {m["channel"] for m in detail["notifications"]["attempts"]} == {"sms", "wecom_robot"}
            assert all(m["outcome"] == "sent" for m in detail["notifications"]["attempts"])
            assert [e["kind"] for e in detail["events"]][:2] == ["raised", "acked"]
            # exactly once per (alarm, unit, contact, channel, step)
            ids = [json.loads(r["body"])["id"] for r in sms.ok()]
            assert len(ids) == len(set(ids))
            pub.close()

    asyncio.run(go())


def test_api_scope_auth_and_validation(make_database, mqtt_url: str, topic_prefix: str,  # type: ignore[no-untyped-def]
                                       stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwe")
    site = stand_ins.site

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, client):
            pub = Publisher(mqtt_url)
            ms = int(T0.timestamp() * 1000)
            pub.publish(f"{topic_prefix}/E2/data", json.dumps({"ts": ms, "points": [{"tag": "X", "value": 30}]}))
            park_hdr = await token_for(h, "park")
            town_hdr = await token_for(h, "T1")
            e1_hdr = await token_for(h, "E1")
            await until(lambda: False if not h.rules.engine.alarms else True)
            await asyncio.sleep(0.3)
            assert (await client.get("/api/v1/alarms")).status_code == 401
            assert (await client.get("/api/v1/alarms", headers={"Authorization": "Bearer nope"})).status_code == 401
            all_ = (await client.get("/api/v1/alarms", headers=park_hdr)).json()
            assert [a["enterprise"] for a in all_] == ["E2"]
            assert [a["enterprise"] for a in (await client.get("/api/v1/alarms", headers=town_hdr)).json()] == ["E2"]
            assert (await client.get("/api/v1/alarms", headers=e1_hdr)).json() == []
            aid = all_[0]["id"]
            assert (await client.get(f"/api/v1/alarms/{aid}", headers=e1_hdr)).status_code == 403
            assert (await client.get("/api/v1/alarms?enterprise=E2", headers=e1_hdr)).status_code == 403
            bad = await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": ""}, headers=town_hdr)
            assert bad.status_code == 422
            assert (await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": "x", "extra": 1},
                                      headers=town_hdr)).status_code == 422
            ok = await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": "镇值班员"}, headers=town_hdr)
            assert ok.status_code == 200
            again = await client.post(f"/api/v1/alarms/{aid}/ack", json={"by": "镇值班员"}, headers=town_hdr)
            assert again.status_code == 409
            ready = (await client.get("/readyz")).json()
            assert (ready["ready"], ready["database"], ready["broker"]) == (True, True, True)
            metrics = (await client.get("/metrics")).text
            assert "hazardwatch_ingest_readings_total" in metrics and "hazardwatch_rules_open_alarms" in metrics
            st = await client.put("/api/v1/enterprises/E2/status", json={"state": "maintenance", "by": "值班长"},
                                  headers=park_hdr)
            assert st.status_code == 200
            assert (await client.put("/api/v1/enterprises/E2/status", json={"state": "stopped", "by": "x"},
                                     headers=e1_hdr)).status_code == 403
            hand = (await client.get("/api/v1/handover", headers=park_hdr)).json()
            assert hand["raised"].get("yellow") == 1
            spec = h.park.by_key[("E2", "X")]
            rd = await client.get(f"/api/v1/sensors/{spec.id}/readings", headers=park_hdr,
                                  params={"start": (T0 - timedelta(hours=1)).isoformat(),
                                          "end": (T0 + timedelta(hours=1)).isoformat()})
            assert rd.status_code == 200 and rd.json()["points"][0]["value"] == 30
            async with h.pool.connection() as conn:
                cur = await conn.execute("SELECT action, by, unit_code FROM audit_log ORDER BY id")
                assert await cur.fetchall() == [("ack", "镇值班员", "T1"), ("set_state", "值班长", "park")]
            page = await client.get("/")
            assert page.status_code == 200 and "园区预警值班台" in page.text
            spec_doc = (await client.get("/openapi.json")).json()
            assert "/api/v1/alarms/{alarm_id}/ack" in spec_doc["paths"]
            pub.close()

    asyncio.run(go())


def test_ack_link_shows_then_only_post_acknowledges(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                    topic_prefix: str, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwe")
    sms, site = stand_ins.sms, stand_ins.site

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, client):
            pub = Publisher(mqtt_url)
            pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 30, "ts": int(T0.timestamp() * 1000)}))
            await until(lambda: phones(sms, "AT-1") != [])
            text = json.loads(sms.ok()[0]["body"])["text"]
            link = text[text.index("http"):].split()[0]
            path = httpx.URL(link).path
            shown = await client.get(path)  # what a chat app's preview does
            assert shown.status_code == 200 and "确认" in shown.text
            assert next(iter(h.rules.engine.alarms.values())).state == "active_unacked"
            done = await client.post(path, data={"by": "冒名者"})  # a typed name is ignored: the link names whom
            assert done.status_code == 200 and "已确认" in done.text
            assert next(iter(h.rules.engine.alarms.values())).acked_by == "张工（一号化工）"
            assert (await client.get(path[:-3] + "xyz")).status_code == 400  # tampered
            pub.close()

    asyncio.run(go())
