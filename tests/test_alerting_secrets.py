"""Secrets never leave: the whole service, run with known secret values and driven through sends,
failures and errors, prints none of them — not in a log line, an error, a metric or an API answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from tests.alerting_helpers import VendorServer, sms_gateway, sms_id, wecom_robot
from tests.ingest_helpers import Publisher
from tests.service_helpers import ServiceProcess, service_env, wait_for

ROBOT_KEY = "robotkey-S3cret-7f3a91"
CORP_SECRET = "corpsecret-S3cret-a8b2c4"
ACCESS_TOKEN = "accesstoken-S3cret-d9e8f7"
SMS_TOKEN = "smstoken-S3cret-5566aa"
DB_PASSWORD = "dbpass-S3cret-9#/x"  # characters that must be quoted in a URL
MQTT_PASSWORD = "mqttpass-S3cret-42"
LINK_SECRET = "linksecret-S3cret-0123456789abcdef"
SECRETS = [ROBOT_KEY, CORP_SECRET, ACCESS_TOKEN, SMS_TOKEN, DB_PASSWORD, quote(DB_PASSWORD, safe=""), MQTT_PASSWORD,
           LINK_SECRET]

SITE = """\
site: {{name: 保密测试园区}}
channels:
  sms: {{provider: http, url: "{sms}/send", token: "${{SMS_TOKEN}}"}}
  wecom: {{base_url: "{wecom}", corp_id: "ww-corp", agent_id: 1000002, secret: "${{WECOM_SECRET}}"}}
escalation:
  red:    {{immediate: [enterprise, town]}}
  orange: {{immediate: [enterprise, town]}}
  yellow: {{immediate: [enterprise]}}
  blue:   {{immediate: [enterprise]}}
districts:
  - code: D1
    name: 一区
    towns:
      - code: T1
        name: 一镇
        contacts: [{{name: 镇值班, wecom_user: "zhen", channels: [wecom]}}]
        enterprises:
          - code: E1
            name: 一号化工
            contacts: [{{name: 张工, phone: "13800000003", channels: [sms]}}]
            wecom_robot: {{key: "${{ROBOT_KEY}}"}}
            sensors:
              - {{tag: AT-1, kind: gas_combustible}}
              - {{tag: AT-2, kind: gas_combustible}}
"""


SEEN: dict[str, int] = {}


def wecom(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
          fault: str | None) -> tuple[int, Any, dict[str, str]]:
    """Robot and application endpoints, each failing in its own way along the test."""
    n = SEEN[path] = SEEN.get(path, 0) + 1
    if path == "/cgi-bin/gettoken":
        if n == 1:
            return 500, {"errmsg": "busy"}, {}
        if query.get("corpsecret") != CORP_SECRET:
            return 200, {"errcode": 40001, "errmsg": "invalid credential"}, {}
        return 200, {"errcode": 0, "access_token": ACCESS_TOKEN, "expires_in": 7200}, {}
    if path == "/cgi-bin/message/send":
        if n == 1:  # WeCom echoes the token back in some answers
            return 200, {"errcode": 42001, "errmsg": f"access_token expired, hint: [{query.get('access_token')}]"}, {}
        return 200, {"errcode": 0, "msgid": "m1"}, {}
    if n == 1:
        return 200, {"errcode": 45009, "errmsg": "api freq out of limit"}, {}
    if n == 2:
        return 200, {"errcode": 93000, "errmsg": f"invalid webhook url, key {query.get('key')}"}, {}
    return wecom_robot(method, path, query, headers, body, fault)


def with_password(url: str, user: str, password: str) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, f"{user}:{quote(password, safe='')}@{u.hostname}:{u.port}", u.path, u.query,
                       u.fragment))


@pytest.mark.slow
def test_no_secret_in_anything_the_service_prints_stores_as_text_or_answers(  # type: ignore[no-untyped-def]
        make_database, mqtt_url: str, topic_prefix: str, tmp_path: Path) -> None:
    sms, wc = VendorServer(sms_gateway, dedupe=sms_id), VendorServer(wecom)
    db = make_database("postgres", "hwsec")  # trust authentication: the password is carried, never checked
    config = tmp_path / "site.yaml"
    config.write_text(SITE.format(sms=sms.url, wecom=wc.url), encoding="utf-8")
    env = service_env(with_password(db, "postgres", DB_PASSWORD), with_password(mqtt_url, "hw", MQTT_PASSWORD),
                      topic_prefix, tmp_path / "data", SMS_TOKEN=SMS_TOKEN, WECOM_SECRET=CORP_SECRET,
                      ROBOT_KEY=ROBOT_KEY, HAZARDWATCH_LINK_SECRET=LINK_SECRET)
    # failures and errors of every kind on the way: 503 and a refusal from the SMS gateway, a rate limit and an
    # invalid key from the robot, an expired token and a 500 from the WeCom application
    sms.faults += ["503", "500"]
    SEEN.clear()
    svc = ServiceProcess(config, env, tmp_path / "service.log")
    pub = Publisher(mqtt_url)
    answers: list[str] = []
    try:
        ms = int(datetime.now(UTC).timestamp() * 1000)
        pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms, "points": [{"tag": "AT-1", "value": 60}]}))
        wait_for(lambda: any(r["path"] == "/cgi-bin/message/send" for r in wc.ok()), within=60, what="WeCom app")
        wait_for(lambda: len(sms.ok()) >= 1, within=60, what="the SMS after its retries")
        # the second alarm's robot message: the key refused for good (a permanent error, logged)
        pub.publish(f"{topic_prefix}/E1/data", json.dumps({"ts": ms + 1000, "points": [{"tag": "AT-2", "value": 60}]}))
        wait_for(lambda: all(x in svc.text() for x in ("93000", "45009", "HTTP 503", "HTTP 500")), within=90,
                 what="every failure logged")
        http = env["HAZARDWATCH_HTTP_ADDR"]
        for path in ("/metrics", "/readyz", "/healthz", "/openapi.json", "/api/v1/alarms", "/ack/garbage"):
            answers.append(httpx.get(f"http://{http}{path}", timeout=10).text)
        assert any(r["query"].get("key") == ROBOT_KEY for r in wc.requests), "the robot key was really used"
        assert any(r["headers"].get("authorization") == f"Bearer {SMS_TOKEN}" for r in sms.requests)
    finally:
        pub.close()
        svc.stop()
        sms.close()
        wc.close()
    printed = svc.text()
    assert "HTTP 503" in printed and "45009" in printed and "93000" in printed, "the failures were logged"
    with psycopg.connect(db, autocommit=True) as conn:
        stored = [str(r) for r in conn.execute("SELECT detail, idempotency_key FROM notifications").fetchall()]
        stored += [str(r) for r in conn.execute("SELECT payload FROM outbox").fetchall()]
    assert stored
    for s in SECRETS:
        assert s not in printed, f"a secret ({s[:8]}…) in the service's output"
        for a in answers:
            assert s not in a, f"a secret ({s[:8]}…) in an API answer"
        for row in stored:
            assert s not in row, f"a secret ({s[:8]}…) stored in notifications or the outbox"
