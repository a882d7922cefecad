"""The duty room's remaining items, in a real headless Debian Chromium (issues 12 and 15): the alarm
detail's timeline says in words which contact could not be reached (the duty room was told); the
detail chart marks readings that arrived as a gateway's backfill (断点续传) apart from live ones; the
enterprise strip and the map tooltip show each gateway's measured clock offset. Screenshots in
test-artifacts/."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import async_playwright

from park.clock import FakeClock
from park.sitefile import parse_site
from park.types import GatewayClock
from tests.alerting_helpers import VendorServer, sms_gateway, sms_id
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for
from tests.test_alerting_gateway_faults import ids, step_clock
from tests.test_board_browser import ARGS, ARTIFACTS, CHROMIUM
from tests.test_board_duty_room import _need_chromium
from tests.test_service_e2e import until

pytestmark = pytest.mark.browser


async def _recorded(h: Any, key: str) -> None:
    """Wait (generously) until the delivery of ``key`` is recorded in ``notifications``."""
    for _ in range(600):
        async with h.pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM notifications WHERE idempotency_key = %s AND outcome = 'sent'",
                                     (key,))
            if await cur.fetchone():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"delivery of {key} never recorded")


def test_detail_shows_unreached_contacts_and_backfilled_readings_and_gateway_clocks(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    _need_chromium()
    db = make_database("postgres", "hww2")
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FakeClock(now)  # hazardwatch's clock starts at the real time: readings stamped now are live

    def only_0003_fails(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
                        fault: str | None) -> tuple[int, Any, dict[str, str]]:
        if json.loads(body).get("phone") == "13800000003":
            return 503, {"error": "subscriber unreachable"}, {}  # injected fault: 张工's phone
        return sms_gateway(method, path, query, headers, body, fault)

    sms = VendorServer(only_0003_fails, dedupe=sms_id)
    site = parse_site(stand_ins.text.replace(stand_ins.sms.url, sms.url), environ={})

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, clock) as (h, _client):
            tok = (await token_for(h, "park"))["Authorization"][7:]
            pub = Publisher(mqtt_url)
            ms = int(now.timestamp() * 1000)
            # E1's gateway flushes 20 minutes of store-and-forward (40 to 21 minutes ago), then reports live
            late = [{"tag": "AT-1", "value": 4 + (k % 3), "ts": ms - 2_400_000 + k * 60_000} for k in range(20)]
            pub.publish(f"{topic_prefix}/E1/data", json.dumps({"points": late}))
            await until(lambda: h.ingest.metrics.stored._value.get() >= 20, within=30)
            # marks are written in bulk at an interval, off the readings' commits: now, for the chart
            assert await h.ingest.flush_marks()
            pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms, "points": [{"tag": "AT-1", "value": 55.04}]}))
            await until(lambda: any(r["status"] == 503 for r in sms.requests), within=30)
            await until(lambda: any(a.tag == "AT-1" and a.rule == "high" for a in h.rules.engine.alarms.values()))
            [aid] = [a.alarm_id for a in h.rules.engine.alarms.values() if a.tag == "AT-1" and a.rule == "high"]
            # 张工 stays unreachable past unreachable_after (10 min): the duty room (the town) is told
            report = f"{aid}/T1/13800000002/sms/unreachable-E1-13800000003"
            await step_clock(clock, timedelta(minutes=13), step=timedelta(seconds=30), cond=lambda: report in ids(sms))
            await until(lambda: report in ids(sms), within=60)
            await _recorded(h, report)  # the attempt is recorded after the gateway answered
            # E2's gateway clock is 10 minutes slow (as ingest's estimator reports it)
            await h.rules.inbox.put(GatewayClock("E2", -600.0, clock.now()))
            await until(lambda: "E2" in h.rules.engine.gateway_clocks)
            assert await h.rules.save_clocks()
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = await browser.new_page(viewport={"width": 1920, "height": 1080}, locale="zh-CN")
                await page.goto(f"{h.http_url}/?token={tok}#alarm/{aid}")
                await page.wait_for_selector("#detail:not([hidden]) .timeline li.unreachable", timeout=30_000)
                unreached = await page.inner_text("#detail .timeline li.unreachable")
                for want in ("未能送达", "一号化工", "张工", "短信", "值班室"):
                    assert want in unreached, (want, unreached)
                # the duty room's own report is in the timeline in words, not as a step code
                await page.wait_for_selector("#detail .timeline li:has-text('未能送达报告')", timeout=30_000)
                assert "unreachable-" not in await page.inner_text("#detail .timeline")
                # the chart: the 20 late readings drawn apart, and said in words
                await page.wait_for_selector("#detail svg.chart", timeout=30_000)
                assert await page.locator("#detail svg.chart circle.late").count() == 20
                note = await page.inner_text("#detail .late-note")
                assert "补传数据" in note and "共 20 个" in note, note
                assert "55.0 %LEL" in await page.inner_text("#detail")
                await page.screenshot(path=str(ARTIFACTS / "board-detail-backfill.png"))
                await page.locator("#detail .timeline li.unreachable").scroll_into_view_if_needed()
                await page.screenshot(path=str(ARTIFACTS / "board-detail-unreached.png"))
                await page.click("#d-close")
                # the enterprise strip and the map tooltip: E2's clock is wrong, E1's not measured yet
                await page.select_option("#f-ent", "E2")
                await page.wait_for_selector("#ent-info:not([hidden]) #ent-clock.warnx", timeout=30_000)
                assert "网关时钟慢 10 分钟" in await page.inner_text("#ent-info")
                await page.screenshot(path=str(ARTIFACTS / "board-enterprise-clock.png"))
                await page.select_option("#f-ent", "")
                await page.wait_for_selector("#ent-info[hidden]", state="attached", timeout=15_000)
                await page.click("#views button[data-view=map]")
                await page.wait_for_selector("#map g.ent[data-ent=E2].clock-wrong", timeout=30_000)
                tip = await page.text_content("#map g.ent[data-ent=E2] title")
                assert tip is not None and "网关时钟慢 10 分钟" in tip, tip
                assert "时钟偏差" in (await page.text_content("#map g.ent[data-ent=E2]") or "")
                assert "尚未测得" in (await page.text_content("#map g.ent[data-ent=E1] title") or "")
                await page.screenshot(path=str(ARTIFACTS / "board-map-clock.png"))
                await browser.close()
            pub.close()

    try:
        asyncio.run(go())
    finally:
        sms.close()
