"""The duty-room board in a real headless Chromium: live alarms, acknowledgement, scope; screenshots kept."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from park.clock import FakeClock
from park.sitefile import parse_site
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for
from tests.test_service_e2e import until

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = os.environ.get("HW_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
WAIT = 30_000  # ms: a deadline for a page condition on a loaded machine, never a figure


async def queued_for(h, alarm_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Every message the outbox holds for ``alarm_id`` (sent or not), oldest first."""
    async with h.pool.connection() as conn:
        cur = await conn.execute("SELECT idempotency_key FROM outbox WHERE alarm_id = %s ORDER BY id", (alarm_id,))
        return [r[0] for r in await cur.fetchall()]


@pytest.mark.browser
def test_board_live_ack_scope_and_four_colours(make_database, mqtt_url: str, topic_prefix: str,  # type: ignore[no-untyped-def]
                                               stand_ins: StandIns) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: tests/run.sh installs Debian's chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    db = make_database("postgres", "hwd")
    sms = stand_ins.sms
    text = stand_ins.text.replace(
        "              - {tag: AT-2, kind: gas_toxic, gas: Cl2, name: 液氯间氯气}",
        "              - {tag: AT-2, kind: gas_toxic, gas: Cl2, name: 液氯间氯气}\n"
        "              - {tag: LT-1, kind: tank_level, name: 储罐液位, limits: {hh: 9, h: 8}, interval: 10s}")
    site = parse_site(text, environ={})
    clock = FakeClock(T0)

    def messages_for(alarm_id: int | None) -> list[str]:
        return [json.loads(r["body"])["id"] for r in sms.ok() if json.loads(r["body"])["id"].startswith(f"{alarm_id}/")]

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, clock) as (h, _client):
            park_tok = (await token_for(h, "park"))["Authorization"][7:]
            e2_tok = (await token_for(h, "E2"))["Authorization"][7:]
            pub = Publisher(mqtt_url)
            ms = int(T0.timestamp() * 1000)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = await browser.new_page(viewport={"width": 1600, "height": 900}, locale="zh-CN")
                await page.goto(f"{h.http_url}/?token={park_tok}")
                await page.wait_for_selector("#status:has-text('实时')", timeout=10_000)
                # an HH reading over MQTT appears on the board by itself (the time it took is printed, not asserted)
                t_pub = time.monotonic()
                pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms, "points": [{"tag": "AT-1", "value": 55}]}))
                await page.wait_for_selector("tr.sev-orange", timeout=WAIT)
                latency = time.monotonic() - t_pub
                await page.screenshot(path=str(ARTIFACTS / "board-first-alarm.png"))
                # another enterprise's token sees nothing of it
                other = await browser.new_page()
                await other.goto(f"{h.http_url}/?token={e2_tok}")
                await other.wait_for_selector("#status:has-text('实时')", timeout=10_000)
                assert await other.locator("tbody tr").count() == 0
                await other.screenshot(path=str(ARTIFACTS / "board-other-enterprise.png"))
                # the acknowledge dialog works and the escalation stops. Counted by the alarm's id (the first
                # part of each message's idempotency key): forty minutes of silence later raises other alarms
                # about AT-1 (stale data) that rightly message the same people.
                [aid] = [a.alarm_id for a in h.rules.engine.alarms.values() if a.tag == "AT-1"]
                await until(lambda: len(messages_for(aid)) == 1)  # the enterprise's immediate SMS, before the ack
                await page.click("tr.sev-orange button[data-act=ack]")
                await page.fill("#ack-by", "值班员王")
                await page.click("#ack-ok")
                await page.wait_for_selector("tr.sev-orange:has-text('已确认')", timeout=WAIT)
                clock.advance(timedelta(minutes=40))  # past the town (10 min) and district (30 min) steps
                # two escalation passes at the new time: a step still due would now be in the outbox
                passes = h.alerting.ticks_done
                await until(lambda: h.alerting.ticks_done >= passes + 2, within=60)
                assert sorted(await queued_for(h, aid)) == [f"{aid}/E1/13800000003/sms/immediate",
                                                            f"{aid}/E1/robot/wecom_robot/immediate"], \
                    "nothing after the ack: the enterprise's own messages only, no town or district step"
                assert sms.duplicates() == []
                # all four colours for the wall-screen shot: red (Cl2 2×OEL), yellow (H), blue (stale data)
                t1 = int(clock.now().timestamp() * 1000)
                pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": t1, "points": [
                    {"tag": "AT-2", "value": 3.0}, {"tag": "LT-1", "value": 8.4}]}))
                await page.wait_for_selector("tr.sev-red", timeout=WAIT)
                await page.wait_for_selector("tr.sev-yellow", timeout=WAIT)
                clock.advance(timedelta(minutes=3))  # LT-1 reports every 10 s: three minutes of silence is stale
                await h.rules.tick()  # the rules' own tick would come too; this one is not left to the timer
                await page.wait_for_selector("tr.sev-blue", timeout=WAIT)
                await page.goto(f"{h.http_url}/?wall=1&token={park_tok}")
                await page.wait_for_selector("tr.sev-blue", timeout=WAIT)
                await page.screenshot(path=str(ARTIFACTS / "board-four-colours.png"), full_page=True)
                await browser.close()
            pub.close()
            print(f"MQTT reading to board row: {latency * 1000:.0f} ms")

    asyncio.run(go())
