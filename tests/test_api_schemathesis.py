"""schemathesis against the published OpenAPI spec of the running service: no input makes a server error."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from park.clock import FakeClock
from tests.ingest_helpers import Publisher
from tests.service_helpers import StandIns, running_service, token_for
from tests.test_service_e2e import until

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def test_no_server_error_for_any_generated_request(make_database, mqtt_url: str,  # type: ignore[no-untyped-def]
                                                    topic_prefix: str, tmp_path: Path, stand_ins: StandIns) -> None:
    db = make_database("postgres", "hwd")
    site = stand_ins.site
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

    res = asyncio.run(go())
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "Server error" not in res.stdout
