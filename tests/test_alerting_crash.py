"""kill -9 of the whole service in mid-escalation, then restart: each expected message arrives exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.alerting_helpers import VendorServer, sms_gateway, sms_id
from tests.ingest_helpers import Publisher
from tests.service_helpers import free_port

SITE = """\
site: {{name: 崩溃测试园区}}
channels: {{sms: {{provider: http, url: "{sms}/send"}}}}
escalation:
  red:    {{immediate: [enterprise], then: [{{level: town, after: 4s}}, {{level: district, after: 8s}}]}}
  orange: {{immediate: [enterprise], then: [{{level: town, after: 4s}}, {{level: district, after: 8s}}]}}
  yellow: {{immediate: [enterprise]}}
  blue:   {{immediate: [enterprise]}}
districts:
  - code: D1
    name: 一区
    contacts: [{{name: 区值班, phone: "13800000001", channels: [sms]}}]
    towns:
      - code: T1
        name: 一镇
        contacts: [{{name: 镇值班, phone: "13800000002", channels: [sms]}}]
        enterprises:
          - code: E1
            name: 一号化工
            contacts: [{{name: 张工, phone: "13800000003", channels: [sms]}},
                       {{name: 李工, phone: "13800000004", channels: [sms]}}]
            sensors:
              - {{tag: AT-1, kind: gas_combustible}}
"""


def start(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("hazardwatch")), "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "hazardwatch running" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    raise AssertionError("the service did not start")


def wait_for(cond, within: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("not in time")


@pytest.mark.slow
def test_kill_9_mid_escalation_each_message_exactly_once(make_database, mqtt_url: str, topic_prefix: str,
                                                         tmp_path: Path) -> None:
    sms = VendorServer(sms_gateway, dedupe=sms_id)
    db = make_database("timescaledb", "hwa")
    config = tmp_path / "site.yaml"
    config.write_text(SITE.format(sms=sms.url), encoding="utf-8")
    env = dict(os.environ, HAZARDWATCH_DATABASE_URL=db, HAZARDWATCH_MQTT_URL=mqtt_url,
               HAZARDWATCH_DATA_DIR=str(tmp_path),
               HAZARDWATCH_MQTT_PREFIX=topic_prefix, HAZARDWATCH_HTTP_ADDR=f"127.0.0.1:{free_port()}",
               HAZARDWATCH_MQTT_CLIENT_ID=f"crash-{topic_prefix[:9]}", PYTHONUNBUFFERED="1")
    procs = [start(config, env)]
    pub = Publisher(mqtt_url)
    try:
        pub.publish(f"{topic_prefix}/E1/data", json.dumps(
            {"ts": int(datetime.now(UTC).timestamp() * 1000), "points": [{"tag": "AT-1", "value": 60}]}))
        wait_for(lambda: len(sms.ok()) >= 1)
        procs[0].send_signal(signal.SIGKILL)  # mid-escalation: the town and district are still to come
        procs[0].wait(10)
        # what the gateway had received when the process died: only these may come again (same id)
        in_flight_at_kill = {json.loads(r["body"])["id"] for r in sms.requests}
        time.sleep(1)
        procs.append(start(config, env))
        wait_for(lambda: {json.loads(r["body"])["phone"] for r in sms.ok()} >= {"13800000001", "13800000002"},
                 within=40)
        time.sleep(2)  # anything that would come twice would come now
    finally:
        pub.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
            if p.stdout is not None:
                p.stdout.close()
        sms.close()
    # delivered, as the contract's gateway delivers: a repeat of an id already delivered is dropped by it
    bodies = [json.loads(r["body"]) for r in sms.ok()]
    per_phone: dict[str, int] = {}
    for b in bodies:
        if "AT-1" in b["text"]:
            per_phone[b["phone"]] = per_phone.get(b["phone"], 0) + 1
    assert per_phone == {"13800000003": 1, "13800000004": 1, "13800000002": 1, "13800000001": 1}, per_phone
    # a kill -9 between the gateway's answer and the commit of "sent" is the one window a message is sent
    # again — always with the same idempotency key, and only a message already received before the kill
    repeated = {json.loads(r["body"])["id"] for r in sms.duplicates()}
    assert repeated <= in_flight_at_kill, f"sent twice though not in flight at the kill: {repeated - in_flight_at_kill}"
