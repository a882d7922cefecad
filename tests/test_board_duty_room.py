"""The duty room at 3 a.m., in a real headless Debian Chromium: a board that never shows stale data as
live, the alarm detail, the map, wall screens without wrapped badges, the phone acknowledgement page,
the red tone that stops only when answered, and /docs with the network blocked. Screenshots in
test-artifacts/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from playwright.async_api import Page, async_playwright
from prometheus_client import CollectorRegistry

from hazardwatch.service import ServiceHandle, run_service
from park.clock import FakeClock
from park.settings import EnvSettings, load_settings
from park.site import Site
from park.sitefile import parse_site
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, free_port, running_service, token_for
from tests.test_board_browser import ARGS, ARTIFACTS, CHROMIUM
from tests.test_service_e2e import T0, until

pytestmark = pytest.mark.browser


def _site(stand_ins: StandIns) -> Site:
    text = stand_ins.text.replace(
        "            wecom_robot: {key: \"robot-e1\"}",
        "            wecom_robot: {key: \"robot-e1\"}\n"
        "            hazard_sources: [{code: HS1, name: 液氯储罐区, grade: 1}]").replace(
        "              - {tag: AT-2, kind: gas_toxic, gas: Cl2, name: 液氯间氯气}",
        "              - {tag: AT-2, kind: gas_toxic, gas: Cl2, name: 液氯间氯气, hazard_source: HS1}\n"
        "              - {tag: LT-1, kind: tank_level, name: 储罐液位, limits: {hh: 9, h: 8}, interval: 10s}")
    return parse_site(text, environ={})


def _need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: tests/run.sh installs Debian's chromium")
    ARTIFACTS.mkdir(exist_ok=True)


async def _no_wrap(page: Page, selector: str) -> None:
    """Every element matching ``selector`` sits on one line."""
    wrapped = await page.eval_on_selector_all(selector, """els => els.filter(e => {
        const lh = parseFloat(getComputedStyle(e).fontSize) * 1.9;
        return e.getClientRects().length > 1 || e.getBoundingClientRect().height > lh;
    }).map(e => e.textContent)""")
    assert wrapped == [], f"wrapped: {wrapped}"


def test_detail_map_wall_sound_phone_and_offline_docs(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                       topic_prefix: str, stand_ins: StandIns) -> None:
    _need_chromium()
    db = make_database("postgres", "hwweb")
    site = _site(stand_ins)
    clock = FakeClock(T0)

    async def go() -> None:
        async with running_service(site, db, mqtt_url, topic_prefix, clock) as (h, _client):
            tok = (await token_for(h, "park"))["Authorization"][7:]
            pub = Publisher(mqtt_url)
            ms = int(T0.timestamp() * 1000)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = await browser.new_page(viewport={"width": 1920, "height": 1080}, locale="zh-CN")
                # before a token: a login, and no counters pretending all is clear
                await page.goto(f"{h.http_url}/")
                await page.wait_for_selector("#login:not([hidden])")
                assert not await page.is_visible("#counts")
                await page.goto(f"{h.http_url}/?token={tok}")
                await page.wait_for_selector("#status:has-text('实时')", timeout=10_000)
                # red (Cl2 at 2.5× OEL), yellow (level above H) — values that need rounding
                pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms, "points": [
                    {"tag": "AT-2", "value": 2.53333}, {"tag": "LT-1", "value": 8.41666}]}))
                await page.wait_for_selector("tr.sev-red", timeout=10_000)
                await page.wait_for_selector("tr.sev-yellow", timeout=10_000)
                row = await page.inner_text("tr.sev-red")
                assert "2.5 mg/m³" in row and "2.5333" not in row and "液氯间氯气" in row, row
                assert "8.42 m" in await page.inner_text("tr.sev-yellow")
                # the red tone rings until answered; muting is visible and bounded
                await page.wait_for_selector("#sound-state.ringing", timeout=5_000)
                await page.click("#b-mute")
                await page.wait_for_selector("#sound-state.muted:has-text('已静音至')", timeout=5_000)
                await page.click("#b-mute")
                await page.wait_for_selector("#sound-state.ringing", timeout=5_000)
                # the detail panel (also a URL)
                await until(lambda: len(stand_ins.sms.ok()) >= 2)
                await page.click("tr.sev-red td:nth-child(3)")
                await page.wait_for_selector("#detail:not([hidden]) .timeline", timeout=10_000)
                await page.wait_for_selector("#detail .timeline li.ok", timeout=10_000)
                detail = await page.inner_text("#detail")
                for want in ("一号化工", "液氯储罐区", "一级重大危险源", "责任人", "张工", "13800000003", "镇值班",
                             "13800000002", "2.5 mg/m³", "已送达", "短信"):
                    assert want in detail, (want, detail)
                assert await page.locator("#detail a.tel[href='tel:13800000003']").count() == 1
                assert await page.locator("#detail svg.chart path").count() == 1
                assert "#alarm/" in page.url
                await page.screenshot(path=str(ARTIFACTS / "board-detail.png"))
                # acknowledge from the panel: the tone stops
                await page.click("#detail button[data-dact=ack]")
                await page.fill("#ack-by", "值班员王")
                await page.click("#ack-ok")
                await page.wait_for_selector("tr.sev-red:has-text('已确认')", timeout=5_000)
                await page.wait_for_selector("#sound-state[hidden]", state="attached", timeout=5_000)
                await page.click("#d-close")
                # the map: E1 red and pulsing, E2 calm; a gateway gone is grey
                pub.publish(f"{topic_prefix}/E2/status", json.dumps({"online": False}), retain=True)
                await page.click("#views button[data-view=map]")
                await page.wait_for_selector("#map g.ent[data-ent=E1].w-red", timeout=5_000)
                await page.wait_for_selector("#map g.ent[data-ent=E2].stale", timeout=10_000)
                anim = await page.eval_on_selector("#map g.ent[data-ent=E1] circle",
                                                   "e => getComputedStyle(e).animationName")
                assert anim == "pulse"
                await page.screenshot(path=str(ARTIFACTS / "board-map.png"))
                await page.click("#map g.ent[data-ent=E1]")
                await page.wait_for_selector("#v-list:not([hidden]) tr.sev-red", timeout=5_000)
                # handover for the current shift, recorded and printable
                await page.click("#views button[data-view=handover]")
                await page.wait_for_selector("#ho-form", timeout=5_000)
                await page.fill("#ho-from", "王")
                await page.fill("#ho-to", "李")
                await page.click("#ho-form button[type=submit]")
                await page.wait_for_selector("#v-handover li:has-text('王 → 李')", timeout=5_000)
                await page.emulate_media(media="print")
                await page.pdf(path=str(ARTIFACTS / "handover-print.pdf"))
                assert not await page.is_visible("header")
                await page.emulate_media(media="screen")
                # wall screens: no wrapped badge, no filters, at 1920×1080 and 3840×2160
                for w, hgt in ((1920, 1080), (3840, 2160)):
                    await page.set_viewport_size({"width": w, "height": hgt})
                    await page.goto(f"{h.http_url}/?wall=1")
                    await page.wait_for_selector("tr.sev-yellow", timeout=10_000)
                    await _no_wrap(page, "tbody .badge")
                    await _no_wrap(page, ".counts span")
                    assert not await page.is_visible("#f-town")
                    assert "park" not in await page.inner_text("#title")
                    await page.screenshot(path=str(ARTIFACTS / f"board-wall-{w}x{hgt}.png"))
                # the acknowledgement page on a phone
                phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True,
                                               device_scale_factor=2, locale="zh-CN")
                sms = [json.loads(r["body"]) for r in stand_ins.sms.ok()]
                link = next(s["text"] for s in sms if "LT-1" in s["text"] or "储罐" in s["text"])
                url = link[link.index("http"):].split()[0]
                await phone.goto(h.http_url + urlsplit(url).path)
                await phone.wait_for_selector("button:has-text('确认收到并处置')")
                assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                await phone.screenshot(path=str(ARTIFACTS / "ack-page-phone.png"), full_page=True)
                # /docs with every request off this host blocked: assets come from the package
                outside: list[str] = []
                docs = await browser.new_page(viewport={"width": 1400, "height": 900})
                host = urlsplit(h.http_url).netloc

                async def block(route) -> None:  # type: ignore[no-untyped-def]
                    if urlsplit(route.request.url).netloc == host:
                        await route.continue_()
                    else:
                        outside.append(route.request.url)
                        await route.abort()

                await docs.route("**/*", block)
                await docs.goto(f"{h.http_url}/docs")
                await docs.wait_for_selector(".swagger-ui .info .title:has-text('hazardwatch')", timeout=15_000)
                await docs.wait_for_selector(".opblock-summary-path:has-text('/api/v1/alarms')", timeout=10_000)
                await docs.screenshot(path=str(ARTIFACTS / "docs-offline.png"))
                assert outside == [], outside
                await browser.close()
            pub.close()

    asyncio.run(go())


@contextlib.asynccontextmanager
async def _service(site: Site, db: str, mqtt_url: str, prefix: str, clock: FakeClock, port: int,
                   client_id: str) -> AsyncIterator[ServiceHandle]:
    """The whole service on a fixed port and broker session, so a board can lose it and find it again."""
    settings = load_settings(site, EnvSettings(
        database_url=db, mqtt_url=mqtt_url, mqtt_prefix=prefix, mqtt_client_id=client_id,
        http_addr=f"127.0.0.1:{port}", link_secret="test-link-secret-0123456789"))
    ready: asyncio.Future[ServiceHandle] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_service(settings, site, clock=clock, registry=CollectorRegistry(),
                                           on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        yield ready.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_board_marks_itself_stale_when_the_service_dies_and_resyncs_after_restart(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, stand_ins: StandIns) -> None:
    _need_chromium()
    db = make_database("postgres", "hwweb")
    site = _site(stand_ins)
    clock = FakeClock(T0)
    port, client_id = free_port(), f"svc-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1920, "height": 1080}, locale="zh-CN")
            async with _service(site, db, mqtt_url, topic_prefix, clock, port, client_id) as h:
                tok = (await token_for(h, "park"))["Authorization"][7:]
                pub = Publisher(mqtt_url)
                ms = int(T0.timestamp() * 1000)
                pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 30, "ts": ms}))
                pub.close()
                await page.goto(f"http://127.0.0.1:{port}/?token={tok}")
                await page.wait_for_selector("tr.sev-yellow", timeout=10_000)
                await page.wait_for_selector("#stale[hidden]", state="attached", timeout=10_000)
                assert await page.inner_text("#n-yellow b") == "1"
            # the service is gone: within 5 s the whole board says so
            await page.wait_for_selector("#stale:not([hidden])", timeout=5_000)
            assert await page.evaluate("document.body.classList.contains('stale')")
            assert await page.inner_text("#n-yellow b") == "—"
            assert "以下为" in await page.inner_text("#stale")
            await page.screenshot(path=str(ARTIFACTS / "board-stale.png"))
            # meanwhile another instance raised an alarm (no notification reaches this board)
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
                await conn.execute(
                    "INSERT INTO alarms (dedup_key, enterprise_code, rule, severity, state, raised_at, message)"
                    " VALUES ('e:E2:comm_loss', 'E2', 'comm_loss', 'orange', 'active_unacked', %s,"
                    " '二号化工 数据网关离线（通信中断）')", (clock.now(),))
            async with _service(site, db, mqtt_url, topic_prefix, clock, port, client_id):
                await page.wait_for_selector("#stale[hidden]", state="attached", timeout=15_000)
                await page.wait_for_selector("tr.sev-orange:has-text('二号化工')", timeout=5_000)
                assert await page.inner_text("#n-orange b") == "1"
                await page.screenshot(path=str(ARTIFACTS / "board-resynced.png"))
            await browser.close()

    asyncio.run(go())
