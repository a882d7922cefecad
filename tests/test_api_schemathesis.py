"""schemathesis against the published OpenAPI spec of the running service: no input makes a server error."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from park.clock import FakeClock
from park.sitefile import parse_site
from tests.alerting_helpers import VendorServer, sms_gateway, wecom_robot
from tests.ingest_helpers import Publisher
from tests.service_helpers import running_service, token_for
from tests.test_service_e2e import site_text, until

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def test_no_server_error_for_any_generated_request(make_database, mqtt_url: str, topic_prefix: str,
                                                    tmp_path: Path) -> None:
    db = make_database("postgres", "hwd")
    sms, robot = VendorServer(sms_gateway), VendorServer(wecom_robot)
    site = parse_site(site_text(sms.url, robot.url), environ={})
    # schemathesis lives in its own environment (tests/run.sh makes .venv-st): grafana-client's niquests
    # installs urllib3-future, which breaks the requests library schemathesis is built on
    st = Path(__file__).resolve().parent.parent / ".venv-st" / "bin" / "schemathesis"
    assert st.exists(), "run `bash tests/run.sh`, which installs schemathesis into .venv-st"

    async def go() -> subprocess.CompletedProcess[str]:
        async with running_service(site, db, mqtt_url, topic_prefix, FakeClock(T0)) as (h, _client):
            pub = Publisher(mqtt_url)
            pub.publish(f"{topic_prefix}/E1/point/AT-1", json.dumps({"value": 60, "ts": int(T0.timestamp() * 1000)}))
            await until(lambda: bool(h.rules.engine.alarms))
            pub.close()
            hdr = (await token_for(h, "park"))["Authorization"]
            return await asyncio.to_thread(
                subprocess.run,
                [str(st), "run", f"{h.http_url}/openapi.json", "--checks", "not_a_server_error",
                 "-H", f"Authorization: {hdr}", "--max-examples", "25", "--seed", "1",
                 "--request-timeout", "10", "--generation-database", "none"],
                capture_output=True, text=True, timeout=600, cwd=tmp_path)

    try:
        res = asyncio.run(go())
    finally:
        sms.close()
        robot.close()
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "Server error" not in res.stdout
