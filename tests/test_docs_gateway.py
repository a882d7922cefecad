"""A gateway written only from docs/: the guide's own examples, run verbatim, against the secured broker.

The broker is the one `hazardwatch deploy mosquitto` generates (TLS outside, one account per
enterprise); hazardwatch runs in-process with its own account on the internal listener. The
examples are the guide's code blocks marked `<!-- example: NAME -->`, executed as they are with
the environment variables the guide tells a vendor to set. They must get their readings stored
and the commissioning example must raise its alarm and send its SMS.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg

from park.clock import SystemClock
from park.sitefile import parse_site
from tests.alerting_helpers import VendorServer, sms_gateway
from tests.deploy_helpers import secured_broker
from tests.service_helpers import running_service

DOCS = Path(__file__).resolve().parents[1] / "docs"
GUIDES = [DOCS / "gateway-guide.zh.md", DOCS / "gateway-guide.en.md"]


def examples(path: Path) -> dict[str, tuple[str, str]]:
    """name → (language, code) of every `<!-- example: name -->` block of a guide."""
    text = path.read_text(encoding="utf-8")
    return {m.group(1): (m.group(2), m.group(3))
            for m in re.finditer(r"<!-- example: (\w+) -->\n```(\w+)\n(.*?)```", text, re.S)}


def site_text(sms_url: str) -> str:
    # the tags the guide's examples use
    return f"""\
site: {{name: 网关联调园区}}
channels:
  sms: {{provider: http, url: "{sms_url}/send"}}
districts:
  - code: D1
    name: 一区
    contacts: [{{name: 区值班, phone: "13800000001", channels: [sms]}}]
    towns:
      - code: T1
        name: 一镇
        contacts: [{{name: 园区值班室, phone: "13800000002", channels: [sms]}}]
        enterprises:
          - code: E001
            name: 一号化工
            contacts: [{{name: 张工, phone: "13800000003", channels: [sms]}}]
            hazard_sources: [{{code: HS01, name: 苯罐区, grade: 2}}]
            sensors:
              - {{tag: LT-1001, kind: tank_level, hazard_source: HS01, limits: {{hh: 9.5, h: 9.0, l: 1.0, ll: 0.5}}}}
              - {{tag: AT-2001, kind: gas_toxic, gas: H2S, unit: mg/m3}}
              - {{tag: PT-3001, kind: pressure, unit: MPa, limits: {{hh: 1.6, h: 1.4}}}}
"""


def test_both_guides_carry_the_same_examples() -> None:
    zh, en = examples(GUIDES[0]), examples(GUIDES[1])
    assert set(zh) == {"env", "status", "batch", "point", "python", "alarm", "normal"}
    assert zh == en


async def _run(lang: str, code: str, env: dict[str, str], cwd: Path) -> str:
    if lang == "python":
        (cwd / "gateway.py").write_text(code, encoding="utf-8")
        argv = [sys.executable, str(cwd / "gateway.py")]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", code]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"the guide's {lang} example failed:\n{code}\n---\n{out.decode()}"
    return out.decode()


async def _until(cond: Callable[[], object], what: str, within: float = 30.0) -> None:
    for _ in range(int(within / 0.1)):
        if await asyncio.to_thread(cond):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {within:.0f} s ({await asyncio.to_thread(cond)!r})")


def test_a_gateway_following_the_guide_gets_readings_stored_and_its_alarm_raised(
        tmp_path: Path, make_database: Callable[..., str]) -> None:
    db = make_database("timescaledb", "hwdocs")
    sms = VendorServer(sms_gateway)
    text = site_text(sms.url)
    site = parse_site(text, environ={})
    ex = examples(GUIDES[0])
    try:
        with secured_broker(tmp_path / "broker", text) as broker:
            service_url = (broker.out / "hazardwatch.env").read_text().strip().split("=", 1)[1]
            # what section 1 of the guide tells a vendor to set (its env block, with this park's values)
            env = {k: v for k, v in os.environ.items() if not k.startswith("HW_")} | {
                "HW_HOST": "localhost", "HW_PORT": str(broker.external), "HW_CA": broker.ca,
                "HW_ENT": "E001", "HW_PASS": broker.passwords["E001"]}
            assert set(re.findall(r"export (\w+)=", ex["env"][1])) == {k for k in env if k.startswith("HW_")}

            def rows(tag: str) -> int:
                with psycopg.connect(db) as conn:
                    r = conn.execute("SELECT count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id"
                                     " WHERE s.enterprise_code = 'E001' AND s.tag = %s", (tag,)).fetchone()
                    return int(r[0]) if r else 0

            def alarms() -> list[tuple[str, str]]:
                with psycopg.connect(db) as conn:
                    return [(str(a), str(b)) for a, b in conn.execute(
                        "SELECT s.tag, a.severity FROM alarms a JOIN sensors s ON s.id = a.sensor_id"
                        " WHERE a.enterprise_code = 'E001'").fetchall()]

            def sms_for(tag: str) -> list[str]:
                return [json.loads(r["body"])["phone"] for r in sms.ok() if tag in json.loads(r["body"])["text"]]

            async def go() -> None:
                # the wall clock: the guide stamps readings with the real time (date +%s%3N, time.time())
                async with running_service(site, db, service_url, "hw/v1", SystemClock()):  # type: ignore[arg-type]
                    await _run(*ex["status"], env, tmp_path)
                    await _run(*ex["batch"], env, tmp_path)
                    await _until(lambda: rows("LT-1001") >= 1 and rows("AT-2001") >= 1, "the batch stored")
                    await _run(*ex["point"], env, tmp_path)
                    await _until(lambda: rows("LT-1001") >= 2, "the single point stored")
                    out = await _run(*ex["python"], env, tmp_path)
                    assert "sent 3 batches" in out
                    await _until(lambda: rows("LT-1001") >= 5 and rows("AT-2001") >= 4, "the Python gateway's batches")
                    assert alarms() == [], "normal readings raised an alarm"
                    await _run(*ex["alarm"], env, tmp_path)
                    await _until(lambda: ("AT-2001", "red") in alarms(), "the commissioning alarm raised")
                    await _until(lambda: sorted(sms_for("AT-2001")) == ["13800000002", "13800000003"],
                                 "the red alarm's SMS to the enterprise and the town")
                    await _run(*ex["normal"], env, tmp_path)
                    await _until(lambda: rows("AT-2001") >= 6, "the normal value stored")

            try:
                asyncio.run(go())
            except AssertionError:
                print("SMS requests:", [(r["status"], r["body"][:300]) for r in sms.requests])
                raise
    finally:
        sms.close()
